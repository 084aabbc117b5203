"""PyTorch backend: a checkpoint (or the embedded default model) through :func:`autr.checkpoint.load_model`.

This is the ONLY module of the runtime that imports torch, and it is imported only when a checkpoint is
asked for (``--checkpoint``); every other backend runs without torch installed.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError, BackendUnavailable, one_line
from .base import Backend, check_inputs

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Eager PyTorch inference.

    Args:
        checkpoint: a safetensors checkpoint written by ``autr train``, or ``"default"``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        threads: torch intra-op threads (None: torch's default).
    """

    name = "torch"

    def __init__(self, checkpoint="default", device: str = "cpu", threads: int | None = None):
        try:
            import timm  # noqa: F401 - the model's visual backbones
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"the torch backend needs PyTorch and timm ({one_line(exc)}): pip install "
                                     "'autr[train]', or run the shipped export: --onnx default") from None
        from autr.checkpoint import CheckpointError, load_model, resolve_checkpoint

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("--device cuda asked for, but this PyTorch sees no CUDA device")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            path = resolve_checkpoint(checkpoint)
            model = load_model(path, device=device)
        except CheckpointError as exc:
            raise BackendError(one_line(exc)) from None
        size = int(model.cfg.image_size)
        t_max = getattr(model.cfg, "max_frames", None)
        super().__init__((size, size), 1, None if t_max is None else int(t_max), device=device)
        self.artifact = path
        self.model = model
        self._torch = torch
        self.preset = getattr(model.cfg, "name", None)

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(frames, np.float32)).to(self.device),
                             torch.from_numpy(np.ascontiguousarray(log_mel, np.float32)).to(self.device))
        return (out["masks"].float().cpu().numpy(), out["scores"].float().cpu().numpy().reshape(-1))

    def describe(self) -> dict:
        d = super().describe()
        d["preset"] = self.preset
        return d

    def versions(self) -> dict:
        return {"torch": self._torch.__version__}
