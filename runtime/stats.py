"""Per-stage timing and the run report.

Every stage stamps :func:`now` (the monotonic clock) on the item it handles; the differences are recorded
here in seconds and reported in milliseconds as count / mean / p50 / p90 / p99 / max. Samples are kept
exactly up to ``cap`` per stage (2**20, about 11 hours at 25 FPS), then a uniform reservoir of that size,
so memory stays bounded on a soak run while max and count stay exact.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import time

import numpy as np

__all__ = ["now", "StageStats", "LatencyRecorder", "environment"]

#: The runtime's clock: monotonic seconds (never jumps with the wall clock).
now = time.monotonic


class StageStats:
    """Samples of one stage (seconds), exact up to ``cap``, then a reservoir."""

    def __init__(self, cap: int = 1 << 20, seed: int = 0):
        self.cap = int(cap)
        self._data = np.empty(min(4096, self.cap), dtype=np.float64)
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._rng = np.random.default_rng(seed)

    def add(self, seconds: float) -> None:
        s = float(seconds)
        self.total += s
        if s > self.max or self.count == 0:
            self.max = s
        if self.count < self.cap:
            if self.count == self._data.shape[0]:
                grown = np.empty(min(self._data.shape[0] * 2, self.cap), dtype=np.float64)
                grown[:self.count] = self._data[:self.count]
                self._data = grown
            self._data[self.count] = s
        else:
            j = int(self._rng.integers(0, self.count + 1))
            if j < self.cap:
                self._data[j] = s
        self.count += 1

    def values(self) -> np.ndarray:
        return self._data[:min(self.count, self.cap)]

    def summary_ms(self) -> dict:
        if self.count == 0:
            return {"count": 0}
        v = self.values() * 1000.0
        p50, p90, p99 = np.percentile(v, [50, 90, 99])
        return {"count": self.count, "mean": round(self.total * 1000.0 / self.count, 3), "p50": round(float(p50), 3),
                "p90": round(float(p90), 3), "p99": round(float(p99), 3), "max": round(self.max * 1000.0, 3)}


class LatencyRecorder:
    """Stage name -> :class:`StageStats`, thread-safe."""

    STAGES = ("capture_age", "preprocess", "queue_wait", "inference", "output_wait", "postprocess", "render", "sink",
              "end_to_end")

    def __init__(self, cap: int = 1 << 20):
        self._cap = cap
        self._stages: dict = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            st = self._stages.get(stage)
            if st is None:
                st = self._stages[stage] = StageStats(self._cap, seed=len(self._stages))
            st.add(seconds)

    def get(self, stage: str) -> StageStats | None:
        return self._stages.get(stage)

    def summary_ms(self) -> dict:
        with self._lock:
            order = [s for s in self.STAGES if s in self._stages] + sorted(set(self._stages) - set(self.STAGES))
            return {s: self._stages[s].summary_ms() for s in order}


def _version(dist: str):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(extra_versions: dict | None = None) -> dict:
    """Host and package versions for the report, without importing anything heavy.

    Versions come from installed package metadata (``importlib.metadata``), so asking for torch's version
    does not import torch.
    """
    versions = {"python": platform.python_version()}
    for key, dist in (("autr", "autr"), ("numpy", "numpy"), ("opencv", "opencv-python-headless"),
                      ("opencv", "opencv-python"), ("av", "av"), ("onnxruntime", "onnxruntime"),
                      ("onnxruntime", "onnxruntime-gpu"), ("sounddevice", "sounddevice")):
        if versions.get(key) is None:
            versions[key] = _version(dist)
    if "cv2" in sys.modules:
        versions["opencv"] = getattr(sys.modules["cv2"], "__version__", versions.get("opencv"))
    versions.update(extra_versions or {})
    return {
        "device": {"cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
                   "machine": platform.machine()},
        "versions": {k: v for k, v in versions.items() if v is not None},
    }
