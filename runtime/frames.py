"""What travels between the stages: a captured :class:`Frame` and the :class:`Packet` built around it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["Frame", "Packet"]


@dataclass
class Frame:
    """One captured video frame.

    Attributes:
        index: running number of the frame at the source (0, 1, 2, ...; gaps are frames the source dropped).
        image: RGB ``uint8`` ``[H, W, 3]``.
        t: the frame's time on the source's time axis -- the axis of the source's audio ring buffer
            (monotonic seconds for live devices, media seconds for files and network streams).
        t_capture: monotonic time at which the frame was captured (live) or released by the source
            (files); end-to-end latency is measured from here.
        gt: optional ground-truth mask ``[h, w]`` (synthetic scenes).
    """

    index: int
    image: np.ndarray
    t: float
    t_capture: float
    gt: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)


@dataclass
class Packet:
    """A frame on its way through the pipeline, with the monotonic time stamps of every stage."""

    frame: Frame
    stamps: dict = field(default_factory=dict)
    frames_in: Optional[np.ndarray] = None  # [T, 3, H, W] float32
    log_mel_in: Optional[np.ndarray] = None  # [T, 1, 96, 64] float32
    mask_logits: Optional[np.ndarray] = None  # [h, w] logits of this frame (the last of the window)
    score: Optional[float] = None
    mask: Optional[np.ndarray] = None  # bool [H, W] at the frame's size
    rendered: Optional[np.ndarray] = None  # BGR uint8 overlay
    audio_late: bool = False
