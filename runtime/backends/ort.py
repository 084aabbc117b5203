"""ONNX Runtime backend: the portable graph (``model.portable.onnx``) and its sidecar ``model.json``.

Runs on the CPU execution provider, or CUDA's (``provider="cuda"``, needs ``onnxruntime-gpu``). Input size
and T range come from the sidecar and are checked against the graph's own input shapes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError, BackendUnavailable, one_line
from ..threads import available_cores
from .base import Backend, check_inputs
from .sidecar import parse_spec, read_sidecar

__all__ = ["OrtBackend", "resolve_onnx"]

PORTABLE_NAME = "model.portable.onnx"


def resolve_onnx(path) -> Path:
    """The portable graph of ``path`` (a file, or an export directory holding ``model.portable.onnx``)."""
    p = Path(path)
    if p.is_dir():
        if not (p / PORTABLE_NAME).is_file():
            found = ", ".join(sorted(x.name for x in p.glob("*.onnx"))) or "no ONNX file"
            raise BackendError(f"{p} holds no {PORTABLE_NAME} (found: {found}); export with `autr export onnx`, or "
                               "name the graph file itself")
        return p / PORTABLE_NAME
    if not p.is_file():
        raise BackendError(f"ONNX model not found: {p}")
    return p


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu "
                                 "(CUDA)") from None
    return ort


class OrtBackend(Backend):
    """Run an ONNX graph with ONNX Runtime.

    Args:
        path: the ``.onnx`` file, or the export directory.
        provider: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        threads: intra-op threads, the calling thread included (None: one per available core).
        spinning: let idle intra-op workers busy-wait between operators (None: off). Off is what a live
            pipeline wants: a spinning worker holds a core that preprocessing and rendering need
            (runtime/threads.py, "thread plan").
    """

    name = "ort"

    def __init__(self, path, provider: str = "cpu", threads: int | None = None, spinning: bool | None = None):
        ort = _import_ort()
        onnx_path = resolve_onnx(path)
        side_path, data = read_sidecar(onnx_path)
        spec = parse_spec(data, where=f"sidecar {side_path}")
        super().__init__(spec.input_size, spec.t_min, spec.t_max)
        self.artifact = onnx_path
        self.sidecar = side_path
        available = ort.get_available_providers()
        provider = (provider or "cpu").lower()
        if provider == "auto":
            provider = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if provider == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable("ONNX Runtime here has no CUDA execution provider (available: "
                                         f"{', '.join(available)}); pip install onnxruntime-gpu, or use --provider cpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif provider == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendError(f"unknown provider {provider!r}; use cpu, cuda or auto")
        intra = available_cores() if threads is None else int(threads)
        if intra < 1:
            raise BackendError(f"threads must be >= 1; got {threads}")
        spin = bool(spinning)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = intra
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.threads = {"intra_op": intra, "inter_op": 1, "spinning": spin}
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:
            msg = one_line(exc)
            if "AutrMSDeformAttn" in msg:
                raise BackendError(f"{onnx_path} is the TensorRT plugin graph (custom AutrMSDeformAttn nodes); "
                                   f"give ONNX Runtime the portable graph ({PORTABLE_NAME})") from None
            raise BackendError(f"ONNX Runtime cannot load {onnx_path}: {msg}") from None
        self.device = f"{provider} ({self.session.get_providers()[0]})"
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"frames", "log_mel"}:
            raise BackendError(f"{onnx_path} has inputs {sorted(inputs)}; the model contract is frames, log_mel")
        if not {"masks", "scores"} <= set(outputs):
            raise BackendError(f"{onnx_path} has outputs {outputs}; the model contract is masks, scores")
        shape = inputs["frames"].shape
        h, w = self.input_size
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], (3, h, w))):
            raise BackendError(f"{onnx_path}: graph input frames is {shape} but the sidecar says input size {h}x{w}")
        if isinstance(shape[0], int) and not (self.t_min <= shape[0] and (self.t_max is None or shape[0] <= self.t_max)):
            raise BackendError(f"{onnx_path}: graph input frames has fixed T = {shape[0]} outside the sidecar's "
                               f"range {self.t_min}..{self.t_max}")
        if isinstance(shape[0], int):
            self.t_min = self.t_max = shape[0]
        self.provider = provider

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        masks, scores = self.session.run(["masks", "scores"], {"frames": np.ascontiguousarray(frames, np.float32),
                                                               "log_mel": np.ascontiguousarray(log_mel, np.float32)})
        return masks.astype(np.float32, copy=False), scores.astype(np.float32, copy=False).reshape(-1)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"sidecar": str(self.sidecar), "providers": self.session.get_providers(), "threads": self.threads})
        return d

    def versions(self) -> dict:
        ort = _import_ort()
        return {"onnxruntime": ort.__version__}
