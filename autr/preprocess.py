"""Preprocessing shared by training, evaluation and the live runtime (numpy only).

This module is the single definition of what the model sees:

* **Frames** -- RGB ``uint8`` ``[H, W, 3]`` images are resized with bilinear interpolation that
  matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
  antialias=False)``, scaled to ``[0, 1]`` and normalised with the ImageNet mean / std, giving
  float32 ``[3, size, size]``.
* **Audio** -- the VGGish log-mel front end, reproducing the reference implementation
  (``tensorflow/models`` ``research/audioset/vggish``: ``mel_features.py`` and
  ``vggish_input.py``): 16 kHz mono, periodic Hann window of 400 samples (25 ms), hop of 160
  samples (10 ms), FFT length 512, STFT magnitude, 64-band HTK mel filterbank over 125--7500 Hz
  with the DC bin zeroed, ``log(mel + 0.01)``, framed into non-overlapping examples of
  96 frames x 64 bands (0.96 s each).

It must stay importable without torch, scipy or OpenCV: the streaming runtime uses it.

Timing of one VGGish example
----------------------------
An example holds 96 STFT frames. Frame ``i`` reads samples ``[160 i, 160 i + 400)``, so one example
needs ``400 + 95 * 160 = 15600`` samples (0.975 s), although consecutive examples start
``96 * 160 = 15360`` samples (0.96 s) apart. Example ``k`` of a clip therefore reads samples
``[15360 k, 15360 k + 15600)``. :func:`log_mel_window` uses the :data:`LIVE_WINDOW_SAMPLES` = 15600
samples that end at a frame's time, which is exactly the computation that produces one example
of :func:`waveform_to_examples`.

Cost
----
Both run once per live window, on the cores inference needs, so they are written to be cheap and to
start no threads: the resize precomputes its taps per (input, output) size, gathers the two source
rows and columns with ``np.take`` into per-thread buffers (fresh half-megabyte temporaries cost more
in page faults than the arithmetic) and folds the normalisation into the vertical weights; a size
that does not change is not resampled at all. The log-mel applies the mel filterbank as 17 taps per
band instead of a BLAS matrix product, which numpy's OpenBLAS would spread over every core. No
function here calls BLAS. ``python -m autr.benchmarks.preprocess_bench`` measures both against the
former straightforward code. :class:`LogMelStream` additionally reuses the STFT frames that
consecutive windows share.
"""

from __future__ import annotations

import functools
import math
import threading
from numbers import Integral, Real
from typing import Iterable, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAMPLE_RATE",
    "STFT_WINDOW_SECONDS",
    "STFT_HOP_SECONDS",
    "NUM_MEL_BINS",
    "MEL_MIN_HZ",
    "MEL_MAX_HZ",
    "LOG_OFFSET",
    "EXAMPLE_WINDOW_SECONDS",
    "EXAMPLE_HOP_SECONDS",
    "STFT_WINDOW_SAMPLES",
    "STFT_HOP_SAMPLES",
    "FFT_LENGTH",
    "NUM_SPECTROGRAM_BINS",
    "EXAMPLE_FRAMES",
    "EXAMPLE_HOP_FRAMES",
    "EXAMPLE_HOP_SAMPLES",
    "LIVE_WINDOW_SAMPLES",
    "MEL_MATRIX",
    "resize_bilinear",
    "preprocess_frame",
    "preprocess_frames",
    "denormalize",
    "periodic_hann",
    "hertz_to_mel",
    "mel_to_hertz",
    "spectrogram_to_mel_matrix",
    "resample",
    "log_mel_spectrogram",
    "waveform_to_examples",
    "log_mel_for_clip",
    "log_mel_window",
    "LogMelStream",
    "parameters",
]


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

#: ImageNet channel statistics (RGB), applied after scaling pixels to [0, 1].
IMAGENET_MEAN = _readonly(np.array([0.485, 0.456, 0.406], dtype=np.float32))
IMAGENET_STD = _readonly(np.array([0.229, 0.224, 0.225], dtype=np.float32))

#: VGGish parameters (vggish_params.py of the reference implementation).
SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96

#: Derived sizes, computed with the reference's own rounding rules.
STFT_WINDOW_SAMPLES = int(round(SAMPLE_RATE * STFT_WINDOW_SECONDS))  # 400
STFT_HOP_SAMPLES = int(round(SAMPLE_RATE * STFT_HOP_SECONDS))  # 160
FFT_LENGTH = 2 ** int(math.ceil(math.log(STFT_WINDOW_SAMPLES) / math.log(2.0)))  # 512
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1  # 257
EXAMPLE_FRAMES = int(round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_SECONDS))  # 96
EXAMPLE_HOP_FRAMES = int(round(EXAMPLE_HOP_SECONDS / STFT_HOP_SECONDS))  # 96
#: Distance between the starts of consecutive examples: 0.96 s.
EXAMPLE_HOP_SAMPLES = EXAMPLE_HOP_FRAMES * STFT_HOP_SAMPLES  # 15360
#: Samples that one example reads: 96 frames of 400 samples, 160 apart (0.975 s).
LIVE_WINDOW_SAMPLES = STFT_WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * STFT_HOP_SAMPLES  # 15600

