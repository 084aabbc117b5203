"""A video source paired with a separate audio source (camera + microphone)."""
from __future__ import annotations

import threading

from ..errors import DeviceError, StreamError
from .base import Source

__all__ = ["LiveSource"]


class LiveSource(Source):
    """Frames from ``video``, audio from ``audio`` (both on the monotonic clock).

    A fault of either ends the stream with that fault. ``audio=None`` runs on silence on purpose.
    """

    kind = "live"

    def __init__(self, video: Source, audio: Source | None):
        super().__init__(live=video.live)
        self.video = video
        self.mic = audio
        self.frames = video.frames
        self._watch = None

    # the parts' state, merged with this source's own (a fault of either part ends the stream)
    @property
    def audio(self):
        return None if self.mic is None else self.mic.audio

    @property
    def error(self):
        return self._error or self.video.error or (self.mic.error if self.mic is not None else None)

    @property
    def end_reason(self):
        if self.mic is not None and self.mic.error is not None:
            return f"error: {self.mic.error}"
        return self._end_reason or self.video.end_reason

    @property
    def fault(self):
        return self._fault or self.video.fault

    @property
    def warnings(self):
        return self._warnings + self.video.warnings + (self.mic.warnings if self.mic is not None else [])

    @property
    def captured(self):
        return self.video.captured

    def start(self) -> "LiveSource":
        if self._started:
            return self
        # the camera first: it is what the user named (--camera N); a missing camera is reported as such even
        # where the microphone is missing too (then both are named), never blamed on the microphone
        try:
            self.video.start()
        except DeviceError as exc:
            also = self._mic_problem()
            if also:
                raise DeviceError(f"{exc}; and no microphone either: {also}") from None
            raise
        if self.mic is not None:
            try:
                self.mic.start()
            except BaseException:
                self.video.stop()
                raise
        self._started = True
        self._watch = threading.Thread(target=self._supervise, daemon=True, name="autr-live-watch")
        self._watch.start()
        return self

    def _mic_problem(self) -> str | None:
        """Why the microphone could not be opened either (checked without opening it), or None."""
        if self.mic is None or not hasattr(self.mic, "_resolve"):
            return None
        try:
            from .microphone import _sd

            self.mic._resolve(_sd())
        except StreamError as exc:
            return str(exc)
        except Exception:  # noqa: BLE001 - the check is a courtesy; the camera error stands on its own
            return None
        return None

    def _supervise(self) -> None:
        while not self._stop.wait(0.05):
            if self.mic is not None and self.mic.error is not None:
                self.video.frames.close()
                return
            if self.video.frames.closed:
                return

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self.video.stop(timeout)
        if self.mic is not None:
            self.mic.stop(timeout)
        if self._watch is not None:
            self._watch.join(timeout)

    def describe(self) -> dict:
        return {"kind": "live", "live": self.live, "video": self.video.describe(),
                "audio": None if self.mic is None else self.mic.describe()}

    def stats(self) -> dict:
        out = {"video": self.video.stats()}
        if self.mic is not None:
            out["audio"] = self.mic.stats()
        out["captured"] = self.video.captured
        out["dropped"] = self.video.frames.dropped
        return out
