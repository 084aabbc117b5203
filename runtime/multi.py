"""Many streams on one model: their windows batched into one backend call.

The model's T axis is the frame axis, and the encoder, decoder and the ``"frame"`` query rule treat every frame on
its own (the shipped export gives bit-identical masks for a frame run alone or stacked with others; checked in
``tests/test_multi_stream.py``). So windows of several streams are **stacked on T**: one call of T = sum of the
windows' T, split back per stream afterwards. A call never exceeds the model's ``t_max`` (the sidecar's T range,
5 for the shipped export); more pending frames than that go into the next call. Re-export with
``autr export onnx --frames N`` (up to the preset's ``max_frames``) for a wider T range. A model whose query rule
is ``"clip"`` picks one query per call from all its frames, and TPAVI's temporal block mixes the frames of a call;
either would mix streams: their windows are never stacked (one call per window), only the backend instances are
shared.

Pieces:

* :class:`BatchingBackend` -- the dynamic batcher: requests wait in one queue; each *instance* (a backend of its
  own, like an instance of a Triton instance group) takes what is pending, up to ``max_frames``, waits at most
  ``max_delay`` seconds for more when the call is not full, runs it, and hands each request its slice.
* :class:`BatchedClient` -- a :class:`~autr.runtime.backends.Backend` whose ``infer`` goes through the batcher:
  give one to each stream's :class:`~autr.runtime.pipeline.StreamRunner`, and every stream keeps its own queues,
  sinks and report.
* :class:`MultiStreamRunner` -- runs several sources that way, one ``StreamRunner`` per source, and reports per
  stream plus the batcher's figures.
"""
from __future__ import annotations

import collections
import json
import signal
import threading
from pathlib import Path

import numpy as np

from .backends.base import Backend, check_inputs
from .backends.sidecar import frames_may_share_a_call
from .errors import BackendError, StreamError, one_line
from .stats import StageStats, now
from .threads import limit_blas, limit_opencv, plan_threads

__all__ = ["BatchingBackend", "BatchedClient", "MultiStreamRunner", "frames_independent"]


def _config(backend) -> dict | None:
    """The model config behind a backend: the torch backend's model, else its sidecar's (None: unknown)."""
    cfg = getattr(getattr(backend, "model", None), "cfg", None)
    if cfg is not None:
        return cfg.to_dict()
    side = getattr(backend, "sidecar", None)
    if side is None:
        return None
    try:
        return json.loads(Path(side).read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError):
        return None


def frames_independent(backend) -> bool:
    """Whether a backend's frames may be stacked across streams (`sidecar.frames_may_share_a_call` of its model's
    config; a query rule the backend states itself overrides the config's). False where nothing says so."""
    rule = getattr(backend, "query_select", None)
    if rule is None and getattr(backend, "name", None) == "fake":
        return True  # the model-free backend: every frame on its own
    cfg = _config(backend)
    if cfg is None:
        return rule == "frame"
    return frames_may_share_a_call({**cfg, "query_select": rule} if rule is not None else cfg)


class _Request:
    __slots__ = ("frames", "log_mel", "t", "done", "result", "error", "t_submit", "t_start", "batch_frames")

    def __init__(self, frames, log_mel):
        self.frames, self.log_mel, self.t = frames, log_mel, int(frames.shape[0])
        self.done = threading.Event()
        self.result = self.error = None
        self.t_submit = now()
        self.t_start = None
        self.batch_frames = 0


