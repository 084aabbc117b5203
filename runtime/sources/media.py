"""Media files and network streams through PyAV: video frames plus the audio track at 16 kHz mono.

* A local file is read as fast as the backend goes (the frame queue blocks the decoder, nothing is
  dropped), or with ``realtime=True`` paced to the file's time stamps like a live camera (the frame queue
  then drops the oldest frame when the model falls behind).
* A URL (anything FFmpeg opens: ``tcp://``, ``udp://``, ``rtsp://``, ``http(s)://``, ``rtmp://`` ...) is a
  live stream: its sender sets the pace, the queue drops the oldest frame.

Audio is decoded to float at its own rate, its channels averaged, then resampled to 16 kHz with
:class:`~autr.runtime.resampling.StreamingResampler` (equal to :func:`autr.preprocess.resample` of the whole
track) and written into the ring buffer on the media time axis. A frame is handed to the pipeline only once
the audio up to its time stamp has been decoded (the container interleaves the two streams a little
differently), so every frame meets its full audio window.
"""
from __future__ import annotations

import collections
import os
import time

import numpy as np

from ..errors import NoAudioError, SourceError, one_line
from ..frames import Frame
from ..resampling import StreamingResampler
from ..ring import AudioRingBuffer
from .base import Source

__all__ = ["MediaSource", "is_url"]