# Resampler parameters (see :func:`resample`): the values of resampy's "kaiser_best" filter,
# which the reference VGGish input pipeline uses.
RESAMPLE_NUM_ZEROS = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_KAISER_BETA = 14.769656459379492
_RESAMPLE_CHUNK = 4096

SizeLike = Union[int, Tuple[int, int], Sequence[int]]


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _parse_size(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, Integral) and not isinstance(size, bool):
        out = (int(size), int(size))
    else:
        try:
            out = tuple(int(s) for s in size)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"size must be an int or (height, width); got {size!r}") from None
        if len(out) != 2:
            raise ValueError(f"size must be an int or (height, width); got {size!r}")
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"size must be positive; got {size!r}")
    return out  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _linear_taps(in_size: int, out_size: int):
    """Source indices and weights of 1-D linear interpolation, PyTorch ``align_corners=False``.

    Output pixel ``d`` samples the source at ``s = (d + 0.5) * in/out - 0.5``, clamped below at 0.
    It blends pixels ``floor(s)`` and ``floor(s) + 1`` (the latter clamped to the last pixel) with
    weights ``1 - (s - floor(s))`` and ``s - floor(s)``.
    """
    # PyTorch computes this in float32 for float32 tensors, as one fused multiply-add:
    # float32 scale, product and difference exact, a single rounding to float32 at the end.
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return _readonly(i0), _readonly(i1), _readonly(w0), _readonly(w1)


class _ResizePlan:
    """Everything about a bilinear resize that depends only on the sizes, computed once per
    ``(in_h, in_w, channels, out_h, out_w)`` (see :func:`_resize_plan`).

    The resize runs on the image viewed as ``[H, W * C]`` rows, in PyTorch's order: the two source
    rows of every output row are gathered (``rows``: the ``r0`` rows, then the ``r1`` rows), each is
    blended horizontally into channel-first ``[C, out_w]`` pieces (``cols0`` / ``cols1`` index a
    row's ``W * C`` values in ``(channel, column)`` order, weights ``wc0`` / ``wc1`` tiled per
    channel), then the two are blended vertically with ``wr0`` / ``wr1``. An axis whose size does
    not change has weights exactly (1, 0), so its second tap is skipped (``two_rows`` /
    ``two_cols`` false) and, when nothing moves, so is its gather.
    """

    def __init__(self, in_h: int, in_w: int, channels: int, out_h: int, out_w: int):
        self.key = (in_h, in_w, channels, out_h, out_w)
        self.in_h, self.in_w, self.channels, self.out_h, self.out_w = in_h, in_w, channels, out_h, out_w
        r0, r1, wr0, wr1 = _linear_taps(in_h, out_h)
        c0, c1, wc0, wc1 = _linear_taps(in_w, out_w)
        self.two_rows = bool(np.any(wr1 != 0))
        self.two_cols = bool(np.any(wc1 != 0))
        # rows to gather: None when the row taps are the identity (no vertical resize)
        if not self.two_rows and np.array_equal(r0, np.arange(in_h)):
            self.rows = None
        else:
            self.rows = _readonly(np.concatenate([r0, r1]) if self.two_rows else r0.copy())
        channel = np.arange(channels, dtype=np.intp)[:, None]
        self.cols0 = _readonly((c0[None, :] * channels + channel).ravel())
        self.cols1 = _readonly((c1[None, :] * channels + channel).ravel()) if self.two_cols else None
        # a horizontal identity needs no gather: a row's [W, C] values, viewed channel-first, are the result
        self.cols_identity = not self.two_cols and np.array_equal(c0, np.arange(in_w))
        self.wc0 = _readonly(np.tile(wc0, channels))
        self.wc1 = _readonly(np.tile(wc1, channels)) if self.two_cols else None
        self.wr0, self.wr1 = wr0, wr1


@functools.lru_cache(maxsize=32)
def _resize_plan(in_h: int, in_w: int, channels: int, out_h: int, out_w: int) -> _ResizePlan:
    return _ResizePlan(in_h, in_w, channels, out_h, out_w)


@functools.lru_cache(maxsize=32)
def _frame_weights(in_h: int, out_h: int):
    """Vertical weights with the normalisation folded in, and the bias, for :func:`preprocess_frame`.

    ``(x / 255 - mean) / std`` is ``x * s + b`` with ``s = 1 / (255 std)`` and ``b = -mean / std`` per
    channel, so the vertical blend uses ``wr * s`` ([3, out_h, 1]) and ``b`` ([3, 1, 1]) is added last.
    """
    _, _, wr0, wr1 = _linear_taps(in_h, out_h)
    std = IMAGENET_STD.astype(np.float64)
    s = (1.0 / (255.0 * std))[:, None]
    wv0 = (wr0.astype(np.float64)[None, :] * s).astype(np.float32)[:, :, None]
    wv1 = (wr1.astype(np.float64)[None, :] * s).astype(np.float32)[:, :, None]
    bias = (-IMAGENET_MEAN.astype(np.float64) / std).astype(np.float32)[:, None, None]
    return _readonly(wv0), _readonly(wv1), _readonly(bias)


_SCRATCH = threading.local()
_SCRATCH_ENTRIES = 4


