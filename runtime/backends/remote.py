"""The ``remote`` backend: the model runs on an Open Inference Protocol (KServe v2) server -- NVIDIA Triton with a
model repository from ``autr export triton``, or KServe's ModelServer -- reached over gRPC with tritonclient.

* **Sidecar**: the runtime still never guesses; input size, T range and preprocessing come from the model's
  sidecar (the ``model.json`` that ``autr export triton`` copies into the repository, or the export's own), and the
  server's model metadata (input / output names, datatypes, shapes) is checked against it before the first call.
  Triton's model configuration, where the server has it, narrows T to its ``max_batch_size``.
* **Timeouts and reconnect**: every call has a deadline (``timeout``); a server that stops answering
  (UNAVAILABLE / DEADLINE_EXCEEDED) is reconnected with a fresh channel, backing off, for at most ``reconnect_s``
  seconds, then the stream ends with one line. The window in flight is sent again after a reconnect; a live
  stream's queues drop (and count) the frames that arrive meanwhile.
* **Latency split**: each call's round trip is recorded, and the server's own time where the server reports it
  (response parameter ``autr_server_us``, which ``autr.benchmarks.oip_server`` sets) -- network = round trip -
  server. Triton reports its time as statistics instead: the run's queue + compute averages are read from its
  statistics extension when the report is written.
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import BackendError, BackendUnavailable, SidecarError, one_line
from ..stats import StageStats, now
from .base import Backend, check_inputs
from .sidecar import ONNX_SIDECAR, parse_spec, read_json_object

__all__ = ["RemoteBackend", "parse_server_url", "resolve_sidecar", "INSTALL_HINT", "SERVER_TIME_PARAM"]

INSTALL_HINT = "pip install 'autr[serve]' (tritonclient[grpc])"
SERVER_TIME_PARAM = "autr_server_us"  # response parameter: microseconds the server spent on the request
_RETRY = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


def parse_server_url(url: str) -> str:
    """``grpc://HOST:PORT`` -> ``HOST:PORT`` (BackendError for anything else)."""
    p = urlparse(str(url))
    if p.scheme != "grpc" or not p.hostname or not p.port or p.path not in ("", "/"):
        raise BackendError(f"--server must be grpc://HOST:PORT (the Open Inference Protocol's gRPC endpoint, Triton's "
                           f"port 8001); got {url!r}")
    host = f"[{p.hostname}]" if ":" in p.hostname else p.hostname
    return f"{host}:{p.port}"


def resolve_sidecar(path) -> Path:
    """The sidecar file of ``path``: a ``.json`` file, a directory holding ``model.json`` (an export, or a model's
    folder in a Triton repository), or ``"default"`` (the shipped export's)."""
    if str(path) == "default":
        from . import shipped_export

        return shipped_export() / ONNX_SIDECAR
    p = Path(path)
    if p.is_dir():
        p = p / ONNX_SIDECAR
    if not p.is_file():
        raise SidecarError(f"sidecar not found: {p} (give the model's model.json, the directory that holds it, or "
                           "'default')")
    return p


def _import_client():
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise BackendUnavailable(f"the remote backend needs tritonclient ({exc}); {INSTALL_HINT}") from None
    return grpcclient, InferenceServerException


def _shape_problem(name: str, got, want) -> str | None:
    """None when the server's shape ``got`` fits ``want`` (None entries: the T axis, -1 or a number)."""
    got = [int(d) for d in got]
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
        shown = ["T" if w is None else w for w in want]
        return f"{name} is {got} on the server, the sidecar says {shown}"
    return None


