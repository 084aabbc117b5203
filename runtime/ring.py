"""The audio ring buffer: capture writes blocks, the window assembler reads the audio ending at a frame.

Writers (a sounddevice callback, a decoder thread, the synthetic scene) call :meth:`AudioRingBuffer.write`,
which only copies the block into a preallocated array under a short lock -- no allocation of note, no
averaging, no resampling, nothing that could make a real-time audio callback late. The reader
(:meth:`AudioRingBuffer.window_ending_at`) does the rest: averages channels and, when the device could not
deliver 16 kHz, resamples with :func:`autr.preprocess.resample`.

Time stamps
-----------
Samples live on a sample clock (index ``n``, 0 for the first sample ever written). Time stamps map sample
indices to the source's time axis (monotonic seconds for live devices, media seconds for files) through
*anchors* ``(n, t)``: sample ``n`` was captured at time ``t``, and later samples follow at
``1 / sample_rate`` apart. A block written with its own time stamp ``t_first`` (the capture time of its
first sample) is checked against that mapping:

* ``|error| <= resync_tolerance``: the sample clock is kept (time stamps jitter, samples do not);
* ``error > gap_threshold``: samples were lost (device overflow, network gap); the gap is filled with
  silence so that index and time stay linear, and counted in :attr:`gaps` / :attr:`gap_seconds`;
* otherwise: a new anchor is set (clock drift between the audio device and the monotonic clock), counted
  in :attr:`resyncs`.

Sample ``n`` covers the time ``[t(n), t(n) + 1/sr)``; the window ending at ``t`` holds the samples
``[n(t) - 15600, n(t))`` with ``n(t) = round(index at t)``. Samples never written (before the stream
started, after its newest sample, or overwritten because they are older than the capacity) read as zeros.
"""
from __future__ import annotations

import bisect
import math
import threading

import numpy as np

from autr.preprocess import LIVE_WINDOW_SAMPLES, RESAMPLE_NUM_ZEROS, SAMPLE_RATE, resample

__all__ = ["AudioRingBuffer"]