def _scratch(key, make):
    """Per-thread work buffers, reused across calls of the same shape (a fresh half-megabyte
    temporary per call costs more in page faults than the arithmetic on it)."""
    store = getattr(_SCRATCH, "buffers", None)
    if store is None:
        store = _SCRATCH.buffers = {}
    bufs = store.pop(key, None)
    if bufs is None:
        bufs = make()
        while len(store) >= _SCRATCH_ENTRIES:
            store.pop(next(iter(store)))
    store[key] = bufs  # most recently used last
    return bufs


def _bilinear_chw(arr: np.ndarray, plan: _ResizePlan, wv0: np.ndarray, wv1: np.ndarray, bias, out: np.ndarray):
    """Resize ``arr`` (C-contiguous ``[H, W, C]``) into ``out`` (float32 ``[C, out_h, out_w]``).

    ``out = wv0 * top + wv1 * bottom (+ bias)``, where ``top`` / ``bottom`` are the horizontally
    blended source rows ``wc0 * x[r, c0] + wc1 * x[r, c1]`` in float32, and ``wv0`` / ``wv1`` the
    vertical weights broadcast as ``[C or 1, out_h, 1]`` (the normalisation scale may be folded in).
    """
    oh, ow, ch = plan.out_h, plan.out_w, plan.channels
    rows_in = arr.reshape(plan.in_h, plan.in_w * ch)
    n_rows = oh * (2 if plan.two_rows else 1)

    def make():
        b = {}
        if plan.rows is not None:
            b["rows"] = np.empty((n_rows, plan.in_w * ch), arr.dtype)
        if not plan.cols_identity:
            b["g"] = np.empty((n_rows, ch * ow), arr.dtype)
            b["h"] = np.empty((n_rows, ch * ow), np.float32)
            if plan.two_cols:
                b["h1"] = np.empty((n_rows, ch * ow), np.float32)
        if plan.two_rows:
            b["v"] = np.empty((ch, oh, ow), np.float32)
        return b

    bufs = _scratch((plan.key, arr.dtype.str), make)
    if plan.rows is None:
        rows = rows_in
    else:
        rows = np.take(rows_in, plan.rows, axis=0, out=bufs["rows"], mode="clip")
    if plan.cols_identity:
        # weights are exactly 1: the rows themselves, channel-first (cast in the vertical blend)
        hv = rows.reshape(n_rows, ow, ch).transpose(2, 0, 1)
    else:
        g, h = bufs["g"], bufs["h"]
        np.multiply(np.take(rows, plan.cols0, axis=1, out=g, mode="clip"), plan.wc0, out=h, casting="same_kind")
        if plan.two_cols:
            h1 = bufs["h1"]
            np.multiply(np.take(rows, plan.cols1, axis=1, out=g, mode="clip"), plan.wc1, out=h1, casting="same_kind")
            h += h1
        hv = h.reshape(n_rows, ch, ow).transpose(1, 0, 2)
    np.multiply(hv[:, :oh], wv0, out=out, casting="same_kind")
    if plan.two_rows:
        v = bufs["v"]
        np.multiply(hv[:, oh:], wv1, out=v, casting="same_kind")
        out += v
    if bias is not None:
        out += bias
    return out


def resize_bilinear(img: np.ndarray, size: SizeLike) -> np.ndarray:
    """Resize an image with bilinear interpolation, as PyTorch does without antialiasing.

    The result equals ``torch.nn.functional.interpolate(x, size, mode="bilinear",
    align_corners=False, antialias=False)`` on the same values (up to float32 rounding).

    Args:
        img: ``[H, W]`` or ``[H, W, C]`` array, ``uint8`` or any real dtype.
        size: output ``(height, width)``, or one int for a square output.

    Returns:
        float32 array ``[h, w]`` or ``[h, w, C]``. Values are not rounded or clipped, so a
        ``uint8`` input gives floats on the 0..255 scale.
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape [H, W] or [H, W, C]; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot resize an empty image of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"expected a real-valued image; got dtype {arr.dtype}")
    out_h, out_w = _parse_size(size)
    hwc = np.ascontiguousarray(arr if arr.ndim == 3 else arr[:, :, None])
    if hwc.shape[2] == 0:
        return np.zeros((out_h, out_w, 0), dtype=np.float32)
    plan = _resize_plan(hwc.shape[0], hwc.shape[1], hwc.shape[2], out_h, out_w)
    chw = np.empty((hwc.shape[2], out_h, out_w), dtype=np.float32)
    _bilinear_chw(hwc, plan, plan.wr0[None, :, None], plan.wr1[None, :, None], None, chw)
    if arr.ndim == 2:
        return chw[0]
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def preprocess_frame(frame_rgb_uint8: np.ndarray, size: SizeLike = 224, out: np.ndarray = None) -> np.ndarray:
    """Turn one RGB ``uint8`` frame into the model's input.

    Steps: bilinear resize (:func:`resize_bilinear`, no rounding back to ``uint8``), division by
    255, then ``(x - IMAGENET_MEAN) / IMAGENET_STD`` per channel. The normalisation is folded into
    the vertical interpolation weights (``x * s + b`` per channel), which changes the result by no
    more than float32 rounding.

    Args:
        frame_rgb_uint8: ``[H, W, 3]`` ``uint8`` array in RGB order (convert OpenCV's BGR first).
        size: output side length, or ``(height, width)``.
        out: optional C-contiguous float32 ``[3, height, width]`` array to write into (a slot of a
            batch, or a buffer the caller reuses); it is returned.

    Returns:
        C-contiguous float32 ``[3, height, width]``.
    """
    arr = np.asarray(frame_rgb_uint8)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB frame; got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB frame of shape [H, W, 3]; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot resize an empty image of shape {arr.shape}")
    out_h, out_w = _parse_size(size)
    if out is None:
        out = np.empty((3, out_h, out_w), dtype=np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, out_h, out_w)
              and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {(3, out_h, out_w)}")
    plan = _resize_plan(arr.shape[0], arr.shape[1], 3, out_h, out_w)
    wv0, wv1, bias = _frame_weights(arr.shape[0], out_h)
    return _bilinear_chw(np.ascontiguousarray(arr), plan, wv0, wv1, bias, out)


def preprocess_frames(frames: Union[np.ndarray, Iterable[np.ndarray]], size: SizeLike = 224) -> np.ndarray:
    """Apply :func:`preprocess_frame` to a clip.

    Args:
        frames: a ``[T, H, W, 3]`` ``uint8`` array, or a sequence of ``[H, W, 3]`` ``uint8``
            frames (their sizes may differ).
        size: output side length, or ``(height, width)``.

    Returns:
        float32 ``[T, 3, height, width]``.
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"expected frames of shape [T, H, W, 3]; got shape {frames.shape}")
        items = list(frames)
    else:
        items = list(frames)
    if not items:
        raise ValueError("expected at least one frame; got none")
    out_h, out_w = _parse_size(size)
    out = np.empty((len(items), 3, out_h, out_w), dtype=np.float32)
    for t, frame in enumerate(items):
        preprocess_frame(frame, (out_h, out_w), out=out[t])
    return out


