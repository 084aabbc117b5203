"""A live SynthAVS scene: clips of :func:`autr.synth.make_clip` played back to back, audio in real time.

Each 5 s clip has five pictures (one per second, AVSBench style) and 5 s of 16 kHz audio. The scene shows
picture ``k`` of the current clip during second ``k`` at ``fps`` frames per second, with that second's
ground-truth mask attached, and writes the audio into the ring buffer in blocks as a microphone would: a
block is written once its last sample "has happened". Clips are generated one ahead in a helper thread.

With ``realtime=False`` the scene runs as fast as the pipeline takes frames (scene time, no sleeping).
"""
from __future__ import annotations

import threading

import numpy as np

from autr.preprocess import SAMPLE_RATE
from ..ring import AudioRingBuffer
from ..frames import Frame
from .base import Source

__all__ = ["SyntheticSource"]


class _ClipFeed:
    """Clip ``c`` of the scene, generated one clip ahead in a helper thread."""

    def __init__(self, seed: int, mode: str, size: int):
        self.seed, self.mode, self.size = int(seed), mode, int(size)
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._making: dict = {}

    def _make(self, c: int):
        from autr.synth import make_clip

        return make_clip(np.random.default_rng([self.seed, c]), mode=self.mode, size=self.size)

    def _prefetch(self, c: int) -> None:
        with self._lock:
            if c in self._cache or c in self._making:
                return
            ev = self._making[c] = threading.Event()

        def work():
            clip = self._make(c)
            with self._lock:
                self._cache[c] = clip
                self._making.pop(c, None)
            ev.set()

        threading.Thread(target=work, daemon=True, name="autr-synth-prefetch").start()

    def get(self, c: int):
        with self._lock:
            clip = self._cache.get(c)
            ev = self._making.get(c)
        if clip is None:
            if ev is not None:
                ev.wait()
                with self._lock:
                    clip = self._cache[c]
            else:
                clip = self._make(c)
                with self._lock:
                    self._cache[c] = clip
        with self._lock:
            for old in [k for k in self._cache if k < c - 1]:
                del self._cache[old]
        self._prefetch(c + 1)
        return clip


class SyntheticSource(Source):
    """A live synthetic audio-visual scene.

    Args:
        fps: video frame rate.
        mode: SynthAVS mode, ``"s4"`` or ``"ms3"``.
        size: picture side (pixels).
        seed: scene seed (clip ``c`` uses ``default_rng([seed, c])``).
        realtime: pace frames and audio to the wall clock (live); else as fast as the pipeline goes.
        audio: write the scene's sound into :attr:`audio` (False: the caller supplies audio, e.g. a mic).
        audio_block: seconds per audio block.
        clips: stop after this many clips (None: endless).
    """

    kind = "synthetic"
    CLIP_SECONDS = 5

    def __init__(self, fps: float = 10.0, mode: str = "s4", size: int = 224, seed: int = 0, realtime: bool = True,
                 audio: bool = True, audio_block: float = 0.02, clips: int | None = None, queue_size: int = 1):
        super().__init__(live=realtime, queue_size=queue_size if realtime else max(queue_size, 2))
        if fps <= 0:
            raise ValueError(f"fps must be positive; got {fps}")
        self.fps = float(fps)
        self.mode = mode
        self.size = int(size)
        self.seed = int(seed)
        self.realtime = bool(realtime)
        self.with_audio = bool(audio)
        self.block = max(1, int(round(audio_block * SAMPLE_RATE)))
        self.max_clips = clips
        self.audio = AudioRingBuffer(capacity_seconds=20.0) if audio else None
        self._feed = _ClipFeed(self.seed, mode, self.size)
        self.origin = None  # time of scene time 0 on the source's axis

    def _open(self) -> None:
        self._feed.get(0)  # first clip ready before the clock starts (also surfaces bad arguments here)

    def _workers(self):
        return [(self._run, "scene")]

    def _clip_audio(self, start: int, stop: int) -> np.ndarray:
        """Scene samples [start, stop) across clip boundaries."""
        per = self.CLIP_SECONDS * SAMPLE_RATE
        out = np.empty(stop - start, dtype=np.float32)
        pos = start
        while pos < stop:
            c, off = divmod(pos, per)
            n = min(stop - pos, per - off)
            out[pos - start:pos - start + n] = self._feed.get(c).wav[off:off + n]
            pos += n
        return out

    def _run(self) -> None:
        end_s = None if self.max_clips is None else self.max_clips * self.CLIP_SECONDS
        origin = self.clock() if self.realtime else 0.0
        self.origin = origin
        b = 0  # next audio block
        i = 0  # next frame
        block_s = self.block / SAMPLE_RATE
        while not self.stopping:
            s_frame = i / self.fps
            if end_s is not None and s_frame >= end_s:
                break
            if self.realtime:
                s_audio = (b + 1) * block_s  # scene time at which block b is complete
                if self.with_audio and s_audio <= s_frame:
                    delay = origin + s_audio - self.clock()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    self._write_block(b, origin)
                    b += 1
                    continue
                delay = origin + s_frame - self.clock()
                if delay > 0 and self._stop.wait(delay):
                    return
            elif self.with_audio:
                while (b + 1) * block_s <= s_frame + block_s:  # audio up to (and a little past) the frame
                    self._write_block(b, origin)
                    b += 1
            c, rem = divmod(s_frame, self.CLIP_SECONDS)
            clip = self._feed.get(int(c))
            k = min(int(rem), len(clip.frames) - 1)
            frame = Frame(index=i, image=clip.frames[k], t=origin + s_frame, t_capture=self.clock(),
                          gt=clip.masks[k], meta={"clip": int(c), "second": k, "sounding": clip.sounding_per_second[k]})
            if not self.emit(frame):
                return
            i += 1
        self.finish("end of scene" if end_s is not None else "stopped")

    def _write_block(self, b: int, origin: float) -> None:
        x = self._clip_audio(b * self.block, (b + 1) * self.block)
        self.audio.write(x, t_first=origin + b * self.block / SAMPLE_RATE)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"fps": self.fps, "mode": self.mode, "size": self.size, "seed": self.seed, "realtime": self.realtime,
                  "audio": "scene" if self.with_audio else "external"})
        return d
