"""The streaming pipeline: source -> window assembler + preprocess -> backend -> postprocess / render -> sinks.

Threads and queues::

    capture thread(s) --[source queue]--> assembler --[inference queue]--> backend --[output queue]--> caller's
    (source)                               (thread)                          (thread)                     thread

* The **assembler** takes the newest frame, waits (at most ``audio_wait`` s, live sources only) until the
  audio up to the frame's time stamp has arrived, reads the 15600 samples ending there from the ring
  buffer, and preprocesses both with :mod:`autr.preprocess` (``preprocess_frame``, ``log_mel_window``). With
  ``window=T > 1`` the last T assembled frames go to the model together and the newest one's mask is shown.
* Every queue is bounded; for live sources each drops its oldest item when full, so a slow model costs
  frames, not latency. For files read as fast as possible they block instead, so no frame is lost.
* Every stage stamps the monotonic clock; :meth:`StreamRunner.report` turns the stamps into per-stage
  p50 / p90 / p99 / max, end to end from capture to the sinks, FPS, drops and audio faults.
"""
from __future__ import annotations

import collections
import datetime
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from autr.preprocess import LIVE_WINDOW_SAMPLES, LogMelStream, log_mel_window, preprocess_frame
from .errors import StreamError, one_line
from .frames import Packet
from .queues import BoundedQueue, Closed
from .render import mask_from_logits, render_overlay, sounding_probability
from .stats import LatencyRecorder, environment, now
from .threads import ThreadPlan, limit_blas, limit_opencv, plan_threads

__all__ = ["StreamRunner", "write_report"]