class BatchingBackend:
    """A dynamic batcher over one or more backend instances of the same model.

    Args:
        instances: backends of one model (same input size and T range); each runs one call at a time in a thread
            of its own.
        max_frames: frames per call (default: the model's ``t_max``; None there: 8).
        max_delay: how long a call that is not full waits for more requests (s).
        stack: stack several requests into one call (default: :func:`frames_independent`).
    """

    def __init__(self, instances, max_frames: int | None = None, max_delay: float = 0.002, stack: bool | None = None):
        instances = list(instances)
        if not instances:
            raise BackendError("the batcher needs at least one backend instance")
        first = instances[0]
        for b in instances[1:]:
            if b.input_size != first.input_size or (b.t_min, b.t_max) != (first.t_min, first.t_max):
                raise BackendError("the batcher's instances must run the same model (input size and T range)")
        self.instances = instances
        self.input_size, self.t_min, self.t_max = first.input_size, first.t_min, first.t_max
        limit = first.t_max if first.t_max is not None else 8
        self.max_frames = int(max_frames or limit)
        if self.max_frames < 1 or self.max_frames > limit:
            raise BackendError(f"max_frames must be in 1..{limit} (the model's T range); got {max_frames}")
        if max_delay < 0:
            raise BackendError(f"max_delay must be >= 0; got {max_delay}")
        self.max_delay = float(max_delay)
        self.stack = frames_independent(first) if stack is None else bool(stack)
        self._pending: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.calls = 0
        self.requests = 0
        self.frames = 0
        self.frames_per_call = collections.Counter()
        self.call_ms = StageStats()
        self.batch_wait_ms = StageStats()
        self._workers = [threading.Thread(target=self._work, args=(b,), name=f"autr-batch-{i}", daemon=True)
                         for i, b in enumerate(instances)]
        for w in self._workers:
            w.start()

    # -------------------------------------------------------------------------------- submitting
    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        """Run one request through the batcher and wait for its slice (a BackendError of its call is raised)."""
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        if frames.shape[0] > self.max_frames:
            raise BackendError(f"a window of T = {frames.shape[0]} is longer than the batcher's {self.max_frames} "
                               "frames per call")
        req = _Request(frames, log_mel)
        with self._cv:
            if self._closed:
                raise BackendError("the batcher is closed")
            self._pending.append(req)
            self._cv.notify()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def client(self, name: str = "stream") -> "BatchedClient":
        return BatchedClient(self, name)

    # -------------------------------------------------------------------------------- the workers
    def _take(self):
        """The next call's requests (blocks; None when closed and empty)."""
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if not self._pending:
                return None
            batch = [self._pending.popleft()]
            total = batch[0].t
            deadline = now() + self.max_delay
            while self.stack and total < self.max_frames:
                if self._pending:
                    if total + self._pending[0].t > self.max_frames:
                        break
                    req = self._pending.popleft()
                    batch.append(req)
                    total += req.t
                    continue
                left = deadline - now()
                if left <= 0 or self._closed:
                    break
                self._cv.wait(left)
            return batch

    def _work(self, backend) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            t0 = now()
            for r in batch:
                r.t_start = t0
            try:
                if len(batch) == 1:
                    masks, scores = backend.infer(batch[0].frames, batch[0].log_mel)
                else:
                    masks, scores = backend.infer(np.concatenate([r.frames for r in batch]),
                                                  np.concatenate([r.log_mel for r in batch]))
                err = None
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of this call
                err = exc if isinstance(exc, BackendError) else BackendError(f"{type(exc).__name__}: {one_line(exc)}")
            t1 = now()
            total = sum(r.t for r in batch)
            with self._cv:
                self.calls += 1
                self.requests += len(batch)
                self.frames += total
                self.frames_per_call[total] += 1
                self.call_ms.add(t1 - t0)
                for r in batch:
                    self.batch_wait_ms.add(t0 - r.t_submit)
            start = 0
            for r in batch:
                r.batch_frames = total
                if err is None:
                    r.result = (masks[start:start + r.t], scores[start:start + r.t])
                else:
                    r.error = err
                start += r.t
                r.done.set()

    # -------------------------------------------------------------------------------- report
    def describe(self) -> dict:
        with self._cv:
            return {"instances": len(self.instances), "max_frames": self.max_frames,
                    "max_delay_ms": round(self.max_delay * 1000.0, 3), "stacking": self.stack,
                    "calls": self.calls, "requests": self.requests, "frames": self.frames,
                    "mean_frames_per_call": None if not self.calls else round(self.frames / self.calls, 3),
                    "frames_per_call": {str(k): v for k, v in sorted(self.frames_per_call.items())},
                    "call_ms": self.call_ms.summary_ms(), "wait_before_call_ms": self.batch_wait_ms.summary_ms(),
                    "backend": self.instances[0].describe()}

    def versions(self) -> dict:
        return self.instances[0].versions()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for w in self._workers:
            w.join(10.0)
        for b in self.instances:
            b.close()