def denormalize(x: np.ndarray) -> np.ndarray:
    """Invert the ImageNet normalisation for display.

    Args:
        x: float ``[3, H, W]`` or ``[T, 3, H, W]`` as produced by :func:`preprocess_frame`.

    Returns:
        ``uint8`` RGB ``[H, W, 3]`` or ``[T, H, W, 3]`` (values clipped to 0..255 and rounded).
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim not in (3, 4) or arr.shape[-3] != 3:
        raise ValueError(f"expected [3, H, W] or [T, 3, H, W]; got shape {arr.shape}")
    rgb = arr * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    rgb = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(rgb, -3, -1))


def parameters() -> dict:
    """Every preprocessing constant, as JSON: what an exported model records in its sidecar, and what the
    runtime checks an artifact against before it feeds it."""
    return {
        "frames": {"layout": "[T, 3, H, W]", "color": "RGB", "resize": "bilinear (autr.preprocess.resize_bilinear)",
                   "scale": 1.0 / 255.0, "mean": [float(v) for v in IMAGENET_MEAN],
                   "std": [float(v) for v in IMAGENET_STD]},
        "audio": {"layout": "[T, 1, 96, 64]", "sample_rate": SAMPLE_RATE,
                  "stft_window_seconds": STFT_WINDOW_SECONDS, "stft_hop_seconds": STFT_HOP_SECONDS,
                  "stft_window_samples": STFT_WINDOW_SAMPLES, "stft_hop_samples": STFT_HOP_SAMPLES,
                  "fft_length": FFT_LENGTH, "num_mel_bins": NUM_MEL_BINS, "mel_min_hz": MEL_MIN_HZ,
                  "mel_max_hz": MEL_MAX_HZ, "log_offset": LOG_OFFSET,
                  "example_window_seconds": EXAMPLE_WINDOW_SECONDS,
                  "example_hop_seconds": EXAMPLE_HOP_SECONDS, "example_frames": EXAMPLE_FRAMES,
                  "live_window_samples": LIVE_WINDOW_SAMPLES},
    }


# --------------------------------------------------------------------------------------------
# VGGish log-mel
# --------------------------------------------------------------------------------------------


def periodic_hann(window_length: int) -> np.ndarray:
    """Periodic Hann window, ``0.5 - 0.5 cos(2 pi n / N)`` for ``n = 0 .. N-1`` (float64).

    This is one full period of a period-``N`` raised cosine ("periodic" in Matlab's terms), not
    the symmetric window of ``np.hanning``.
    """
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / window_length * np.arange(window_length))


def hertz_to_mel(frequencies_hertz):
    """HTK mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hertz, dtype=np.float64) / 700.0)


def mel_to_hertz(mel):
    """Inverse of :func:`hertz_to_mel`."""
    return 700.0 * (np.exp(np.asarray(mel, dtype=np.float64) / 1127.0) - 1.0)