_NETWORK_SCHEMES = ("tcp", "udp", "rtp", "rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "hls", "mms")


def is_url(name: str) -> bool:
    """True for a network URL (``scheme://...``), False for a local path (or ``file:``)."""
    scheme, sep, _ = str(name).partition("://")
    return bool(sep) and scheme.lower() in _NETWORK_SCHEMES


def _import_av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency of the runtime
        raise SourceError(f"PyAV is not installed ({exc}); pip install 'av>=12'") from None
    return av


class MediaSource(Source):
    """A media file or a network stream.

    Args:
        url: a local path or a URL.
        realtime: pace a local file to its time stamps (live behaviour, drops when slow).
        silent_audio: ignore the audio track (or the lack of one) and run on silence on purpose.
        queue_size: frames buffered between decoder and pipeline.
        open_timeout: seconds to keep trying to connect to a URL (a server that is still starting
            refuses connections for a moment).
        read_timeout: a network stream that sends nothing for this long has stalled: stop, do not hang.
        max_decode_errors: consecutive undecodable packets before the input counts as corrupt.
        speed: playback speed for ``realtime`` (1.0 = the file's own pace).
    """

    def __init__(self, url, realtime: bool = False, silent_audio: bool = False, queue_size: int = 1,
                 open_timeout: float = 10.0, read_timeout: float = 5.0, max_decode_errors: int = 25,
                 speed: float = 1.0, ring_seconds: float = 30.0):
        self.url = str(url)
        self.network = is_url(self.url)
        self.kind = "network" if self.network else "file"
        self.realtime = bool(realtime) and not self.network
        super().__init__(live=self.network or self.realtime,
                         queue_size=queue_size if (self.network or self.realtime) else max(queue_size, 2))
        self.silent_audio = bool(silent_audio)
        self.open_timeout = float(open_timeout)
        self.read_timeout = float(read_timeout)
        self.max_decode_errors = int(max_decode_errors)
        self.speed = float(speed)
        self.ring_seconds = float(ring_seconds)
        self.container = None
        self.video_stream = None
        self.audio_stream = None
        self.duration = None
        self.start_time = None
        self.decode_errors = 0
        self.last_time = None
        self.frames_decoded = 0
        self.audio_info: dict = {}
        self._resampler = None
        self._audio_expected = None
        self._audio_t0 = 0.0
        self.original_audio = None

    # ---------------------------------------------------------------------------------------- open
    def _open(self) -> None:
        av = _import_av()
        if not self.network:
            path = self.url[len("file://"):] if self.url.startswith("file://") else self.url
            if not os.path.exists(path):
                raise SourceError(f"input not found: {path}")
            if os.path.isdir(path):
                raise SourceError(f"input is a directory, not a media file: {path}")
            if os.path.getsize(path) == 0:
                raise SourceError(f"input is empty (0 bytes): {path}")
        options = {}
        if self.url.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        deadline = time.monotonic() + self.open_timeout
        while True:
            try:
                self.container = av.open(self.url, mode="r", options=options,
                                         timeout=(self.open_timeout, self.read_timeout) if self.network else None)
                break
            except av.FFmpegError as exc:
                refused = isinstance(exc, (ConnectionRefusedError, ConnectionResetError)) or \
                    "refused" in str(exc).lower()
                if self.network and refused and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise SourceError(self._open_message(exc)) from None
            except OSError as exc:
                raise SourceError(f"cannot open {self.url}: {one_line(exc)}") from None
        streams = self.container.streams
        if not streams.video:
            self.container.close()
            raise SourceError(f"{self.url} has no video stream (streams: "
                              f"{', '.join(s.type for s in streams) or 'none'})")
        self.video_stream = streams.video[0]
        self.video_stream.thread_type = "AUTO"
        if self.silent_audio:
            self.audio = None
        elif not streams.audio:
            self.container.close()
            raise NoAudioError(f"{self.url} has no audio track; the model segments what makes the sound, so it "
                               "needs audio -- pass --silent-audio to run it on silence on purpose")
        else:
            self.audio_stream = streams.audio[0]
            cc = self.audio_stream.codec_context
            self.audio_info = {"codec": cc.name, "sample_rate": cc.sample_rate,
                               "channels": getattr(cc.layout, "nb_channels", None) or len(cc.layout.channels)}
            self.audio = AudioRingBuffer(capacity_seconds=self.ring_seconds, resync_tolerance=0.05,
                                         gap_threshold=0.2)
            # the track as it is (its rate, up to two channels), for muxing the original sound into an mp4
            if cc.sample_rate:
                self.original_audio = AudioRingBuffer(cc.sample_rate, min(max(self.audio_info["channels"] or 1, 1), 2),
                                                      capacity_seconds=self.ring_seconds, resync_tolerance=0.05,
                                                      gap_threshold=0.2)
        if self.container.duration:
            self.duration = self.container.duration / 1e6
        if self.container.start_time is not None:
            self.start_time = self.container.start_time / 1e6

    def _open_message(self, exc) -> str:
        msg = one_line(exc)
        if self.network:
            return f"cannot open the stream {self.url}: {msg}"
        low = msg.lower()
        if "moov atom not found" in low or "invalid data" in low or "end of file" in low:
            return (f"cannot read {self.url}: not a media file, or truncated / corrupt before its index "
                    f"could be read ({msg})")
        return f"cannot open {self.url}: {msg}"

    def _workers(self):
        return [(self._run, "decode")]

    def _close(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:
                pass

    # ---------------------------------------------------------------------------------------- decode
    def _run(self) -> None:
        av = _import_av()
        streams = [self.video_stream] + ([self.audio_stream] if self.audio_stream is not None else [])
        audio_conv = av.AudioResampler(format="fltp") if self.audio_stream is not None else None
        pending: collections.deque = collections.deque()
        fallback_dt = 1.0 / float(self.video_stream.average_rate or 25)
        pace = {"wall0": None, "t0": None}
        consecutive = 0
        index = 0
        demux = self.container.demux(*streams)
        problem = None
        while not self.stopping:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.EOFError:
                break
            except av.FFmpegError as exc:
                problem = self._where("reading", exc)
                break
            except OSError as exc:  # network sockets surface as OSError subclasses too
                problem = self._where("reading", exc)
                break
            try:
                decoded = packet.decode()
                consecutive = 0
            except av.FFmpegError as exc:
                self.decode_errors += 1
                consecutive += 1
                if consecutive >= self.max_decode_errors:
                    problem = self._where(f"decoding ({consecutive} bad packets in a row)", exc)
                    break
                continue
            for f in decoded:
                if packet.stream.type == "video":
                    t = f.time if f.time is not None else index * fallback_dt
                    pending.append(Frame(index=index, image=f.to_ndarray(format="rgb24"), t=float(t), t_capture=0.0))
                    index += 1
                    self.frames_decoded = index
                    self.last_time = float(t)
                else:
                    self._write_audio(audio_conv.resample(f), f.time)
            if not self._release(pending, pace, final=False):
                return
        if self.stopping:  # stopped from outside (duration reached, Ctrl-C): not the input's end
            self.finish("stopped")
            return
        if self._resampler is not None and self.audio is not None:
            tail = self._resampler.flush()
            if tail.size:
                self.audio.write(tail)
        if self.audio is not None:
            self.audio.mark_finished()
        if self.original_audio is not None:
            self.original_audio.mark_finished()
        if not self._release(pending, pace, final=True):
            return
        if problem is not None:
            self.end_early(problem)
            return
        if self.network:
            self.finish("end of stream")
            return
        if self.duration and self.last_time is not None:
            start = self.start_time or 0.0
            expected_end = start + self.duration
            if self.last_time < expected_end - max(1.0, 3 * fallback_dt):
                msg = (f"{self.url} ended at {self.last_time - start:.2f} s (frame {self.frames_decoded}) although "
                       f"its header says {self.duration:.2f} s: the file looks truncated")
                self.end_early(msg)
                return
        self.finish("end of input")

    def _where(self, what: str, exc) -> str:
        at = "before the first frame" if self.last_time is None else \
            f"at {self.last_time - (self.start_time or 0.0):.2f} s (after frame {self.frames_decoded - 1})"
        if self.network and ("timed out" in str(exc).lower() or isinstance(exc, TimeoutError)):
            return f"{self.url}: the stream stalled (no data for {self.read_timeout:g} s) {at}"
        return f"{self.url}: {what} failed {at}: {one_line(exc)}; stopped there"

    def _write_audio(self, frames, t_in) -> None:
        if self.audio is None:
            return
        for fr in frames:
            planes = fr.to_ndarray()  # fltp: [channels, samples]
            x = planes.mean(axis=0) if planes.ndim == 2 and planes.shape[0] > 1 else planes.reshape(-1)
            t = fr.time if fr.time is not None else t_in
            orig = self.original_audio
            if orig is not None and fr.sample_rate == orig.sample_rate:
                block = planes.T if planes.ndim == 2 else planes.reshape(-1, 1)
                if block.shape[1] != orig.channels:  # > 2 channels: keep the mixdown
                    block = x[:, None].repeat(orig.channels, axis=1)
                orig.write(np.ascontiguousarray(block, dtype=np.float32), t_first=t)
            if self._resampler is None:
                self._resampler = StreamingResampler(fr.sample_rate)
                self._audio_t0 = float(t or 0.0)
                self._audio_expected = self._audio_t0
            elif t is not None and self._audio_expected is not None:
                gap = float(t) - self._audio_expected
                if gap > 0.2:  # a hole in the track: keep the time axis linear with silence
                    fill = np.zeros(int(round(min(gap, 10.0) * fr.sample_rate)))
                    self._audio_expected += fill.shape[0] / fr.sample_rate
                    out = self._resampler.process(fill)
                    self._ring_write(out)
            self._audio_expected = (self._audio_expected or 0.0) + x.shape[0] / fr.sample_rate
            self._ring_write(self._resampler.process(x))

    def _ring_write(self, y: np.ndarray) -> None:
        if y.size == 0:
            return
        if self.audio.written == 0:
            self.audio.write(y, t_first=self._audio_t0)
        else:
            self.audio.write(y)

    def _release(self, pending: collections.deque, pace: dict, final: bool) -> bool:
        """Hand over the frames whose audio is decoded (all of them when ``final``). False when stopping."""
        while pending:
            fr = pending[0]
            if not final and self.audio is not None and not self.audio.finished:
                end = self.audio.end_time()
                if (end is None or end < fr.t) and len(pending) < 256:
                    break
            pending.popleft()
            if self.realtime:
                if pace["wall0"] is None:
                    pace["wall0"], pace["t0"] = self.clock(), fr.t
                due = pace["wall0"] + (fr.t - pace["t0"]) / self.speed
                delay = due - self.clock()
                if delay > 0 and self._stop.wait(delay):
                    return False
            fr.t_capture = self.clock()
            if not self.emit(fr):
                return False
        return True

    # ---------------------------------------------------------------------------------------- report
    def describe(self) -> dict:
        d = super().describe()
        d.update({"input": self.url, "realtime": self.realtime, "silent_audio": self.silent_audio})
        if self.video_stream is not None:
            cc = self.video_stream.codec_context
            d["video"] = {"codec": cc.name, "width": cc.width, "height": cc.height,
                          "fps": float(self.video_stream.average_rate) if self.video_stream.average_rate else None}
        if self.audio_info:
            d["audio"] = dict(self.audio_info, resampled_to=16000, mono=True)
        if self.duration:
            d["duration"] = round(self.duration, 3)
        return d

    def _extra_stats(self) -> dict:
        return {"decoded": self.frames_decoded, "decode_errors": self.decode_errors,
                "last_time": None if self.last_time is None else round(self.last_time, 4)}
