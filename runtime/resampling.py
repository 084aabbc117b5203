"""Block-wise resampling that reproduces :func:`autr.preprocess.resample` of the whole signal.

Decoders hand audio over in blocks; the model was trained on audio resampled by
:func:`autr.preprocess.resample` (the one definition of resampling). :class:`StreamingResampler` feeds that
same function overlapping segments whose start lies on both sample grids, so the concatenated output equals
``resample(whole_signal)`` up to float rounding, while each output sample is computed once.
"""
from __future__ import annotations

import math

import numpy as np

from autr.preprocess import RESAMPLE_NUM_ZEROS, SAMPLE_RATE, resample

__all__ = ["StreamingResampler"]


class StreamingResampler:
    """Mono float blocks at ``orig_sr`` in, mono float32 blocks at ``target_sr`` out.

    Output sample ``m`` is emitted as soon as every input sample its filter reads has arrived (about
    ``RESAMPLE_NUM_ZEROS`` periods of the lower rate later); :meth:`flush` emits the rest, treating the
    signal as followed by zeros -- exactly what :func:`resample` does at the end of a signal.
    """

    def __init__(self, orig_sr: int, target_sr: int = SAMPLE_RATE):
        self.orig_sr, self.target_sr = int(orig_sr), int(target_sr)
        g = math.gcd(self.orig_sr, self.target_sr)
        self.up, self.down = self.target_sr // g, self.orig_sr // g
        half = int(math.ceil(RESAMPLE_NUM_ZEROS / min(1.0, self.up / self.down)))
        self._half = half
        self._ctx = -(-half // self.down) * self.down  # context before a segment, a multiple of `down`
        self._hist = np.zeros(0, dtype=np.float64)  # input samples from global index _hist_start on
        self._hist_start = 0
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples emitted

    @property
    def passthrough(self) -> bool:
        return self.up == self.down

    def _segment(self, s: int, e: int) -> np.ndarray:
        """Input samples [s, e) (zeros before the signal's start)."""
        out = np.zeros(e - s, dtype=np.float64)
        lo = max(s, self._hist_start)
        out[lo - s:] = self._hist[lo - self._hist_start:e - self._hist_start]
        return out

    def _emit(self, m_stop: int, final: bool) -> np.ndarray:
        m0 = self.n_out
        if m_stop <= m0:
            return np.zeros(0, dtype=np.float32)
        q0 = m0 // self.up
        s = q0 * self.down - self._ctx
        seg = self._segment(s, self.n_in)
        y = resample(seg, self.orig_sr, self.target_sr) if seg.size else np.zeros(0)
        m_s = s * self.up // self.down  # exact: s is a multiple of `down`
        out = y[m0 - m_s:m_stop - m_s].astype(np.float32)
        self.n_out = m0 + out.shape[0]
        # keep only what the next segment can reach back to
        keep_from = (self.n_out // self.up) * self.down - self._ctx
        if keep_from > self._hist_start:
            self._hist = self._hist[keep_from - self._hist_start:]
            self._hist_start = keep_from
        return out

    def process(self, block) -> np.ndarray:
        """Add input samples; return the output samples that are now complete."""
        x = np.asarray(block, dtype=np.float64).reshape(-1)
        if self.passthrough:
            self.n_in += x.shape[0]
            self.n_out += x.shape[0]
            return x.astype(np.float32)
        self._hist = np.concatenate([self._hist, x]) if self._hist.size else x.copy()
        self.n_in += x.shape[0]
        ready = self.n_in - self._half - 1  # the last input index an output may read must exist
        if ready <= 0:
            return np.zeros(0, dtype=np.float32)
        m_stop = (ready * self.up) // self.down  # outputs m with m * down / up <= ready - 1 ... conservative
        return self._emit(m_stop, final=False)

    def flush(self) -> np.ndarray:
        """Emit the remaining output samples (the signal is taken to end here)."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        return self._emit((self.n_in * self.up) // self.down, final=True)