def spectrogram_to_mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = NUM_SPECTROGRAM_BINS,
    audio_sample_rate: int = SAMPLE_RATE,
    lower_edge_hertz: float = MEL_MIN_HZ,
    upper_edge_hertz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """Mel filterbank ``A`` such that ``mel = spectrogram @ A``; shape ``[bins, num_mel_bins]``.

    Built as the reference VGGish does: spectrogram bin ``k`` sits at ``linspace(0, nyquist,
    bins)[k]`` Hz; ``num_mel_bins + 2`` band edges are equally spaced on the HTK mel scale between
    the two edge frequencies; band ``i`` is a triangle, linear in *mel*, rising from edge ``i``
    to 1 at edge ``i + 1`` and falling to 0 at edge ``i + 2``; the DC row is set to zero.
    """
    nyquist = audio_sample_rate / 2.0
    if lower_edge_hertz < 0.0:
        raise ValueError(f"lower_edge_hertz {lower_edge_hertz:.1f} must be >= 0")
    if lower_edge_hertz >= upper_edge_hertz:
        raise ValueError(f"lower_edge_hertz {lower_edge_hertz:.1f} >= upper_edge_hertz {upper_edge_hertz:.1f}")
    if upper_edge_hertz > nyquist:
        raise ValueError(f"upper_edge_hertz {upper_edge_hertz:.1f} is greater than Nyquist {nyquist:.1f}")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))[:, None]
    edges = np.linspace(hertz_to_mel(lower_edge_hertz), hertz_to_mel(upper_edge_hertz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    matrix = np.maximum(0.0, np.minimum(rising, falling))
    matrix[0, :] = 0.0  # HTK excludes the DC bin
    return matrix


#: The VGGish filterbank, float64 ``[257, 64]`` (read-only).
MEL_MATRIX = _readonly(spectrogram_to_mel_matrix())
_HANN = _readonly(periodic_hann(STFT_WINDOW_SAMPLES))


def _sparse_filterbank(matrix: np.ndarray):
    """The filterbank as per-band taps: ``mel[:, b] = sum_j spectrum[:, lo + taps[j, b]] * weights[j, b]``.

    Each triangle spans a few spectrogram bins (1 to 17 for VGGish), so the projection is a small gather,
    a product and a sum over ``j`` instead of a ``[frames, 257] @ [257, 64]`` matrix product. Bands
    with fewer taps are padded with weight 0 (adding ``0 * x`` changes no sum). Every frame's row is
    computed on its own, in a fixed order, so a frame's log-mel does not depend on how many frames are
    computed together (a BLAS product may block rows differently; so may ``np.einsum``, which takes
    another path for a single row), and no BLAS thread pool is woken: numpy's OpenBLAS runs a matrix
    product of this size on all cores, competing with inference for them.

    Returns ``(lo, hi, taps, weights)``: the nonzero bins lie in ``[lo, hi)``; ``taps`` (``intp``,
    relative to ``lo``) and ``weights`` (float64) are ``[width, bands]``.
    """
    used = np.flatnonzero(np.any(matrix != 0, axis=1))
    lo, hi = int(used[0]), int(used[-1]) + 1
    per_band = [np.flatnonzero(matrix[:, b]) for b in range(matrix.shape[1])]
    width = max(len(bins) for bins in per_band)
    taps = np.zeros((width, matrix.shape[1]), dtype=np.intp)
    weights = np.zeros((width, matrix.shape[1]), dtype=np.float64)
    for b, bins in enumerate(per_band):
        taps[: len(bins), b] = bins - lo
        weights[: len(bins), b] = matrix[bins, b]
    return lo, hi, _readonly(taps), _readonly(weights)


_MEL_LO, _MEL_HI, _MEL_TAPS, _MEL_WEIGHTS = _sparse_filterbank(MEL_MATRIX)
# Frames per block in _log_mel_frames: bounds the temporaries of a long clip (the result does not depend on it).
_LOG_MEL_BLOCK = 512


def _log_mel_frames(frames: np.ndarray) -> np.ndarray:
    """Log-mel rows of STFT frames: float64 ``[n, 400]`` samples -> float64 ``[n, 64]``.

    Periodic Hann window, zero-padded 512-point real FFT, magnitude, mel projection
    (:func:`_sparse_filterbank`), ``log(mel + LOG_OFFSET)``. Row ``i`` of the result depends only on row
    ``i`` of ``frames``, bit for bit, whatever ``n`` is (tested), which is what lets
    :class:`LogMelStream` reuse rows of an earlier window.
    """
    n = frames.shape[0]
    out = np.empty((n, NUM_MEL_BINS), dtype=np.float64)
    for start in range(0, n, _LOG_MEL_BLOCK):
        block = frames[start:start + _LOG_MEL_BLOCK]
        m = block.shape[0]
        if m == EXAMPLE_FRAMES:  # the live window: reuse one zero-padded buffer per thread
            padded = _scratch(("stft", m), lambda: np.zeros((m, FFT_LENGTH), dtype=np.float64))
        else:
            padded = np.zeros((m, FFT_LENGTH), dtype=np.float64)
        np.multiply(block, _HANN, out=padded[:, :STFT_WINDOW_SAMPLES])  # samples 400..511 stay zero
        magnitude = np.abs(np.fft.rfft(padded)[:, _MEL_LO:_MEL_HI])
        products = magnitude[:, _MEL_TAPS]  # [m, width, 64]
        products *= _MEL_WEIGHTS
        mel = np.sum(products, axis=1, out=out[start:start + m])
        mel += LOG_OFFSET
        np.log(mel, out=mel)
    return out


def _check_rate(sample_rate, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Real):
        raise ValueError(f"{name} must be a positive integer number of Hz; got {sample_rate!r}")
    if not math.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"{name} must be a positive integer number of Hz; got {sample_rate!r}")
    return int(sample_rate)


def _to_float_mono(wav) -> np.ndarray:
    """Validate a waveform and return it as 1-D float64.

    Integer samples are scaled to [-1, 1): signed ``intN`` divided by ``2**(N-1)`` (int16 / 32768,
    as the reference ``wavfile_to_examples``), unsigned ``uintN`` centred at ``2**(N-1)`` first
    (8-bit WAV convention). Float samples are used as they are. Two-dimensional input is
    ``[samples, channels]`` and is averaged over channels, as the reference does.
    """
    x = np.asarray(wav)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"audio must hold real numbers or integer PCM samples; got dtype {x.dtype}")
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be [samples] or [samples, channels]; got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"audio is empty (shape {x.shape})")
    if x.ndim == 2 and x.shape[1] > x.shape[0]:
        raise ValueError(
            f"audio must be [samples, channels]; got shape {x.shape}, which looks channels-first "
            "(pass wav.T)"
        )
    if np.issubdtype(x.dtype, np.signedinteger):
        x = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    elif np.issubdtype(x.dtype, np.unsignedinteger):
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        x = (x.astype(np.float64) - half) / half
    else:
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("audio contains NaN or infinite samples")
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x