class StreamRunner:
    """Run a source through a backend into sinks.

    Args:
        source: a started or unstarted :class:`~autr.runtime.sources.Source`.
        backend: a :class:`~autr.runtime.backends.Backend`.
        sinks: objects with ``write(packet)`` / ``close()``.
        window: T, frames per model call (the newest T assembled frames; 1 by default).
        queue_size: capacity of the inference and output queues.
        duration: stop after this many seconds of stream time (None: until the input ends).
        audio_wait: how long the assembler waits for late audio of a live source (s).
        threshold: mask logit threshold.
        sounding_threshold: sounding probability (sigmoid of the model's score) below which a frame is in the
            "nothing sounding" state: the HUD says so, the overlay paints no mask, and the report counts it
            (the mask PNGs keep the model's thresholded mask; masks.csv records the state).
        render: build the overlay picture when a sink shows it (window, mp4); False never draws it.
        frame_timeout: a source that delivers no frame for this long has stalled: stop with an error.
        first_frame_timeout: the same for the first frame (network streams probe before the first frame).
        warmup: run the backend once before the source starts, so the report shows steady-state latency.
        on_packet: optional callback ``f(packet)`` after the sinks (tests, benchmarks).
        isolated_runs: before the source starts, time this many backend calls with nothing else running, so
            the report compares in-pipeline inference with the same model timed alone (0: skip); and after the
            run as many again, alone but paced at the run's own call interval (``inference_isolated_paced_ms``):
            a call after an idle gap is slower than a back-to-back one (caches and cores go cold), so the paced
            ratio is what the pipeline's threads cost and the back-to-back one adds the cadence.
        plan: the :class:`~autr.runtime.threads.ThreadPlan` in force (None: the default plan for this source);
            numpy's BLAS and OpenCV are limited to ``plan.blas`` / ``plan.opencv`` threads while the runner
            runs, and the plan is reported.
    """

    def __init__(self, source, backend, sinks=(), window: int = 1, queue_size: int = 1, duration: float | None = None,
                 audio_wait: float = 0.1, threshold: float = 0.0, render: bool = True, frame_timeout: float = 10.0,
                 first_frame_timeout: float = 30.0, warmup: bool = True, on_packet=None, hud: bool = True,
                 isolated_runs: int = 0, plan: ThreadPlan | None = None, sounding_threshold: float = 0.5):
        if window < 1:
            raise StreamError(f"--window must be >= 1; got {window}")
        if not backend.supports(window):
            raise StreamError(f"the model takes {backend.t_min}..{backend.t_max} frames per call; --window {window} "
                              "is outside that range")
        self.source = source
        self.backend = backend
        self.sinks = list(sinks)
        self.window = int(window)
        policy = "drop_oldest" if source.live else "block"
        self.q_infer = BoundedQueue(queue_size, policy, name="inference")
        self.q_out = BoundedQueue(queue_size, policy, name="output")
        self.duration = duration
        self.audio_wait = float(audio_wait)
        self.threshold = float(threshold)
        if not 0.0 <= float(sounding_threshold) <= 1.0:
            raise StreamError(f"--sounding-threshold is a probability in [0, 1]; got {sounding_threshold}")
        self.sounding_threshold = float(sounding_threshold)
        # the overlay is drawn only for sinks that show it (window, mp4); masks / report need none
        self.render = bool(render) and any(getattr(s, "needs_render", True) for s in self.sinks)
        self.hud = bool(hud)
        self.frame_timeout = float(frame_timeout)
        self.first_frame_timeout = float(first_frame_timeout)
        self.warmup = bool(warmup)
        self.isolated_runs = max(0, int(isolated_runs))
        self.isolated_ms: list = []
        self.isolated_paced_ms: list = []
        self._infer_starts = None  # (first, last, count) of the recorded inference start times
        self._before_start = (0, 0)  # (frames captured, dropped by the source queue) before the pipeline ran
        self.on_packet = on_packet
        self.plan = plan if plan is not None else plan_threads(pipeline=True)
        self._blas_limited: list = []
        self.latency = LatencyRecorder()
        self._stop = threading.Event()
        self._error: StreamError | None = None
        self._stopped_by: str | None = None
        self._threads: list = []
        self._silence_mel = None
        self._log_mel = LogMelStream()  # the assembler's: reuses the STFT frames consecutive windows share
        # counters
        self.frames_in = 0
        self.frames_out = 0
        self.audio_late = 0
        self.audio_missing = 0
        self.skipped_after_duration = 0
        self.discarded_at_stop = 0
        self.gt_frames = 0
        self.gt_iou_sum = 0.0
        self.frames_sounding = 0
        self.frames_nothing_sounding = 0
        self.frames_sounding_empty_mask = 0
        self.probability_sum = 0.0
        self.area_sum = 0.0
        self._stop_signal = None
        self._first_t = None
        self._last_t = None
        self._t_start = None
        self._t_first_out = None
        self._t_last_out = None
        self._t_end = None
        self.warmup_ms = None
        self._recent_out = collections.deque(maxlen=64)
        self._recent_e2e = collections.deque(maxlen=128)
        self.started_at = None

    # ------------------------------------------------------------------------------------ control
    def stop(self, reason: str = "stopped") -> None:
        """Ask every stage to stop (thread-safe, idempotent); the first reason given is reported."""
        if self._stopped_by is None:
            self._stopped_by = reason
        self._stop.set()
        self.source.frames.close()
        self.q_infer.close()
        self.q_out.close()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc if isinstance(exc, StreamError) else \
                StreamError(f"{type(exc).__name__}: {one_line(exc)}")
        self.stop("error")

    @property
    def error(self) -> StreamError | None:
        return self._error

    # ------------------------------------------------------------------------------------ stages
    def _silence(self):
        if self._silence_mel is None:
            self._silence_mel = log_mel_window(np.zeros(LIVE_WINDOW_SAMPLES, np.float32))
        return self._silence_mel

    def _audio_window(self, packet: Packet):
        frame = packet.frame
        ring = self.source.audio
        if ring is None:
            return self._silence()
        end = ring.end_time()
        if self.source.live and self.audio_wait > 0:
            deadline = now() + self.audio_wait
            while (end is None or end < frame.t) and not ring.finished and not self._stop.is_set():
                if now() >= deadline:
                    break
                self._stop.wait(0.002)
                end = ring.end_time()
        t_audio = frame.t
        if end is None:
            self.audio_missing += 1
            packet.audio_late = True
        elif end < frame.t - 0.5 / ring.sample_rate and not ring.finished:
            # the audio is late: use the newest 0.975 s there is rather than pad the end with silence
            self.audio_late += 1
            packet.audio_late = True
            t_audio = end
        return self._log_mel(ring.window_ending_at(t_audio))

    def _assemble(self) -> None:
        size = self.backend.input_size
        history: collections.deque = collections.deque(maxlen=self.window)
        last_frame_at = now()
        got_first = False
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.frames.get(timeout=0.1)
                except TimeoutError:
                    limit = self.frame_timeout if got_first else self.first_frame_timeout
                    if now() - last_frame_at > limit:
                        raise StreamError(f"no frame from the {self.source.kind} source for {limit:g} s; stopping")
                    continue
                except Closed:
                    break
                t_deq = now()
                last_frame_at = t_deq
                got_first = True
                if self._first_t is None:
                    self._first_t = frame.t
                if self.duration is not None and frame.t - self._first_t >= self.duration:
                    self.skipped_after_duration += 1
                    if self._stopped_by is None:
                        self._stopped_by = "duration"
                    break
                self.frames_in += 1
                p = Packet(frame=frame)
                p.stamps["dequeued"] = t_deq
                mel = self._audio_window(p)
                img = preprocess_frame(frame.image, size)
                history.append((img, mel))
                n = len(history)
                if n < self.window and not self.backend.supports(n):
                    items = [history[0]] * (self.window - n) + list(history)  # repeat the oldest until T are there
                else:
                    items = list(history)
                p.frames_in = np.stack([x[0] for x in items])
                p.log_mel_in = np.stack([x[1] for x in items])
                p.stamps["preprocessed"] = now()
                self.q_infer.put(p)
        except BaseException as exc:  # noqa: BLE001 - reported, never raised in a thread
            self._fail(exc)
        finally:
            self.q_infer.close()
            if self._stopped_by == "duration":
                self.source.stop()

    def _infer(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    p = self.q_infer.get(timeout=0.1)
                except TimeoutError:
                    continue
                except Closed:
                    break
                p.stamps["infer_start"] = now()
                masks, scores = self.backend.infer(p.frames_in, p.log_mel_in)
                p.stamps["inferred"] = now()
                p.mask_logits = masks[-1]
                p.score = float(scores[-1])
                p.frames_in = p.log_mel_in = None
                self.q_out.put(p)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self.q_out.close()

    def _output(self, p: Packet) -> None:
        p.stamps["out_start"] = now()
        frame = p.frame
        h, w = frame.image.shape[:2]
        p.mask = mask_from_logits(p.mask_logits, h, w, self.threshold)
        # what the model decided: its sounding probability, the mask's area, and the "nothing sounding" state
        p.probability = sounding_probability(p.score)
        p.area = float(np.count_nonzero(p.mask)) / max(1, p.mask.size)
        p.sounding = p.probability >= self.sounding_threshold
        self.probability_sum += p.probability
        self.area_sum += p.area
        if not p.sounding:
            self.frames_nothing_sounding += 1
        elif p.area == 0.0:
            self.frames_sounding_empty_mask += 1
        else:
            self.frames_sounding += 1
        if frame.gt is not None:
            gt = np.asarray(frame.gt).astype(bool)
            pred = p.mask if gt.shape == (h, w) else mask_from_logits(p.mask_logits, *gt.shape, self.threshold)
            union = np.logical_or(pred, gt).sum()
            if gt.any():
                self.gt_frames += 1
                self.gt_iou_sum += float(np.logical_and(pred, gt).sum() / union)
        p.stamps["postprocessed"] = now()
        if self.render:
            hud = None
            if self.hud:
                fps = None
                if len(self._recent_out) >= 2 and self._recent_out[-1] > self._recent_out[0]:
                    fps = (len(self._recent_out) - 1) / (self._recent_out[-1] - self._recent_out[0])
                e2e = [x * 1000 for x in self._recent_e2e]
                hud = {"fps": fps, "latency_ms": e2e[-1] if e2e else None,
                       "latency_p90_ms": float(np.percentile(e2e, 90)) if len(e2e) >= 10 else None,
                       "score": p.score, "area": p.area, "sounding_threshold": self.sounding_threshold,
                       "dropped": self.dropped_total(), "backend": self.backend.name}
            p.rendered = render_overlay(frame.image, p.mask if p.sounding else None, hud)
        p.stamps["rendered"] = now()
        for sink in self.sinks:
            sink.write(p)
            if getattr(sink, "quit_requested", False):
                self.stop("quit")
        t_done = now()
        p.stamps["done"] = t_done
        self._record(p)
        if self.on_packet is not None:
            self.on_packet(p)

    def _record(self, p: Packet) -> None:
        s = p.stamps
        t_cap = p.frame.t_capture
        lat = self.latency
        lat.add("capture_age", s["dequeued"] - t_cap)
        lat.add("preprocess", s["preprocessed"] - s["dequeued"])
        lat.add("queue_wait", s["infer_start"] - s["preprocessed"])
        lat.add("inference", s["inferred"] - s["infer_start"])
        first, _, count = self._infer_starts or (s["infer_start"], None, 0)
        self._infer_starts = (first, s["infer_start"], count + 1)
        lat.add("output_wait", s["out_start"] - s["inferred"])
        lat.add("postprocess", s["postprocessed"] - s["out_start"])
        lat.add("render", s["rendered"] - s["postprocessed"])
        lat.add("sink", s["done"] - s["rendered"])
        e2e = s["done"] - t_cap
        lat.add("end_to_end", e2e)
        self.frames_out += 1
        self._last_t = p.frame.t
        if self._t_first_out is None:
            self._t_first_out = s["done"]
        self._t_last_out = s["done"]
        self._recent_out.append(s["done"])
        self._recent_e2e.append(e2e)

    def _source_dropped(self) -> int:
        """Frames the source queue dropped since the pipeline started (not while the model warmed up)."""
        return self.source.frames.dropped - self._before_start[1]

    def _captured(self) -> int:
        """Frames captured since the pipeline started, the one waiting in the queue then included."""
        return self.source.captured - self._before_start[0]

    def dropped_total(self) -> int:
        return self._source_dropped() + self.q_infer.dropped + self.q_out.dropped

    def progress(self) -> dict:
        """A snapshot of the counters for a status line: call it from the output thread (``on_packet``), it
        only reads what the output stage already keeps (no work for the capture / model threads)."""
        fps = None
        if len(self._recent_out) >= 2 and self._recent_out[-1] > self._recent_out[0]:
            fps = (len(self._recent_out) - 1) / (self._recent_out[-1] - self._recent_out[0])
        e2e = self._recent_e2e[-1] * 1000.0 if self._recent_e2e else None
        return {"frames": self.frames_out, "windows_per_s": fps, "dropped": self.dropped_total(),
                "latency_ms": e2e, "elapsed": None if self._t_start is None else now() - self._t_start,
                "stream_t": None if self._first_t is None or self._last_t is None else self._last_t - self._first_t}

    # ------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        """Run until the input ends, ``duration`` is reached, a fault, ``stop()`` or Ctrl-C; close the sinks
        (always) and return the report. A fault is in ``report["error"]`` and in :attr:`error`; Ctrl-C
        (KeyboardInterrupt) is caught, reported as ``stopped_by: "interrupt"`` and not re-raised."""
        with limit_opencv(self.plan.opencv), limit_blas(self.plan.blas) as limited:
            self._blas_limited = limited
            return self._run()

    def _run(self) -> dict:
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        interrupted = False
        previous_handler = self._catch_sigint()
        try:
            if self.warmup:
                t0 = now()
                self.backend.warmup(self.window)
                self.warmup_ms = round((now() - t0) * 1000.0, 3)
            self._time_isolated()
            self.source.start()
            # a live source started before run() (to fail fast) captured frames while the model warmed up:
            # those are "before_start", not drops; the newest one, still queued, counts as captured now
            self._before_start = (self.source.captured - len(self.source.frames), self.source.frames.dropped)
            for sink in self.sinks:
                if hasattr(sink, "attach"):
                    sink.attach(self.source)
            self._t_start = now()
            for target, name in ((self._assemble, "assemble"), (self._infer, "infer")):
                th = threading.Thread(target=target, name=f"autr-{name}", daemon=True)
                th.start()
                self._threads.append(th)
            while True:
                if self._sigint:
                    raise KeyboardInterrupt
                try:
                    p = self.q_out.get(timeout=0.1)
                except TimeoutError:  # also while draining after a source error (reported below)
                    continue
                except Closed:
                    break
                if self._stop.is_set() and self._stopped_by in ("interrupt", "error"):
                    break
                self._output(p)
        except KeyboardInterrupt:
            interrupted = True
            self.stop("interrupt")
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            for sig, handler in (previous_handler or {}).items():
                try:
                    signal.signal(sig, handler)
                except (ValueError, TypeError, OSError):
                    pass
            self._shutdown(interrupted or self._sigint)
        period = self._mean_call_period()
        if self.isolated_runs and not (interrupted or self._sigint) and period:
            self._time_isolated(period, self.isolated_paced_ms)
        return self.report()

    def _mean_call_period(self) -> float | None:
        """Mean seconds from one in-pipeline inference start to the next (None: fewer than three calls)."""
        if not self._infer_starts or self._infer_starts[2] < 3:
            return None
        first, last, count = self._infer_starts
        return (last - first) / (count - 1)

    def _time_isolated(self, period: float | None = None, into: list | None = None) -> None:
        """Time ``isolated_runs`` backend calls on one window of zeros with nothing else running (after three
        untimed ones: an engine's first calls after loading are slower than its steady state), back to back,
        or with `period` seconds from one call's start to the next (the pipeline's cadence)."""
        if not self.isolated_runs:
            return
        into = self.isolated_ms if into is None else into
        h, w = self.backend.input_size
        frames = np.zeros((self.window, 3, h, w), np.float32)
        log_mel = np.full((self.window, 1, 96, 64), np.log(0.01), np.float32)
        for k in range(self.isolated_runs + 3):
            t0 = now()
            self.backend.infer(frames, log_mel)
            took = now() - t0
            if k >= 3:
                into.append(took * 1000.0)
            if period:
                time.sleep(max(0.0, period - took))

    def _catch_sigint(self):
        """In the main thread, the first Ctrl-C (or SIGTERM) only raises a flag that the output loop checks
        between frames, so the interrupt never lands inside an encoder or a queue; a second one interrupts at
        once. The signal is reported (``stopped_by``: ``interrupt`` for Ctrl-C, ``terminated`` for SIGTERM).
        Returns the previous handlers (None where signals cannot be handled here)."""
        self._sigint = False
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_signal(signum, frame):
            if self._sigint:
                raise KeyboardInterrupt
            if self._stop_signal is None:
                self._stop_signal = signal.Signals(signum).name
            self._sigint = True

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):
                pass
        return previous or None

    def _shutdown(self, interrupted: bool) -> None:
        self._stop.set()
        try:
            self.source.stop()
        except Exception:
            pass
        self.q_infer.close()
        for th in self._threads:
            th.join(5.0)
        for q in (self.source.frames, self.q_infer, self.q_out):
            self.discarded_at_stop += len(q.clear())
        self._t_end = now()
        for sink in self.sinks:
            try:
                sink.close()
            except StreamError as exc:
                self._fail(exc)
            except Exception as exc:  # noqa: BLE001
                self._fail(StreamError(f"closing {getattr(sink, 'name', 'a sink')} failed: {one_line(exc)}"))
        if self.source.error is not None and self._error is None:
            self._error = self.source.error
        if self._stopped_by is None:
            self._stopped_by = "error" if self._error is not None else (self.source.end_reason or "end of input")
        if interrupted:
            self._stopped_by = "terminated" if self._stop_signal == "SIGTERM" else "interrupt"

    # ------------------------------------------------------------------------------------ report
    def report(self) -> dict:
        """The run's report (JSON-able)."""
        wall = None if self._t_start is None else (self._t_end or now()) - self._t_start
        out_span = None
        if self._t_first_out is not None and self._t_last_out is not None and self.frames_out > 1:
            out_span = self._t_last_out - self._t_first_out
        ring = self.source.audio
        audio = {"silent": ring is None}
        if ring is not None:
            audio.update(ring.stats())
        audio["late_windows_used_newest"] = self.audio_late
        audio["windows_without_audio"] = self.audio_missing
        drops = {"source": self._source_dropped(), "inference_queue": self.q_infer.dropped,
                 "output_queue": self.q_out.dropped}
        drops["total"] = sum(drops.values())
        env = environment(self.backend.versions())
        decided = self.frames_sounding + self.frames_nothing_sounding + self.frames_sounding_empty_mask
        rep = {
            "autr_runtime": 1,
            "started_at": self.started_at,
            "stopped_by": self._stopped_by,
            "error": None if self._error is None else str(self._error),
            "input_fault": getattr(self.source, "fault", None),
            "warnings": list(self.source.warnings),
            "source": self.source.describe(),
            "backend": self.backend.describe(),
            "window_T": self.window,
            "threads": {**self.plan.describe(), "blas_limited": self._blas_limited,
                        "backend": getattr(self.backend, "threads", None)},
            "queues": {"source": self.source.frames.stats(), "inference": self.q_infer.stats(),
                       "output": self.q_out.stats()},
            "frames": {"captured": self._captured(), "before_start": self._before_start[0],
                       "assembled": self.frames_in, "output": self.frames_out,
                       "dropped": drops, "discarded_at_stop": self.discarded_at_stop,
                       "after_duration": self.skipped_after_duration},
            "fps": {"output": None if not wall else round(self.frames_out / wall, 3),
                    "output_steady": None if not out_span else round((self.frames_out - 1) / out_span, 3),
                    "captured": None if not wall else round(self._captured() / wall, 3)},
            "wall_seconds": None if wall is None else round(wall, 3),
            "warmup_ms": self.warmup_ms,
            "latency_ms": self.latency.summary_ms(),
            "audio": audio,
            "sounding": {"threshold": self.sounding_threshold, "mask_logit_threshold": self.threshold,
                         "frames_sounding": self.frames_sounding,
                         "frames_nothing_sounding": self.frames_nothing_sounding,
                         "frames_sounding_empty_mask": self.frames_sounding_empty_mask,
                         "mean_probability": None if not decided else round(self.probability_sum / decided, 4),
                         "mean_mask_area": None if not decided else round(self.area_sum / decided, 4)},
            "signal": self._stop_signal,
            "source_stats": self.source.stats(),
            "sinks": [s.describe() for s in self.sinks if hasattr(s, "describe")],
            "device": env["device"],
            "versions": env["versions"],
        }
        in_pipe = rep["latency_ms"].get("inference", {}).get("p50")
        for suffix, samples in (("", self.isolated_ms), ("_paced", self.isolated_paced_ms)):
            if not samples:
                continue
            alone = {"runs": len(samples), "p50": round(float(np.median(samples)), 3),
                     "p90": round(float(np.percentile(samples, 90)), 3)}
            if suffix:
                alone["period_ms"] = round(self._mean_call_period() * 1e3, 3)
            rep[f"inference_isolated{suffix}_ms"] = alone
            rep[f"inference_in_pipeline_vs_isolated{suffix}"] = (None if not in_pipe
                                                                 else round(in_pipe / alone["p50"], 3))
        if self.gt_frames:
            rep["synthetic_gt"] = {"frames_with_sound": self.gt_frames,
                                   "mean_iou": round(self.gt_iou_sum / self.gt_frames, 4)}
        return rep


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(report: dict, path) -> Path:
    """Write the report as JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_clean(report), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
