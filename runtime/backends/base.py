"""The backend interface: ``infer(frames [T,3,H,W], log_mel [T,1,96,64]) -> (masks [T,H,W], scores [T])``."""
from __future__ import annotations

import numpy as np

from ..errors import BackendError

__all__ = ["Backend", "check_inputs"]


def check_inputs(frames: np.ndarray, log_mel: np.ndarray, size, t_min: int, t_max) -> None:
    """Raise a BackendError when inputs do not follow the model contract."""
    h, w = size
    if frames.ndim != 4 or frames.shape[1:] != (3, h, w):
        raise BackendError(f"frames must be [T, 3, {h}, {w}]; got {list(frames.shape)}")
    if log_mel.ndim != 4 or log_mel.shape[1:] != (1, 96, 64) or log_mel.shape[0] != frames.shape[0]:
        raise BackendError(f"log_mel must be [T, 1, 96, 64] with T = {frames.shape[0]}; got {list(log_mel.shape)}")
    t = frames.shape[0]
    if t < t_min or (t_max is not None and t > t_max):
        raise BackendError(f"T = {t} frames is outside the model's range {t_min}..{t_max}")


class Backend:
    """A model that maps one clip of T frames to T mask logits and T sounding scores.

    Attributes:
        name: ``"ort"``, ``"torch"``, ``"trt"`` or ``"fake"``.
        input_size: ``(H, W)`` the model takes (from the artifact's sidecar / config -- never guessed).
        t_min, t_max: frames per call the artifact accepts (``t_max`` None: unbounded).
        device: where it runs, in words.
    """

    name = "backend"

    def __init__(self, input_size, t_min: int = 1, t_max: int | None = None, device: str = "cpu"):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.t_min, self.t_max = int(t_min), (None if t_max is None else int(t_max))
        self.device = device
        self.artifact = None

    def supports(self, t: int) -> bool:
        return t >= self.t_min and (self.t_max is None or t <= self.t_max)

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        """Return ``(masks float32 [T, H, W] logits, scores float32 [T] logits)``."""
        raise NotImplementedError

    def warmup(self, t: int = 1, iters: int = 1) -> None:
        h, w = self.input_size
        frames = np.zeros((t, 3, h, w), np.float32)
        log_mel = np.full((t, 1, 96, 64), np.log(0.01), np.float32)
        for _ in range(iters):
            self.infer(frames, log_mel)

    def describe(self) -> dict:
        return {"name": self.name, "artifact": None if self.artifact is None else str(self.artifact),
                "device": self.device, "input_size": list(self.input_size), "t_range": [self.t_min, self.t_max]}

    def versions(self) -> dict:
        """Versions of the packages this backend runs on (for the report)."""
        return {}

    def close(self) -> None:
        pass
