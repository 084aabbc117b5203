"""Sinks: a window (when a display exists), an mp4 with the input's audio muxed back, per-frame mask PNGs.

Every sink has ``write(packet)`` and ``close()``; ``close()`` is idempotent and always leaves a finished
file (the pipeline calls it on end of input, on errors and on Ctrl-C).
"""
from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import SinkError, one_line

__all__ = ["Sink", "DisplaySink", "Mp4Sink", "MaskPngSink", "display_problem"]


class Sink:
    name = "sink"
    needs_render = True  # the sink shows the overlay picture (packet.rendered)

    def write(self, packet) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"name": self.name}


def display_problem() -> str | None:
    """Why no window can be shown here, or None when one can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    import cv2

    ui = cv2.currentUIFramework() if hasattr(cv2, "currentUIFramework") else None
    if ui is not None and ui in ("", "NONE"):
        return (f"this OpenCV ({cv2.__version__}) has no window support (opencv-python-headless); "
                "pip install opencv-python for a window")
    return None


class DisplaySink(Sink):
    """An OpenCV window; ``q`` or Esc asks the pipeline to stop (:attr:`quit_requested`)."""

    name = "display"

    def __init__(self, title: str = "autr stream"):
        problem = display_problem()
        if problem:
            raise SinkError(f"cannot open a window: {problem}; use --no-display (with --out / --masks / --report)")
        import cv2

        self._cv2 = cv2
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window: {one_line(exc)}; use --no-display") from None
        self.quit_requested = False

    def write(self, packet) -> None:
        self._cv2.imshow(self.title, packet.rendered)
        key = self._cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.quit_requested = True

    def close(self) -> None:
        try:
            self._cv2.destroyWindow(self.title)
            self._cv2.waitKey(1)
        except Exception:
            pass


MP4_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers that hold H.264 + AAC


class Mp4Sink(Sink):
    """H.264 mp4 of the rendered frames, with the stream's audio muxed back in sync (AAC).

    Video time stamps are the frames' own (``Frame.t`` relative to the first written frame), so dropped
    frames leave the picture standing rather than speeding the video up; the audio is read from the source's
    ring buffer from the first frame's time on, so sound and picture stay aligned. A media file's track is
    muxed as it was (its rate, mono or stereo: ``source.original_audio``); a microphone's at the device's rate
    and channels; the synthetic scene's at 16 kHz mono.

    Args:
        path: the ``.mp4`` to write.
        audio: True (default): the source's audio, connected when the pipeline starts (:meth:`attach`);
            an :class:`AudioRingBuffer`; or False / None: no audio track.
        fps: nominal rate written in the header (default: the source's, when it has one).
        threads: encoder threads (1: the thread plan's; x264 would start one per core and fight inference).
    """

    name = "mp4"

    def __init__(self, path, audio=True, fps: float | None = None, crf: int = 23, threads: int = 1):
        self.path = Path(path)
        self._want_audio = audio is True
        self.audio = None if audio is True or audio is False else audio
        self._fps_given = fps is not None
        self.fps = float(fps) if fps else 25.0
        self.crf = int(crf)
        self.threads = int(threads)
        self.container = None
        self.vstream = None
        self.astream = None
        self.frames = 0
        self.audio_samples = 0
        self._t0 = None
        self._last_pts = -1
        self._last_t = None
        self._a_next = None
        self._fifo = None
        self._size = None
        self._closed = False
        if self.path.suffix.lower() not in MP4_SUFFIXES:
            raise SinkError(f"cannot write {self.path}: the overlay video is H.264 with AAC sound; name it "
                            f"{' / '.join(MP4_SUFFIXES)} (e.g. {self.path.with_suffix('.mp4')})")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {one_line(exc)}") from None

    def attach(self, source) -> None:
        """Connect to a started source: its audio ring (when audio=True) and its nominal frame rate."""
        if self._want_audio and self.audio is None:
            self.audio = getattr(source, "original_audio", None) or source.audio
        if not self._fps_given:
            fps = _nominal_fps(source)
            if fps:
                self.fps = float(fps)

    def _open(self, h: int, w: int) -> None:
        import av

        self._av = av
        self.container = av.open(str(self.path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "h264" if "h264" in av.codecs_available else "mpeg4"
        self.vstream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
        self.vstream.width, self.vstream.height = w - w % 2, h - h % 2
        self.vstream.pix_fmt = "yuv420p"
        self.vstream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            self.vstream.codec_context.options = {"crf": str(self.crf), "preset": "veryfast",
                                                  "threads": str(self.threads)}
        else:
            self.vstream.codec_context.thread_count = self.threads
        self._size = (self.vstream.height, self.vstream.width)
        if self.audio is not None:
            self._layout = "stereo" if self.audio.channels == 2 else "mono"
            self.astream = self.container.add_stream("aac", rate=self.audio.sample_rate, layout=self._layout)
            self._fifo = av.AudioFifo()

    def write(self, packet) -> None:
        if self._closed:
            return
        img = packet.rendered
        t = packet.frame.t
        try:
            if self.container is None:
                self._open(img.shape[0], img.shape[1])
                self._t0 = t
                if self.audio is not None:
                    self._a_next = self.audio.index_at(t)
            h, w = self._size
            if img.shape[:2] != (h, w):
                if img.shape[0] >= h and img.shape[1] >= w and img.shape[0] - h < 2 and img.shape[1] - w < 2:
                    img = img[:h, :w]
                else:
                    import cv2

                    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            pts = int(round((t - self._t0) * 1000.0))
            if pts <= self._last_pts:
                pts = self._last_pts + 1
            self._last_pts = pts
            self._last_t = t
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            frame.pts = pts
            frame.time_base = Fraction(1, 1000)
            for p in self.vstream.encode(frame):
                self.container.mux(p)
            self.frames += 1
            if self.audio is not None:
                self._audio_until(self.audio.index_at(t))
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"writing {self.path} failed: {one_line(exc)}") from None

    def _audio_until(self, stop: int) -> None:
        stop = min(stop, self.audio.written)
        if stop <= self._a_next:
            return
        stereo = self._layout == "stereo"
        x = self.audio.read(self._a_next, stop, mono=not stereo)
        self._a_next = stop
        planes = np.ascontiguousarray(x.T) if stereo else x[None, :]
        frame = self._av.AudioFrame.from_ndarray(planes, format="fltp", layout=self._layout)
        frame.sample_rate = self.audio.sample_rate
        frame.pts = self.audio_samples
        frame.time_base = Fraction(1, self.audio.sample_rate)
        self.audio_samples += x.shape[0]
        self._fifo.write(frame)
        size = self.astream.codec_context.frame_size or 1024
        while self._fifo.samples >= size:
            for p in self.astream.encode(self._fifo.read(size)):
                self.container.mux(p)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.container is None:
            try:
                if self.path.exists() and self.path.stat().st_size == 0:
                    self.path.unlink()
            except OSError:
                pass
            return
        try:
            if self.audio is not None and self._last_t is not None:
                self._audio_until(self.audio.index_at(self._last_t + 1.0 / self.fps))
                rest = self._fifo.read()
                if rest is not None:
                    for p in self.astream.encode(rest):
                        self.container.mux(p)
                for p in self.astream.encode(None):
                    self.container.mux(p)
            for p in self.vstream.encode(None):
                self.container.mux(p)
        except Exception as exc:
            raise SinkError(f"finishing {self.path} failed: {one_line(exc)}") from None
        finally:
            try:
                self.container.close()
            except Exception:
                pass

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "frames": self.frames,
                "audio_seconds": None if self.audio is None else round(self.audio_samples / self.audio.sample_rate, 3)}


def _nominal_fps(source):
    """A source's nominal frame rate (file / stream / camera / synthetic), or None."""
    desc = source.describe()
    for d in (desc, desc.get("video") if isinstance(desc.get("video"), dict) else {}):
        if isinstance(d.get("video"), dict) and d["video"].get("fps"):
            return d["video"]["fps"]
        if d.get("fps"):
            return d["fps"]
    return None


class MaskPngSink(Sink):
    """``DIR/NNNNNN.png`` per frame (0 / 255, the frame's size: the model's mask at the logit threshold) and
    ``DIR/masks.csv``: frame index, time, score (logit), sounding probability, ``sounding`` (1, or 0 for the
    "nothing sounding" state: probability below ``--sounding-threshold``), the mask's area (share of the frame)
    and the PNG's name."""

    name = "masks"
    needs_render = False

    def __init__(self, directory):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._csv = open(self.dir / "masks.csv", "w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"cannot write masks into {self.dir}: {one_line(exc)}") from None
        self._csv.write("frame,time_s,score,probability,sounding,area,file\n")
        self.count = 0
        import cv2

        self._cv2 = cv2

    def write(self, packet) -> None:
        name = f"{packet.frame.index:06d}.png"
        if not self._cv2.imwrite(str(self.dir / name), packet.mask.astype(np.uint8) * 255):
            raise SinkError(f"cannot write {self.dir / name}")
        score = "" if packet.score is None else f"{packet.score:.5f}"
        prob = getattr(packet, "probability", None)
        sounding = getattr(packet, "sounding", None)
        area = getattr(packet, "area", None)
        self._csv.write(f"{packet.frame.index},{packet.frame.t:.6f},{score},"
                        f"{'' if prob is None else f'{prob:.4f}'},{'' if sounding is None else int(sounding)},"
                        f"{'' if area is None else f'{area:.5f}'},{name}\n")
        self.count += 1

    def close(self) -> None:
        if not self._csv.closed:
            self._csv.close()

    def describe(self) -> dict:
        return {"name": self.name, "dir": str(self.dir), "frames": self.count}