class AudioRingBuffer:
    """Fixed-size circular store of float32 audio ``[capacity, channels]`` with a time axis.

    Args:
        sample_rate: rate of the written samples (the device's rate; 16 kHz when it can).
        channels: channels per written frame; the reader averages them (stereo -> mono).
        capacity_seconds: how much audio is kept (the mp4 sink reads behind the live edge, so keep
            several seconds beyond the 0.975 s window).
        resync_tolerance: time-stamp error (s) below which the sample clock is trusted.
        gap_threshold: time-stamp error (s) above which the missing time is filled with silence.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = 1, capacity_seconds: float = 20.0,
                 resync_tolerance: float = 0.02, gap_threshold: float = 0.1):
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer; got {sample_rate!r}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1; got {channels}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        need = int(math.ceil(LIVE_WINDOW_SAMPLES * self.sample_rate / SAMPLE_RATE)) + 2 * self.sample_rate
        self.capacity = max(int(round(capacity_seconds * self.sample_rate)), need)
        self.resync_tolerance = float(resync_tolerance)
        self.gap_threshold = max(float(gap_threshold), self.resync_tolerance)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._written = 0
        self._anchor_n: list = []
        self._anchor_t: list = []
        self._lock = threading.Lock()
        self.finished = False  # set by a writer whose audio has ended (end of file)
        # counters
        self.blocks = 0
        self.overruns = 0  # blocks the device flagged as overflowed (samples lost before they reached us)
        self.gaps = 0
        self.gap_seconds = 0.0
        self.resyncs = 0
        self.stale_reads = 0  # windows that reached into audio already overwritten
        self.late_reads = 0  # windows that reached past the newest sample
        g = math.gcd(self.sample_rate, SAMPLE_RATE)
        self._up, self._down = SAMPLE_RATE // g, self.sample_rate // g
        self._half = int(math.ceil(RESAMPLE_NUM_ZEROS / min(1.0, self._up / self._down)))  # filter's one-sided support
        self._ctx = -(-self._half // self._down) * self._down  # context, a multiple of `down`: grids stay aligned
        # 16 kHz samples [_y16_from, _y16_from + len(_y16)) whose whole filter support was already written: a
        # live window shares all but ~1/fps s with the previous one, so each output is resampled once
        self._y16 = np.zeros(0, dtype=np.float64)
        self._y16_from = 0

    # ------------------------------------------------------------------ writer side (capture callback)

    def write(self, block, t_first: float | None = None, overflow: bool = False) -> None:
        """Copy one block of samples ``[frames]`` or ``[frames, channels]`` (float32 in [-1, 1]).

        ``t_first`` is the capture time of the block's first sample on the source's time axis (None: the
        sample clock continues; the very first block then starts at t = 0). ``overflow`` records that the
        device reported lost input before this block.
        """
        x = block if isinstance(block, np.ndarray) else np.asarray(block, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected a block of shape [frames, {self.channels}]; got {x.shape}")
        with self._lock:
            self.blocks += 1
            if overflow:
                self.overruns += 1
            if not self._anchor_t:
                self._add_anchor(self._written, 0.0 if t_first is None else float(t_first))
            elif t_first is not None:
                err = float(t_first) - self._time_at_locked(self._written)
                if err > self.gap_threshold:
                    self.gaps += 1
                    self.gap_seconds += err
                    self._zero_fill_locked(int(round(err * self.sample_rate)))
                    self._add_anchor(self._written, float(t_first))
                elif abs(err) > self.resync_tolerance:
                    self.resyncs += 1
                    self._add_anchor(self._written, float(t_first))
            self._copy_in_locked(x)

    def mark_finished(self) -> None:
        """The writer has no more audio (end of a file): readers stop waiting for more."""
        self.finished = True

    def _add_anchor(self, n: int, t: float) -> None:
        while self._anchor_t and (self._anchor_t[-1] >= t or self._anchor_n[-1] >= n):
            self._anchor_t.pop()
            self._anchor_n.pop()
        self._anchor_n.append(n)
        self._anchor_t.append(t)
        # forget anchors whose samples have all been overwritten (keep the one covering the oldest sample)
        oldest = self._written - self.capacity
        k = bisect.bisect_right(self._anchor_n, oldest) - 1
        if k > 0:
            del self._anchor_n[:k]
            del self._anchor_t[:k]

    def _copy_in_locked(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n >= self.capacity:
            self._written += n - self.capacity
            x = x[-self.capacity:]
            n = self.capacity
        start = self._written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = x[:first]
        if first < n:
            self._buf[:n - first] = x[first:]
        self._written += n

    def _zero_fill_locked(self, n: int) -> None:
        n = min(max(n, 0), self.capacity)
        start = self._written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = 0.0
        if first < n:
            self._buf[:n - first] = 0.0
        self._written += n

    # ------------------------------------------------------------------ time axis

    @property
    def written(self) -> int:
        """Samples written so far (the index of the next sample)."""
        return self._written

    def _time_at_locked(self, n: float) -> float:
        if not self._anchor_n:
            return n / self.sample_rate
        k = max(bisect.bisect_right(self._anchor_n, n) - 1, 0)
        return self._anchor_t[k] + (n - self._anchor_n[k]) / self.sample_rate

    def _position_at_locked(self, t: float) -> float:
        """Fractional sample index at time t (at the ring's own rate)."""
        if not self._anchor_t:
            return t * self.sample_rate
        k = max(bisect.bisect_right(self._anchor_t, t) - 1, 0)
        return self._anchor_n[k] + (t - self._anchor_t[k]) * self.sample_rate

    def time_at(self, n: float) -> float:
        """Time of sample index ``n`` on the source's axis."""
        with self._lock:
            return self._time_at_locked(n)

    def index_at(self, t: float) -> int:
        """The sample index at time ``t`` (rounded): the window ending at ``t`` stops just before it."""
        with self._lock:
            return int(math.floor(self._position_at_locked(t) + 0.5))

    def end_time(self) -> float | None:
        """Time just after the newest sample (None before the first write)."""
        with self._lock:
            if not self._anchor_t:
                return None
            return self._time_at_locked(self._written)

    def start_time(self) -> float | None:
        """Time of the oldest sample still held (None before the first write)."""
        with self._lock:
            if not self._anchor_t:
                return None
            return self._time_at_locked(max(self._written - self.capacity, 0))

    # ------------------------------------------------------------------ reader side

    def _read_locked(self, start: int, stop: int, mono: bool = True) -> np.ndarray:
        """Samples ``[start, stop)`` (float64), averaged to mono unless ``mono=False`` (then
        ``[n, channels]``); never-written or overwritten ones are 0."""
        shape = (max(stop - start, 0),) if mono else (max(stop - start, 0), self.channels)
        out = np.zeros(shape, dtype=np.float64)
        lo = max(start, self._written - self.capacity, 0)
        hi = min(stop, self._written)
        if hi > lo:
            a, b = lo % self.capacity, (hi - 1) % self.capacity + 1
            if a < b:
                part = self._buf[a:b]
            else:
                part = np.concatenate([self._buf[a:], self._buf[:b]])
            if not mono:
                out[lo - start:hi - start] = part
            else:
                out[lo - start:hi - start] = part[:, 0] if self.channels == 1 else part.mean(axis=1)
        return out

    def read(self, start: int, stop: int, mono: bool = True) -> np.ndarray:
        """Float32 samples ``[start, stop)`` at the ring's own rate: mono ``[n]``, or ``[n, channels]`` with
        ``mono=False`` (zeros where nothing is held)."""
        with self._lock:
            return self._read_locked(int(start), int(stop), mono).astype(np.float32)

    def window_ending_at(self, t: float, samples: int = LIVE_WINDOW_SAMPLES) -> np.ndarray:
        """The ``samples`` 16 kHz mono samples that end at time ``t`` (float32).

        The start is zero-padded when the stream began less than a window ago; samples after the newest
        one written also read as zeros (check :meth:`end_time` first -- the assembler waits for them).
        """
        with self._lock:
            pos = self._position_at_locked(float(t))
            if self.sample_rate == SAMPLE_RATE:
                end = int(math.floor(pos + 0.5))
                start = end - samples
                self._count_locked(start, end)
                return self._read_locked(start, end).astype(np.float32)
            up, down = self._up, self._down
            m_end = int(math.floor(pos * up / down + 0.5))  # exclusive end on the 16 kHz grid
            m_start = m_end - samples
            self._count_locked(int(math.floor(m_start * down / up)), int(math.ceil(m_end * down / up)))
            cached_end = self._y16_from + self._y16.shape[0]
            if not self._y16_from <= m_start <= cached_end:
                self._y16, self._y16_from, cached_end = np.zeros(0), m_start, m_start
            final_end = min(m_end, max(0, (self._written - self._half - 1) * up // down))
            if final_end > cached_end:
                self._y16 = np.concatenate([self._y16, self._resampled_locked(cached_end, final_end)])
                cached_end = final_end
            self._y16 = self._y16[m_start - self._y16_from:]  # nothing before this window is needed again
            self._y16_from = m_start
            # outputs whose support reaches past the newest sample: computed per call (zeros beyond it)
            tail = self._resampled_locked(cached_end, m_end) if m_end > cached_end else np.zeros(0)
            return np.concatenate([self._y16[:m_end - m_start], tail]).astype(np.float32)

    def _resampled_locked(self, m0: int, m1: int) -> np.ndarray:
        """16 kHz samples [m0, m1) of the ring's signal, as :func:`autr.preprocess.resample` of the whole
        signal gives them: the segment read starts on both grids and carries the filter's context."""
        up, down = self._up, self._down
        q0 = m0 // up
        s = q0 * down - self._ctx
        e = -(-m1 // up) * down + self._ctx + 1
        y = resample(self._read_locked(s, e), self.sample_rate, SAMPLE_RATE)
        m_s = q0 * up - (self._ctx // down) * up  # global 16 kHz index of the segment's first output sample
        return y[m0 - m_s:m1 - m_s]

    def _count_locked(self, start: int, end: int) -> None:
        if end > self._written:
            self.late_reads += 1
        if start >= 0 and start < self._written - self.capacity:
            self.stale_reads += 1

    def stats(self) -> dict:
        """Counters for the report."""
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "seconds_written": round(self._written / self.sample_rate, 3),
            "blocks": self.blocks,
            "overruns": self.overruns,
            "gaps": self.gaps,
            "gap_seconds": round(self.gap_seconds, 4),
            "resyncs": self.resyncs,
            "stale_windows": self.stale_reads,
            "late_windows": self.late_reads,
        }