class RemoteBackend(Backend):
    """A model served over the Open Inference Protocol (gRPC).

    Args:
        url: ``grpc://HOST:PORT``.
        model: the model's name on the server.
        sidecar: the model's sidecar (see :func:`resolve_sidecar`).
        version: the model version ("" = the server's choice).
        timeout: deadline of each call, s.
        connect_timeout: deadline of the start-up checks (live, ready, metadata), s.
        reconnect_s: how long a lost server is retried before the stream ends, s.
    """

    name = "remote"

    def __init__(self, url: str, model: str, sidecar, version: str = "", timeout: float = 10.0,
                 connect_timeout: float = 5.0, reconnect_s: float = 20.0):
        self.url = str(url)
        self.address = parse_server_url(url)
        if not model:
            raise BackendError("--server needs --model NAME (the model's name on the server)")
        side = resolve_sidecar(sidecar)
        data = read_json_object(side)
        spec = parse_spec(data, where=f"sidecar {side}")
        super().__init__(spec.input_size, spec.t_min, spec.t_max, device=f"server {self.url}")
        self.sidecar = side
        self.query_select = (data.get("config") or {}).get("query_select", "frame")
        self.model, self.version = str(model), str(version)
        self.timeout, self.connect_timeout, self.reconnect_s = float(timeout), float(connect_timeout), float(reconnect_s)
        self.artifact = f"{self.url}/{self.model}"
        self._grpc, self._exc = _import_client()
        self.client = None
        self.calls = self.failed_calls = self.reconnects = 0
        self.outage_s = 0.0
        self.round_trip = StageStats()
        self.server_time = StageStats()
        self.network = StageStats()
        self.server_config = None
        self._connect()
        self._check_metadata()
        self._stats_start = self._server_statistics()

    # -------------------------------------------------------------------------------- connection
    def _new_client(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
        self.client = self._grpc.InferenceServerClient(url=self.address)

    def _connect(self) -> None:
        """Server live, model ready; BackendError (one line) otherwise."""
        self._new_client()
        try:
            live = self.client.is_server_live(client_timeout=self.connect_timeout)
        except self._exc as exc:
            raise BackendError(f"no Open Inference Protocol server answers at {self.url} ({one_line(exc.message())}); "
                               "start the server (tritonserver, or KServe's ModelServer) or check --server") from None
        if not live:
            raise BackendError(f"the server at {self.url} is not live")
        try:
            ready = self.client.is_model_ready(self.model, self.version, client_timeout=self.connect_timeout)
        except self._exc as exc:
            ready, why = False, one_line(exc.message())
        else:
            why = "not ready"
        if not ready:
            raise BackendError(f"the server at {self.url} has no model {self.model!r} ready ({why}){self._served()}; "
                               "check --model")

    def _served(self) -> str:
        try:
            index = self.client.get_model_repository_index(client_timeout=self.connect_timeout)
            names = sorted({m.name for m in index.models})
        except Exception:  # noqa: BLE001 - the repository extension is optional (KServe's ModelServer has none)
            return ""
        return f"; it serves: {', '.join(names) or 'nothing'}"

    def _check_metadata(self) -> None:
        try:
            meta = self.client.get_model_metadata(self.model, self.version, client_timeout=self.connect_timeout)
        except self._exc as exc:
            raise BackendError(f"cannot read the metadata of {self.model!r} at {self.url}: {one_line(exc.message())}") \
                from None
        h, w = self.input_size
        want_in = {"frames": [None, 3, h, w], "log_mel": [None, 1, 96, 64]}
        want_out = {"masks": [None, h, w], "scores": [None]}
        problems = []
        for kind, tensors, want in (("input", meta.inputs, want_in), ("output", meta.outputs, want_out)):
            have = {t.name: t for t in tensors}
            for name, shape in want.items():
                t = have.get(name)
                if t is None:
                    problems.append(f"no {kind} {name} (the server's {kind}s: {', '.join(sorted(have)) or 'none'})")
                    continue
                if t.datatype != "FP32":
                    problems.append(f"{name} is {t.datatype}, the model contract is FP32")
                bad = _shape_problem(name, t.shape, shape)
                if bad:
                    problems.append(bad)
            if kind == "input" and set(have) - set(want):
                problems.append(f"unknown inputs {sorted(set(have) - set(want))}")
        if problems:
            raise SidecarError(f"model {self.model!r} at {self.url} does not match the sidecar {self.sidecar}: "
                               f"{'; '.join(problems)}")
        t_axis = [int(t.shape[0]) for t in meta.inputs]
        fixed = {d for d in t_axis if d >= 0}
        if fixed and not all(self.t_min <= d <= self.t_max for d in fixed):
            raise SidecarError(f"model {self.model!r} at {self.url} takes T = {sorted(fixed)}, outside the sidecar's "
                               f"{self.t_min}..{self.t_max}")
        try:  # Triton's model configuration: a batching model takes at most max_batch_size frames per request
            cfg = self.client.get_model_config(self.model, self.version, client_timeout=self.connect_timeout).config
        except Exception:  # noqa: BLE001 - not part of the Open Inference Protocol (KServe's server has none)
            cfg = None
        if cfg is not None:
            self.server_config = {"platform": cfg.platform or cfg.backend, "max_batch_size": cfg.max_batch_size}
            if cfg.max_batch_size > 0:
                self.t_max = min(self.t_max, int(cfg.max_batch_size))

    # -------------------------------------------------------------------------------- inference
    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        frames = np.ascontiguousarray(frames, np.float32)
        log_mel = np.ascontiguousarray(log_mel, np.float32)
        deadline = None
        while True:
            t0 = now()
            try:
                result = self._call(frames, log_mel)
            except self._exc as exc:
                status = str(exc.status())
                if status not in _RETRY:
                    raise BackendError(self._refusal(exc, frames, log_mel)) from None
                self.failed_calls += 1
                deadline = deadline or now() + self.reconnect_s
                self._reconnect(deadline, exc)
                continue
            t1 = now()
            break
        masks, scores, server_us = result
        self.calls += 1
        self.round_trip.add(t1 - t0)
        if server_us is not None:
            self.server_time.add(server_us / 1e6)
            self.network.add(max(0.0, (t1 - t0) - server_us / 1e6))
        t = frames.shape[0]
        if masks.shape != (t, *self.input_size) or scores.size != t:
            raise BackendError(f"the server answered masks {list(masks.shape)} and scores {list(scores.shape)} for "
                               f"T = {t}; expected [{t}, {self.input_size[0]}, {self.input_size[1]}] and [{t}]")
        return masks.astype(np.float32, copy=False), scores.astype(np.float32, copy=False).reshape(-1)

    def _call(self, frames, log_mel):
        g = self._grpc
        inputs = [g.InferInput("frames", list(frames.shape), "FP32"), g.InferInput("log_mel", list(log_mel.shape), "FP32")]
        inputs[0].set_data_from_numpy(frames)
        inputs[1].set_data_from_numpy(log_mel)
        outputs = [g.InferRequestedOutput("masks"), g.InferRequestedOutput("scores")]
        res = self.client.infer(self.model, inputs, model_version=self.version, outputs=outputs,
                                client_timeout=self.timeout)
        params = res.get_response().parameters
        server_us = params[SERVER_TIME_PARAM].int64_param if SERVER_TIME_PARAM in params else None
        return res.as_numpy("masks"), res.as_numpy("scores"), server_us

    def _refusal(self, exc, frames, log_mel) -> str:
        size = (frames.nbytes + log_mel.nbytes) / 2 ** 20
        return (f"the server at {self.url} refused the request for {self.model!r} (T = {frames.shape[0]}, "
                f"{size:.2f} MiB): {str(exc.status()).replace('StatusCode.', '')}: {one_line(exc.message())}")

    def _reconnect(self, deadline: float, exc) -> None:
        """Reconnect with a fresh channel until the model is ready again or ``deadline``; BackendError then."""
        t_lost = now()
        wait = 0.1
        last = one_line(exc.message())
        while True:
            try:
                self._new_client()
                if self.client.is_model_ready(self.model, self.version, client_timeout=min(2.0, self.connect_timeout)):
                    self.reconnects += 1
                    self.outage_s += now() - t_lost
                    return
                last = f"model {self.model!r} not ready"
            except self._exc as e:
                last = one_line(e.message())
            if now() + wait > deadline:
                self.outage_s += now() - t_lost
                raise BackendError(f"lost the server at {self.url}: no answer for {self.reconnect_s:g} s of reconnecting "
                                   f"({last})")
            time.sleep(wait)
            wait = min(1.0, wait * 2)

    # -------------------------------------------------------------------------------- report
    def _server_statistics(self):
        """Triton's cumulative (count, queue ns, compute ns) for this model; None where the server has none."""
        try:
            st = self.client.get_inference_statistics(self.model, self.version, client_timeout=self.connect_timeout)
            s = st.model_stats[0].inference_stats
        except Exception:  # noqa: BLE001 - the statistics extension is optional
            return None
        compute = s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
        return s.success.count, s.queue.ns, compute

    def describe(self) -> dict:
        d = super().describe()
        remote = {"url": self.url, "model": self.model, "version": self.version, "sidecar": str(self.sidecar),
                  "timeout_s": self.timeout, "reconnect_s": self.reconnect_s, "server_config": self.server_config,
                  "calls": self.calls, "failed_calls": self.failed_calls, "reconnects": self.reconnects,
                  "outage_s": round(self.outage_s, 3),
                  "latency_ms": {"round_trip": self.round_trip.summary_ms(), "server": self.server_time.summary_ms(),
                                 "network": self.network.summary_ms()}}
        start, end = self._stats_start, self._server_statistics() if self.client is not None else None
        if start is not None and end is not None and end[0] > start[0]:
            n = end[0] - start[0]  # Triton: the whole server's requests for this model during the run (all clients)
            remote["server_statistics_ms"] = {"requests": n, "queue_mean": round((end[1] - start[1]) / n / 1e6, 3),
                                              "compute_mean": round((end[2] - start[2]) / n / 1e6, 3)}
        d["remote"] = remote
        return d

    def versions(self) -> dict:
        try:
            from importlib.metadata import version

            return {"tritonclient": version("tritonclient")}
        except Exception:  # noqa: BLE001
            return {}

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