@functools.lru_cache(maxsize=16)
def _resample_filter(up: int, down: int):
    """Polyphase table of the Kaiser-windowed sinc for a rate change of ``up / down``.

    Row ``p`` holds the ``2K`` taps used by output samples whose source position has the
    fractional part ``p / up``; every row sums to one (unit gain at DC).
    """
    scale = min(1.0, up / down)
    cutoff = RESAMPLE_ROLLOFF * scale  # as a fraction of the input Nyquist
    half_width = RESAMPLE_NUM_ZEROS / scale  # in input samples
    k = int(math.ceil(half_width))
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    # Tap j of an output at source position t = base + frac reads input sample base - k + 1 + j,
    # which lies t - (base - k + 1 + j) = frac + k - 1 - j samples before t.
    dist = frac + (k - 1 - np.arange(2 * k, dtype=np.float64))[None, :]
    u = dist / half_width
    inside = np.abs(u) <= 1.0
    window = np.where(inside, np.i0(RESAMPLE_KAISER_BETA * np.sqrt(np.clip(1.0 - u * u, 0.0, None))), 0.0)
    window /= np.i0(RESAMPLE_KAISER_BETA)
    taps = cutoff * np.sinc(cutoff * dist) * window
    taps /= taps.sum(axis=1, keepdims=True)
    return k, _readonly(taps)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a mono signal (numpy only).

    Method: windowed-sinc interpolation evaluated as an exact rational polyphase filter. With
    ``g = gcd(orig_sr, target_sr)``, output sample ``n`` is taken at input position
    ``n * (orig_sr / g) / (target_sr / g)``; it is a weighted sum of the input samples within
    ``RESAMPLE_NUM_ZEROS`` sample periods of the lower of the two rates on either side, the
    weights being a sinc low-pass with cutoff ``RESAMPLE_ROLLOFF * min(orig_sr, target_sr) / 2``
    Hz, tapered by a Kaiser window (``beta = RESAMPLE_KAISER_BETA``) spanning that interval and
    normalised to unit DC gain. Samples beyond either
    end count as zeros. The output has ``floor(len(wav) * target_sr / orig_sr)`` samples, the
    length convention of ``resampy``, which the reference ``vggish_input`` calls.

    The filter constants are those of resampy's classic ``kaiser_best`` filter (64 zero
    crossings, roll-off 0.9475937, Kaiser beta 14.7696566). Recent resampy releases (0.4.3 was
    checked) ship a retuned ``kaiser_best`` with 50 zeros, roll-off 0.917, beta 12.98, so "the
    reference" depends on the installed resampy. resampy reads its filter from a table with linear interpolation; this
    function evaluates the same filter exactly. Against resampy with these constants the
    outputs agree to about 3e-3 (table precision 2**9) or 4e-5 (table precision 2**14) on
    downsampling and to 3e-8 on upsampling. AVSBench itself never resamples here: its WAV
    files are written at 16 kHz. Measured response, 48 kHz -> 16 kHz: flat (< 0.01 dB) to
    7 kHz, -1.1 dB at 7.4 kHz, below -145 dB from 8.3 kHz.

    Args:
        wav: 1-D float or integer-PCM samples.
        orig_sr: rate of ``wav`` in Hz.
        target_sr: wanted rate in Hz.

    Returns:
        float64 1-D array.
    """
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal; got shape {x.shape}")
    x = _to_float_mono(x)
    orig = _check_rate(orig_sr, "orig_sr")
    target = _check_rate(target_sr, "target_sr")
    if orig == target:
        return x.copy()
    g = math.gcd(orig, target)
    up, down = target // g, orig // g
    n_out = (x.shape[0] * up) // down
    if n_out == 0:
        return np.zeros(0, dtype=np.float64)
    k, taps = _resample_filter(up, down)
    padded = np.concatenate([np.zeros(k), x, np.zeros(k + 1)])
    offsets = np.arange(1, 2 * k + 1, dtype=np.int64)[None, :]
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        pos = np.arange(start, min(start + _RESAMPLE_CHUNK, n_out), dtype=np.int64) * down
        base, phase = np.divmod(pos, up)
        out[start:start + pos.shape[0]] = np.einsum("ij,ij->i", taps[phase], padded[base[:, None] + offsets])
    return out


def log_mel_spectrogram(wav_16k: np.ndarray) -> np.ndarray:
    """VGGish log-mel spectrogram of a 1-D float signal at 16 kHz: float64 ``[frames, 64]``.

    Frame ``i`` covers samples ``[160 i, 160 i + 400)``; only complete frames are kept (fewer than
    400 samples give zero frames), as the reference's ``frame`` does without padding.
    """
    x = np.asarray(wav_16k, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal; got shape {x.shape}")
    if x.shape[0] < STFT_WINDOW_SAMPLES:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float64)
    return _log_mel_frames(_stft_frames(x))


def _stft_frames(x: np.ndarray) -> np.ndarray:
    """Frame ``i`` = samples ``[160 i, 160 i + 400)`` of a 1-D float64 signal (at least 400 samples), as a
    read-only view ``[n, 400]`` (what ``sliding_window_view(x, 400)[::160]`` gives, built directly: this
    runs once per live window)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    n = 1 + (x.shape[0] - STFT_WINDOW_SAMPLES) // STFT_HOP_SAMPLES
    frames = np.ndarray((n, STFT_WINDOW_SAMPLES), dtype=np.float64, buffer=x,
                        strides=(STFT_HOP_SAMPLES * x.itemsize, x.itemsize))
    frames.flags.writeable = False
    return frames


