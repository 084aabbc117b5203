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

Orientation: a phone clip records its picture as the sensor saw it and a display matrix (``rotate=90``
and friends) that tells players how to turn it. The source turns every frame upright the way FFmpeg's own
players do (multiples of 90 degrees, with mirroring), so the model sees the picture as a viewer sees it and
the overlay is written upright; the report records the rotation and the coded size.

Nothing here touches a PyAV object after its container is closed: what the report and the error messages
need (stream kinds, sizes, rates) is copied into plain Python values while the container is open.
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

__all__ = ["MediaSource", "is_url", "orientation_from_matrix", "apply_orientation"]

_NETWORK_SCHEMES = ("tcp", "udp", "rtp", "rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "hls", "mms")
_REENCODE = "re-encode it (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) or use another copy"
LATE_AUDIO_S = 0.5  # an audio track that starts this much after the picture is reported
_PREFETCH_PACKETS = 2000  # packets a local file may need before its first picture (audio interleaved first)


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


# ------------------------------------------------------------------------------------------------ orientation
def orientation_from_matrix(matrix) -> tuple:
    """The steps that turn a decoded picture upright, from FFmpeg's 3x3 display matrix (9 int32, 16.16 fixed
    point), as FFmpeg's players do it: ``(clockwise degrees, ops)`` with ``ops`` a tuple of ``"clock"``,
    ``"cclock"``, ``"transpose"``, ``"antitranspose"``, ``"hflip"``, ``"vflip"`` applied in order. A rotation
    that is not a multiple of 90 degrees returns ``(degrees, None)`` (the picture is used as stored)."""
    import math

    m = [float(x) / 65536.0 for x in list(matrix)[:6]]
    sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if sx == 0.0 or sy == 0.0:
        return 0, ()
    ccw = -math.degrees(math.atan2(m[1] / sy, m[0] / sx))  # av_display_rotation_get
    theta = -round(ccw)  # clockwise, as ffmpeg's get_rotation
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1.0:
        return 90, (("transpose",) if m[3] > 0 else ("clock",))
    if abs(theta - 180) < 1.0:
        return 180, tuple(op for op, on in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if on)
    if abs(theta - 270) < 1.0:
        return 270, (("antitranspose",) if m[3] < 0 else ("cclock",))
    if abs(theta) < 1.0 or abs(theta - 360) < 1.0:
        return 0, (("vflip",) if m[4] < 0 else ())
    return int(round(theta)), None


def apply_orientation(img: np.ndarray, ops) -> np.ndarray:
    """Apply :func:`orientation_from_matrix`'s steps to an ``[H, W, C]`` picture (a contiguous copy)."""
    if not ops:
        return img
    for op in ops:
        if op == "clock":
            img = np.rot90(img, -1)
        elif op == "cclock":
            img = np.rot90(img, 1)
        elif op == "transpose":
            img = img.transpose(1, 0, 2)
        elif op == "antitranspose":
            img = np.rot90(img, -1)[::-1]
        elif op == "hflip":
            img = img[:, ::-1]
        elif op == "vflip":
            img = img[::-1]
    return np.ascontiguousarray(img)


def _sane_rate(*rates):
    """The first frame rate in (0, 500] frames/s, as a float (None when there is none)."""
    for r in rates:
        try:
            v = float(r) if r is not None else 0.0
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if 0.0 < v <= 500.0:
            return v
    return None


def _tag_seconds(text):
    """``"00:00:02.007000000"`` (a Matroska DURATION tag) in seconds, or None."""
    try:
        h, m, sec = str(text).strip().split(":")
        value = int(h) * 3600 + int(m) * 60 + float(sec)
    except (AttributeError, ValueError):
        return None
    return value if value > 0 else None


def _start_seconds(stream):
    try:
        if stream.start_time is not None and stream.time_base:
            return float(stream.start_time * stream.time_base)
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return None


class MediaSource(Source):
    """A media file or a network stream.

    Args:
        url: a local path or a URL.
        realtime: pace a local file to its time stamps (live behaviour, drops when slow).
        silent_audio: ignore the audio track (or the lack of one) and run on silence on purpose.
        queue_size: frames buffered between decoder and pipeline.
        open_timeout: seconds to keep trying to connect to a URL.
        refused_timeout: seconds a refused connection is retried (a server that is still starting refuses
            for a moment; a closed port refuses for ever -- say so fast).
        read_timeout: a network stream that sends nothing for this long has stalled: stop, do not hang.
        max_decode_errors: consecutive undecodable packets before the input counts as corrupt.
        speed: playback speed for ``realtime`` (1.0 = the file's own pace).
    """

    def __init__(self, url, realtime: bool = False, silent_audio: bool = False, queue_size: int = 1,
                 open_timeout: float = 10.0, read_timeout: float = 5.0, max_decode_errors: int = 25,
                 speed: float = 1.0, ring_seconds: float = 30.0, refused_timeout: float = 2.0):
        self.url = str(url)
        self.network = is_url(self.url)
        self.kind = "network" if self.network else "file"
        self.realtime = bool(realtime) and not self.network
        super().__init__(live=self.network or self.realtime,
                         queue_size=queue_size if (self.network or self.realtime) else max(queue_size, 2))
        self.silent_audio = bool(silent_audio)
        self.open_timeout = float(open_timeout)
        self.refused_timeout = float(refused_timeout)
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
        self.first_decode_error = None
        self.last_time = None
        self.first_time = None
        self._last_frame_dur = None
        self.frames_decoded = 0
        self.video_info: dict = {}
        self.audio_info: dict = {}
        self.rotation = 0  # clockwise degrees applied to every frame (display matrix)
        self._orient = None  # None: not known yet (first frame); () no change; else the steps
        self._resampler = None
        self._audio_expected = None
        self._audio_t0 = 0.0
        self._audio_late_checked = False
        self.original_audio = None
        self._demux = None
        self._prefetched: collections.deque = collections.deque()
        self._problem = None
        self._consecutive = 0
        self._expected_frames = None
        self._video_duration = None
        self._bad_packets: dict = {}
        self._problem_detail = None
        self._video_t0_header = None
        self._fallback_dt = 1.0 / 25.0

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
                raise SourceError(f"input is empty (0 bytes): {path} -- the recording or download did not finish; "
                                  "use a complete copy")
        options = {}
        if self.url.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        t_open = time.monotonic()
        while True:
            try:
                self.container = av.open(self.url, mode="r", options=options,
                                         timeout=(self.open_timeout, self.read_timeout) if self.network else None)
                break
            except av.FFmpegError as exc:
                refused = isinstance(exc, (ConnectionRefusedError, ConnectionResetError)) or \
                    "refused" in str(exc).lower()
                waited = time.monotonic() - t_open
                if self.network and refused:
                    if waited < min(self.refused_timeout, self.open_timeout):
                        time.sleep(0.1)
                        continue
                    raise SourceError(f"cannot open the stream {self.url}: connection refused (for {waited:.1f} s): "
                                      "nothing listens there -- start the sender first, or check the host and "
                                      "port") from None
                raise SourceError(self._open_message(exc)) from None
            except OSError as exc:
                raise SourceError(f"cannot open {self.url}: {one_line(exc)}") from None
            except Exception as exc:  # noqa: BLE001 - whatever a broken file makes FFmpeg say: one line
                raise SourceError(f"cannot open {self.url}: {type(exc).__name__}: {one_line(exc)}") from None
        try:
            self._inspect(av)
            if not self.network:
                self._prefetch()
        except BaseException:
            self._close_container()
            raise

    def _inspect(self, av) -> None:
        """Check the streams and copy what the report needs into plain values (the container stays open)."""
        streams = self.container.streams
        kinds = [str(s.type) for s in streams]  # plain strings, read while the container is open
        if not kinds:
            raise SourceError(f"cannot read {self.url}: FFmpeg finds no stream in it (not a media file, or its header "
                              f"is damaged) -- {_REENCODE}")
        if not streams.video:
            raise SourceError(f"{self.url} has no video stream (it holds: {', '.join(kinds) or 'no streams'}): "
                              "the model segments the sounding object in a picture -- give a video file with its "
                              "sound (an audio-only file cannot be streamed)")
        vs = streams.video[0]
        cc = vs.codec_context
        if cc is None:
            raise SourceError(f"{self.url}: its video codec is unknown here (the file is damaged or uses a codec "
                              f"this FFmpeg lacks) -- {_REENCODE}")
        self.video_stream = vs
        vs.thread_type = "AUTO"
        width, height = int(cc.width or 0), int(cc.height or 0)
        self.video_info = {"codec": cc.name, "width": width, "height": height, "coded_width": width,
                           "coded_height": height, "rotation": 0,
                           "fps": _sane_rate(vs.average_rate, vs.guessed_rate, vs.base_rate)}
        self._video_t0_header = _start_seconds(vs)
        try:  # what the header promises, to tell a truncated file from a complete one
            self._expected_frames = int(vs.frames) if vs.frames and vs.frames > 0 else None
            self._video_duration = float(vs.duration * vs.time_base) if vs.duration and vs.duration > 0 else None
        except (TypeError, ValueError, ZeroDivisionError):
            self._expected_frames = self._video_duration = None
        if self._video_duration is None:  # Matroska: FFmpeg's muxer writes each track's length as a tag
            self._video_duration = _tag_seconds(dict(vs.metadata or {}).get("DURATION"))
        self._fallback_dt = 1.0 / (self.video_info["fps"] or 25.0)
        if self.silent_audio:
            self.audio = None
        elif not streams.audio:
            raise NoAudioError(f"{self.url} has no audio track; the model segments what makes the sound, so it "
                               "needs audio -- pass --silent-audio to run it on silence on purpose")
        else:
            acc = streams.audio[0].codec_context
            if acc is None:
                raise SourceError(f"{self.url}: its audio codec is unknown here (the file is damaged or uses a codec "
                                  f"this FFmpeg lacks) -- {_REENCODE}, or pass --silent-audio to ignore the sound")
            self.audio_stream = streams.audio[0]
            rate = int(acc.sample_rate or 0)
            try:
                channels = int(getattr(acc.layout, "nb_channels", None) or len(acc.layout.channels))
            except Exception:  # noqa: BLE001 - an unknown layout
                channels = int(getattr(acc, "channels", 0) or 0)
            layout = getattr(getattr(acc, "layout", None), "name", None)
            self.audio_info = {"codec": acc.name, "sample_rate": rate or None, "channels": channels or None,
                               "layout": layout}
            if not rate:
                raise SourceError(f"{self.url}: its audio track ({acc.name}) has no sample rate: the file looks "
                                  f"corrupt -- {_REENCODE}, or pass --silent-audio to ignore the sound")
            self.audio = AudioRingBuffer(capacity_seconds=self.ring_seconds, resync_tolerance=0.05,
                                         gap_threshold=0.2)
            # the track as it is (its rate, up to two channels), for muxing the original sound into an mp4
            self.original_audio = AudioRingBuffer(rate, min(max(channels or 1, 1), 2),
                                                  capacity_seconds=self.ring_seconds, resync_tolerance=0.05,
                                                  gap_threshold=0.2)
            a0, v0 = _start_seconds(self.audio_stream), self._video_t0_header
            if a0 is not None and v0 is not None:
                self._audio_late_checked = True
                self._check_late_audio(a0, v0)
        if self.container.duration and self.container.duration > 0:
            self.duration = self.container.duration / 1e6
        if self.container.start_time is not None:
            self.start_time = self.container.start_time / 1e6

    def _check_late_audio(self, t_audio: float, t_video: float) -> None:
        late = t_audio - t_video
        if late > LATE_AUDIO_S:
            self.audio_info["starts_late_s"] = round(late, 3)
            self.warn(f"the audio track of {self.url} starts {late:.2f} s after the picture: the frames before "
                      f"it are segmented on silence")

    def _prefetch(self) -> None:
        """Decode up to the first picture of a local file, so a file without one fails before the stream
        starts and the picture's orientation (display matrix) is known for the report from the start."""
        packets = 0
        while packets < _PREFETCH_PACKETS:
            try:
                item = self._next_decoded(prefetched=False)
            except Exception as exc:  # noqa: BLE001
                raise SourceError(f"{self.url}: reading failed before the first frame: {type(exc).__name__}: "
                                  f"{one_line(exc)}; the file looks corrupt -- {_REENCODE}") from None
            if item is None:
                why = self._problem_detail or "the video stream holds no frame"
                raise SourceError(f"cannot read {self.url}: no picture could be decoded ({why}); the file looks "
                                  f"corrupt or truncated -- {_REENCODE}")
            packets += 1
            self._prefetched.append(item)
            kind, frames = item
            if kind == "video" and frames:
                self._orientation(frames[0])
                return

    def _orientation(self, frame) -> tuple:
        """The orientation steps for this stream, decided on its first decoded picture."""
        if self._orient is None:
            ops, degrees = (), 0
            try:
                sd = frame.side_data.get("DISPLAYMATRIX")
                if sd is not None:
                    degrees, ops = orientation_from_matrix(np.frombuffer(bytes(sd), "<i4")[:9])
            except Exception:  # noqa: BLE001 - no side data / an unreadable one: as stored
                ops, degrees = (), 0
            if ops is None:
                self.warn(f"{self.url}: its display matrix turns the picture by {degrees} degrees, not a multiple "
                          "of 90: frames are used as stored")
                ops, degrees = (), 0
            self._orient = tuple(ops)
            self.rotation = int(degrees) % 360
            w, h = int(frame.width), int(frame.height)
            if degrees in (90, 270):
                w, h = h, w
            self.video_info.update({"width": w, "height": h, "coded_width": int(frame.width),
                                    "coded_height": int(frame.height), "rotation": self.rotation})
            if self._orient:
                self.video_info["orientation"] = list(self._orient)
        return self._orient

    def _open_message(self, exc) -> str:
        msg = one_line(exc)
        if self.network:
            return f"cannot open the stream {self.url}: {msg}"
        low = msg.lower()
        if "moov atom not found" in low or "invalid data" in low or "end of file" in low:
            return (f"cannot read {self.url}: not a media file, or truncated / corrupt before its index "
                    f"could be read ({msg}) -- {_REENCODE}")
        return f"cannot open {self.url}: {msg}"

    def _workers(self):
        return [(self._run, "decode")]

    def _close_container(self) -> None:
        container, self.container = self.container, None
        self.video_stream = self.audio_stream = None
        self._demux = None
        self._prefetched.clear()
        if container is not None:
            try:
                container.close()
            except Exception:
                pass

    def _close(self) -> None:
        self._close_container()

    # ---------------------------------------------------------------------------------------- decode
    def _next_decoded(self, prefetched: bool = True):
        """``(stream type, decoded frames)`` of the next packet (those decoded ahead by :meth:`_prefetch` first);
        None at the end of the input or after a read / decode failure (then :attr:`_problem` says where and
        why)."""
        if prefetched and self._prefetched:
            return self._prefetched.popleft()
        av = _import_av()
        if self._demux is None:
            streams = [self.video_stream] + ([self.audio_stream] if self.audio_stream is not None else [])
            self._demux = self.container.demux(*streams)
        while True:
            try:
                packet = next(self._demux)
            except (StopIteration, av.EOFError):
                return None
            except (av.FFmpegError, OSError) as exc:  # network sockets surface as OSError subclasses too
                self._problem = self._where("reading", exc)
                return None
            try:
                decoded = packet.decode()
                self._consecutive = 0
            except (av.FFmpegError, ValueError) as exc:
                self.decode_errors += 1
                self._consecutive += 1
                kind = str(packet.stream.type)
                self._bad_packets[kind] = self._bad_packets.get(kind, 0) + 1
                if self.first_decode_error is None:
                    self.first_decode_error = f"{kind} {self._at()}: {one_line(exc)}"
                if self._consecutive >= self.max_decode_errors:
                    self._problem = self._where(f"decoding ({self._consecutive} bad packets in a row)", exc)
                    return None
                continue
            return packet.stream.type, decoded

    def _run(self) -> None:
        av = _import_av()
        audio_conv = av.AudioResampler(format="fltp") if self.audio_stream is not None else None
        pending: collections.deque = collections.deque()
        fallback_dt = self._fallback_dt
        pace = {"wall0": None, "t0": None}
        index = 0
        while not self.stopping:
            item = self._next_decoded()
            if item is None:
                break
            kind, decoded = item
            for f in decoded:
                if kind == "video":
                    t = f.time if f.time is not None else index * fallback_dt
                    img = apply_orientation(f.to_ndarray(format="rgb24"), self._orientation(f))
                    pending.append(Frame(index=index, image=img, t=float(t), t_capture=0.0))
                    index += 1
                    self.frames_decoded = index
                    if self.first_time is None:
                        self.first_time = float(t)
                    self.last_time = float(t)
                    try:
                        self._last_frame_dur = float(f.duration * f.time_base) if f.duration else None
                    except (TypeError, ValueError, ZeroDivisionError):
                        self._last_frame_dur = None
                else:
                    self._write_audio(audio_conv.resample(f), f.time)
            if not self._release(pending, pace, final=False):
                return
        problem = self._problem
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
        if self.decode_errors and problem is None:
            which = " and ".join(f"{n} {k}" for k, n in sorted(self._bad_packets.items()))
            self.warn(f"{self.url}: {which} packet(s) could not be decoded and were skipped (first: "
                      f"{self.first_decode_error}); the file is damaged -- {_REENCODE}")
        if problem is not None:
            self.end_early(problem)
            return
        if self.audio is not None and self._resampler is None and self.frames_decoded:
            self.end_early(f"{self.url}: its audio track holds no sound (no audio decoded): the masks were computed "
                           "on silence -- pass --silent-audio to do that on purpose, or give the file with its sound")
            return
        if self.network:
            self.finish("end of stream")
            return
        short = self._truncated(fallback_dt)
        if short:
            self.end_early(f"{self.url} ended at {self.last_time - (self.start_time or 0.0):.2f} s (frame "
                           f"{self.frames_decoded}) although {short}: the file looks truncated -- use a complete copy")
            return
        self.finish("end of input")

    def _truncated(self, dt: float) -> str | None:
        """What the header promised that the file did not deliver (None: it delivered)."""
        if self.last_time is None:
            return None
        n, want = self.frames_decoded, self._expected_frames
        if want and n < want - max(2, int(0.02 * want)):  # the index lists frames the file does not hold
            return f"its index lists {want} frames"
        end = self.last_time + (self._last_frame_dur or dt)
        v0 = self._video_t0_header if self._video_t0_header is not None else (self.start_time or 0.0)
        if self._video_duration and end < v0 + self._video_duration - max(2.5 * dt, 0.1):
            return f"its video stream lasts {self._video_duration:.2f} s"
        if self.duration:
            start = self.start_time or 0.0
            if self.audio_stream is None or self._audio_expected is None:  # the picture alone
                early = self.last_time < start + self.duration - max(1.0, 3 * dt)
            else:  # both streams stop short of the header's length (one may legitimately be shorter)
                tol = max(3 * dt, 0.25)
                early = end < start + self.duration - tol and self._audio_expected < start + self.duration - tol
            if early:
                return f"its header says {self.duration:.2f} s"
        return None

    def _at(self) -> str:
        return "before the first frame" if self.last_time is None else \
            f"at {self.last_time - (self.start_time or 0.0):.2f} s (after frame {self.frames_decoded - 1})"

    def _where(self, what: str, exc) -> str:
        at = self._at()
        self._problem_detail = f"{what} failed: {one_line(exc)}"
        if self.network and ("timed out" in str(exc).lower() or isinstance(exc, TimeoutError)):
            return f"{self.url}: the stream stalled (no data for {self.read_timeout:g} s) {at} -- check the sender"
        hint = "check the sender" if self.network else f"the file is damaged: {_REENCODE}"
        return f"{self.url}: {what} failed {at}: {one_line(exc)}; stopped there -- {hint}"

    def _write_audio(self, frames, t_in) -> None:
        if self.audio is None:
            return
        for fr in frames:
            planes = fr.to_ndarray()  # fltp: [channels, samples]
            if planes.size == 0:
                continue
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
                if not self._audio_late_checked and self.first_time is not None:
                    self._audio_late_checked = True
                    self._check_late_audio(self._audio_t0, self.first_time)
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
    def measured_fps(self):
        """Frames decoded per second of media time (first frame to the end of the last one), or None."""
        n, t0, t1 = self.frames_decoded, self.first_time, self.last_time
        if n < 2 or t0 is None or t1 is None or t1 <= t0:
            return None
        span = (t1 - t0) + (self._last_frame_dur if self._last_frame_dur and self._last_frame_dur > 0 else
                            (t1 - t0) / (n - 1))
        return n / span

    def describe(self) -> dict:
        """Plain values copied while the container was open (safe at any time, also after it closed)."""
        d = super().describe()
        d.update({"input": self.url, "realtime": self.realtime, "silent_audio": self.silent_audio})
        if self.video_info:
            v = dict(self.video_info)
            measured = self.measured_fps()
            v["fps_measured"] = None if measured is None else round(measured, 4)
            if v.get("fps") is None and measured is not None:
                v["fps"] = measured  # no usable rate in the header: the decoded frames' average rate
            v["fps"] = None if v.get("fps") is None else round(float(v["fps"]), 4)
            d["video"] = v
        if self.audio_info:
            d["audio"] = dict(self.audio_info, resampled_to=16000, mono=True)
        if self.duration:
            d["duration"] = round(self.duration, 3)
        return d

    def _extra_stats(self) -> dict:
        return {"decoded": self.frames_decoded, "decode_errors": self.decode_errors,
                "undecodable_packets": dict(self._bad_packets),
                "last_time": None if self.last_time is None else round(self.last_time, 4)}
