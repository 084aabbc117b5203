"""A model-free backend for tests and for measuring the runtime's own overhead.

Masks are a fixed function of the input (bright pixels -> positive logits), scores the mean log-mel, and an
optional ``delay`` makes it deliberately slow (the drop policy's test).
"""
from __future__ import annotations

import time

import numpy as np

from .base import Backend, check_inputs

__all__ = ["FakeBackend"]


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, input_size=(224, 224), t_min: int = 1, t_max: int | None = 16, delay: float = 0.0):
        super().__init__(input_size, t_min, t_max, device="cpu (no model)")
        self.delay = float(delay)
        self.calls = 0

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        masks = frames.mean(axis=1).astype(np.float32)  # normalised brightness: > 0 where brighter than ImageNet mean
        scores = log_mel.reshape(log_mel.shape[0], -1).mean(axis=1).astype(np.float32)
        return masks, scores

    def describe(self) -> dict:
        d = super().describe()
        d["delay_s"] = self.delay
        return d