class BatchedClient(Backend):
    """One stream's view of a :class:`BatchingBackend` (a Backend a StreamRunner can drive)."""

    def __init__(self, batcher: BatchingBackend, name: str = "stream"):
        super().__init__(batcher.input_size, batcher.t_min, min(batcher.max_frames, batcher.t_max or batcher.max_frames),
                         device=batcher.instances[0].device)
        self.batcher = batcher
        self.name = f"batched {batcher.instances[0].name}"
        self.stream = name
        self.artifact = batcher.instances[0].artifact
        self.threads = getattr(batcher.instances[0], "threads", None)

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        return self.batcher.infer(frames, log_mel)

    def describe(self) -> dict:
        d = self.batcher.instances[0].describe()
        d.update({"name": self.name, "stream": self.stream, "batching": self.batcher.describe()})
        d["batching"].pop("backend", None)
        return d

    def versions(self) -> dict:
        return self.batcher.versions()


class MultiStreamRunner:
    """Several sources through one model: a :class:`~autr.runtime.pipeline.StreamRunner` per source (its own
    queues, sinks and report), all of them calling one :class:`BatchingBackend`.

    Args:
        sources: the streams' sources.
        batcher: the shared :class:`BatchingBackend`.
        sinks: one list of sinks per source (or None: no sinks).
        options: passed to every StreamRunner (window, queue_size, duration, threshold, ...).
    """

    def __init__(self, sources, batcher: BatchingBackend, sinks=None, plan=None, **options):
        from .pipeline import StreamRunner

        sources = list(sources)
        if not sources:
            raise StreamError("no input streams")
        sinks = list(sinks) if sinks is not None else [[] for _ in sources]
        if len(sinks) != len(sources):
            raise StreamError(f"{len(sources)} sources but {len(sinks)} sink lists")
        self.batcher = batcher
        self.plan = plan if plan is not None else plan_threads(pipeline=True)
        self.runners = [StreamRunner(src, batcher.client(f"stream {i}"), sinks=sk, plan=self.plan, **options)
                        for i, (src, sk) in enumerate(zip(sources, sinks))]
        self.reports: list = [None] * len(self.runners)
        self._t0 = self._t1 = None

    def stop(self, reason: str = "stopped") -> None:
        for r in self.runners:
            r.stop(reason)

    def _one(self, i: int) -> None:
        try:
            self.reports[i] = self.runners[i]._run()  # noqa: SLF001 - the thread limits are held by run() below
        except BaseException as exc:  # noqa: BLE001
            self.runners[i]._fail(exc)  # noqa: SLF001
            self.reports[i] = self.runners[i].report()

    def run(self) -> dict:
        """Run every stream until each ends (Ctrl-C / SIGTERM stop them all); return the combined report."""
        stopped_by = {}
        previous = {}

        def on_signal(signum, frame):
            stopped_by["signal"] = signal.Signals(signum).name
            self.stop("interrupt")

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    previous[sig] = signal.signal(sig, on_signal)
                except (ValueError, OSError):
                    pass
        try:
            with limit_opencv(self.plan.opencv), limit_blas(self.plan.blas) as limited:
                threads = [threading.Thread(target=self._one, args=(i,), name=f"autr-stream-{i}", daemon=True)
                           for i in range(len(self.runners))]
                self._t0 = now()
                for th in threads:
                    th.start()
                for th in threads:
                    while th.is_alive():
                        th.join(0.1)
                self._t1 = now()
        finally:
            for sig, handler in previous.items():
                try:
                    signal.signal(sig, handler)
                except (ValueError, TypeError, OSError):
                    pass
        for rep in self.reports:
            rep["threads"]["blas_limited"] = limited
            if "signal" in stopped_by:
                rep["stopped_by"] = "terminated" if stopped_by["signal"] == "SIGTERM" else "interrupt"
                rep["signal"] = stopped_by["signal"]
        return self.report()

    def report(self) -> dict:
        wall = None if self._t0 is None else (self._t1 or now()) - self._t0
        out = sum(r["frames"]["output"] for r in self.reports if r)
        dropped = sum(r["frames"]["dropped"]["total"] for r in self.reports if r)
        errors = [f"stream {i}: {r['error']}" for i, r in enumerate(self.reports) if r and r.get("error")]
        return {"autr_runtime_multi": 1, "streams": len(self.runners), "wall_seconds": None if wall is None else
                round(wall, 3), "windows_output": out, "windows_per_s": None if not wall else round(out / wall, 3),
                "dropped": dropped, "errors": errors, "batching": self.batcher.describe(),
                "per_stream": self.reports}