def _frame_examples(log_mel: np.ndarray) -> np.ndarray:
    """Cut ``[frames, 64]`` into complete, non-overlapping ``[N, 96, 64]`` examples (float32)."""
    n = 0
    if log_mel.shape[0] >= EXAMPLE_FRAMES:
        n = 1 + (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_HOP_FRAMES
    # Window == hop, so the examples are consecutive row blocks.
    return log_mel[: n * EXAMPLE_FRAMES].reshape(n, EXAMPLE_FRAMES, NUM_MEL_BINS).astype(np.float32)


def waveform_to_examples(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """VGGish examples of a waveform, as ``vggish_input.waveform_to_examples``.

    Args:
        wav: ``[samples]`` or ``[samples, channels]``; float (nominally in [-1, 1]) or integer PCM
            (int16 is divided by 32768). Channels are averaged.
        sample_rate: rate of ``wav`` in Hz; other rates than 16 kHz are converted with
            :func:`resample`.

    Returns:
        float32 ``[N, 96, 64]``; example ``k`` covers 16 kHz samples ``[15360 k, 15360 k + 15600)``.
        ``N = 0`` when the audio is shorter than 0.975 s.

    Raises:
        ValueError: empty audio, non-finite samples, bad shape or dtype, bad sample rate.
    """
    rate = _check_rate(sample_rate)
    x = _to_float_mono(wav)
    if rate != SAMPLE_RATE:
        x = resample(x, rate, SAMPLE_RATE)
    return _frame_examples(log_mel_spectrogram(x))


def log_mel_for_clip(wav: np.ndarray, sample_rate: int, n_frames: int) -> np.ndarray:
    """Per-frame log-mel of a clip, following AVSBench's preprocessing.

    AVSBench computes the VGGish examples of a whole clip, one per (0.96 s) second, and when a
    clip yields fewer examples than it has frames it repeats the last example. Surplus examples
    are dropped here (AVSBench never meets them).

    Args:
        wav: clip audio, as for :func:`waveform_to_examples`.
        sample_rate: rate of ``wav`` in Hz.
        n_frames: number of video frames ``T`` of the clip.

    Returns:
        float32 ``[n_frames, 1, 96, 64]``.

    Raises:
        ValueError: as :func:`waveform_to_examples`, and when the audio is too short for a single
            example (under 0.975 s), since there is then nothing to repeat.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, Integral) or n_frames <= 0:
        raise ValueError(f"n_frames must be a positive integer; got {n_frames!r}")
    examples = waveform_to_examples(wav, sample_rate)
    if examples.shape[0] == 0:
        raise ValueError(
            f"audio is too short for one VGGish example: need at least {LIVE_WINDOW_SAMPLES} samples "
            f"at {SAMPLE_RATE} Hz ({LIVE_WINDOW_SAMPLES / SAMPLE_RATE:.3f} s)"
        )
    if examples.shape[0] < n_frames:
        pad = np.repeat(examples[-1:], n_frames - examples.shape[0], axis=0)
        examples = np.concatenate([examples, pad], axis=0)
    return np.ascontiguousarray(examples[:n_frames, None])


def _live_samples(wav_window_16k) -> np.ndarray:
    """The :data:`LIVE_WINDOW_SAMPLES` float64 samples that :func:`log_mel_window` transforms."""
    x = np.asarray(wav_window_16k)
    if x.size == 0:
        return np.zeros(LIVE_WINDOW_SAMPLES, dtype=np.float64)
    x = _to_float_mono(x)
    if x.shape[0] >= LIVE_WINDOW_SAMPLES:
        return x[-LIVE_WINDOW_SAMPLES:]
    return np.concatenate([np.zeros(LIVE_WINDOW_SAMPLES - x.shape[0]), x])


def log_mel_window(wav_window_16k: np.ndarray) -> np.ndarray:
    """Log-mel of the audio ending at a frame's time, for the live runtime.

    Uses the last :data:`LIVE_WINDOW_SAMPLES` (15600) samples of the input -- the 96 STFT frames
    whose hops span the 0.96 s before the frame. A shorter input (a stream that has just started,
    or a caller that passes exactly 0.96 s = 15360 samples) is padded with zeros on the left,
    i.e. treated as preceded by silence; an empty input gives the log-mel of silence. On a
    window aligned with example ``k`` of a clip it returns exactly that example of
    :func:`waveform_to_examples`. :class:`LogMelStream` gives the same results for a stream of
    overlapping windows, computing only the STFT frames that are new.

    Args:
        wav_window_16k: ``[samples]`` or ``[samples, channels]`` at 16 kHz, float or integer PCM.

    Returns:
        float32 ``[1, 96, 64]``.
    """
    return _log_mel_frames(_stft_frames(_live_samples(wav_window_16k)))[None].astype(np.float32)


class LogMelStream:
    """:func:`log_mel_window` for the consecutive windows of one live stream, reusing STFT frames.

    Consecutive windows overlap: when a window ends ``k`` STFT hops (``k * 160`` samples) after the
    previous one, its frames ``0 .. 95 - k`` read the samples of the previous window's frames
    ``k .. 95``. Calling the instance with each new window returns exactly what
    :func:`log_mel_window` returns for it (bit for bit, tested), but copies the log-mel rows of
    frames whose 400 samples are bit-identical to those of a frame of the previous window and
    computes only the others. Nothing is assumed about timing: the shift is found from the samples
    (the candidates are the hop-aligned positions of the previous window holding the new window's
    first sample, at most three are checked) and every reused frame is compared sample by sample.
    Frames that differ (e.g. the newest samples of a resampled stream, recomputed once more input
    has arrived) are recomputed.

    The saving depends on the frame rate: a video frame every 1/25 s moves the window by 640
    samples = 4 hops, so 92 of 96 frames are reused; at 10, 20 or 50 fps likewise. At 15 or 30 fps
    the shift (1066.7 or 533.3 samples) is never a whole number of hops, nothing can be reused, and
    the cost is that of :func:`log_mel_window` plus the comparison (~0.02 ms).

    Not thread-safe: use one instance per stream, from one thread. ``frames_computed`` and
    ``frames_reused`` count STFT frames since construction (or :meth:`reset`).
    """

    _MAX_CANDIDATES = 3

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the previous window (e.g. after a gap in the stream)."""
        self._bits = None  # int64 view of the previous window's float64 samples
        self._rows = None  # its float64 log-mel rows [96, 64]
        self._shift = None  # hop shift found last time, tried first
        self.frames_computed = 0
        self.frames_reused = 0

    def __call__(self, wav_window_16k: np.ndarray) -> np.ndarray:
        """The log-mel of one window, as :func:`log_mel_window` (float32 ``[1, 96, 64]``)."""
        x = np.array(_live_samples(wav_window_16k), dtype=np.float64, copy=True)
        bits = x.view(np.int64)
        frames = _stft_frames(x)
        rows = np.empty((EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=np.float64)
        match = self._match(bits)
        if match is None:
            rows[:] = _log_mel_frames(frames)
            self.frames_computed += EXAMPLE_FRAMES
        else:
            k, same = match  # new frame i (i < 96 - k) equals previous frame i + k where same[i]
            reuse = np.flatnonzero(same)
            rows[reuse] = self._rows[reuse + k]
            todo = np.ones(EXAMPLE_FRAMES, dtype=bool)
            todo[reuse] = False  # and the last k frames are new samples
            todo = np.flatnonzero(todo)
            if todo.size:
                rows[todo] = _log_mel_frames(frames[todo])
            self.frames_reused += reuse.size
            self.frames_computed += todo.size
        self._bits, self._rows = bits, rows
        return rows[None].astype(np.float32)

    def _match(self, bits: np.ndarray):
        """``(k, same)`` for the best hop shift ``k`` of the new window against the previous one, where
        ``same[i]`` says frame ``i`` of the new window has the same samples as frame ``i + k`` of the
        previous; None when no frame can be reused."""
        prev = self._bits
        if prev is None:
            return None
        hop, width = STFT_HOP_SAMPLES, STFT_WINDOW_SAMPLES
        starts = prev[: (EXAMPLE_FRAMES - 1) * hop + 1: hop]  # first sample of previous frames 0..95
        candidates = [int(k) for k in np.flatnonzero(starts == bits[0])]
        if self._shift in candidates:  # a steady frame rate keeps its shift
            candidates.remove(self._shift)
            candidates.insert(0, self._shift)
        best = None
        for k in candidates[: self._MAX_CANDIDATES]:
            s = k * hop
            differs = np.empty(LIVE_WINDOW_SAMPLES - s + 1, dtype=np.int64)
            differs[0] = 0
            np.cumsum(bits[: LIVE_WINDOW_SAMPLES - s] != prev[s:], out=differs[1:])
            first = np.arange(EXAMPLE_FRAMES - k) * hop
            same = differs[first + width] == differs[first]
            count = int(np.count_nonzero(same))
            if best is None or count > best[2]:
                best = (k, same, count)
            if count == EXAMPLE_FRAMES - k:
                break
        if best is None or best[2] == 0:
            return None
        self._shift = best[0]
        return best[0], best[1]
