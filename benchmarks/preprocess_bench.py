"""Preprocessing cost per live window: :mod:`autr.preprocess` against the straightforward implementation it
replaced, timed side by side in one run.

Run ``python -m autr.benchmarks.preprocess_bench`` (``--repeat N`` calls per case, ``--json PATH`` to keep the
numbers). It prints one table with numpy's default threading (this process) and one from a child process
started with ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1`` (single-threaded BLAS), and says
which BLAS thread pool numpy has.

Cases (what one live window costs): ``preprocess_frame`` of a 640x480 frame to 224 and to 128, of a 128x128
frame to 128 (the synthetic demo), ``log_mel_window`` of 15600 samples, and :class:`autr.preprocess.LogMelStream`
on the consecutive windows of a stream at 25 fps (windows 4 STFT hops apart, so 92 of 96 frames are reused)
and at 15 fps (never hop-aligned: nothing is reused). Each figure is the median of ``repeat`` calls after
warm-up; "before" and "after" alternate in blocks of 10 calls, so load from other processes falls on both.

The "before" functions below are the implementation :mod:`autr.preprocess` had before it was made cheap,
kept here (and only here) as the baseline: per-call fancy indexing of the four corner pixels in the input
dtype, the normalisation as three more passes and a final transposed copy; the log-mel through
``np.abs(np.fft.rfft(frames * hann, 512)) @ MEL_MATRIX``, a BLAS product that numpy's OpenBLAS spreads over
all cores. Both must agree to float32 rounding (the table's ``max |diff|``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from autr import preprocess as P

__all__ = ["baseline_preprocess_frame", "baseline_log_mel_window", "blas_threads", "run", "format_table", "main"]

SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------------------------
# The baseline: the straightforward implementation that autr.preprocess replaced
# --------------------------------------------------------------------------------------------


def _baseline_resize(arr: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    r0, r1, wr0, wr1 = P._linear_taps(arr.shape[0], out_h)
    c0, c1, wc0, wc1 = P._linear_taps(arr.shape[1], out_w)
    wc0, wc1 = wc0[:, None], wc1[:, None]
    wr0, wr1 = wr0[:, None, None], wr1[:, None, None]
    top = arr[r0]
    bottom = arr[r1]
    top = top[:, c0].astype(np.float32) * wc0 + top[:, c1].astype(np.float32) * wc1
    bottom = bottom[:, c0].astype(np.float32) * wc0 + bottom[:, c1].astype(np.float32) * wc1
    out = top * wr0
    out += bottom * wr1
    return out


def baseline_preprocess_frame(frame_rgb_uint8: np.ndarray, size: int) -> np.ndarray:
    """The former ``preprocess_frame``: float32 ``[3, size, size]``."""
    x = _baseline_resize(np.asarray(frame_rgb_uint8), size, size)
    x /= np.float32(255.0)
    x -= P.IMAGENET_MEAN
    x /= P.IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def baseline_log_mel_window(wav_window_16k: np.ndarray) -> np.ndarray:
    """The former ``log_mel_window`` (dense BLAS filterbank product): float32 ``[1, 96, 64]``."""
    x = P._to_float_mono(np.asarray(wav_window_16k))
    if x.shape[0] >= P.LIVE_WINDOW_SAMPLES:
        x = x[-P.LIVE_WINDOW_SAMPLES:]
    else:
        x = np.concatenate([np.zeros(P.LIVE_WINDOW_SAMPLES - x.shape[0]), x])
    frames = np.lib.stride_tricks.sliding_window_view(x, P.STFT_WINDOW_SAMPLES)[::P.STFT_HOP_SAMPLES]
    spectrum = np.abs(np.fft.rfft(frames * P.periodic_hann(P.STFT_WINDOW_SAMPLES), P.FFT_LENGTH))
    return np.log(spectrum @ P.MEL_MATRIX + P.LOG_OFFSET)[None].astype(np.float32)


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


def blas_threads() -> str:
    """One line: numpy's BLAS thread pool(s), from threadpoolctl when it is installed, else the
    environment and numpy's build configuration."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        pools = [f"{p.get('internal_api')} {p.get('version')} ({p.get('threading_layer')}): "
                 f"{p.get('num_threads')} threads" for p in threadpool_info()]
        return "; ".join(pools) or "no BLAS / OpenMP thread pool loaded"
    blas = "unknown BLAS"
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - older numpy: show_config has no dict mode
        pass
    env = ", ".join(f"{k}={os.environ[k]}" for k in SINGLE_THREAD_ENV if k in os.environ) or "no thread variables set"
    return f"{blas} (threadpoolctl not installed; {env}; {os.cpu_count()} CPUs)"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _median_pair(before: Callable[[], object], after: Callable[[], object], repeat: int, block: int = 10):
    """Medians (ms) of ``repeat`` calls of each, alternating in blocks of ``block`` after 5 warm-up calls."""
    for _ in range(5):
        before()
        after()
    times = {0: [], 1: []}
    fns = (before, after)
    done = 0
    while done < repeat:
        n = min(block, repeat - done)
        for which in (0, 1):
            fn, bucket = fns[which], times[which]
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - t0)
        done += n
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)


def _stream_windows(fps: float, seconds: float, rng: np.random.Generator) -> List[np.ndarray]:
    """The 0.975 s windows ending at each video frame of a stream (float32, as the runtime's ring gives)."""
    total = int((seconds + 1.0) * P.SAMPLE_RATE)
    signal = (rng.standard_normal(total) * 0.1).astype(np.float32)
    ends = [P.LIVE_WINDOW_SAMPLES + int(round(i * P.SAMPLE_RATE / fps)) for i in range(int(seconds * fps))]
    return [signal[e - P.LIVE_WINDOW_SAMPLES:e] for e in ends]


class _Cycle:
    """Calls ``fn`` on the next window of a stream each time (wrapping around)."""

    def __init__(self, fn, windows):
        self.fn, self.windows, self.i = fn, windows, 0
        self.last = None

    def __call__(self):
        self.last = self.fn(self.windows[self.i % len(self.windows)])
        self.i += 1
        return self.last


def run(repeat: int = 200, seed: int = 0) -> dict:
    """Time every case once, before and after; returns ``{"threads": str, "rows": [...]}``."""
    rng = np.random.default_rng(seed)
    rows = []
    frame_cases = [((480, 640), 224), ((480, 640), 128), ((128, 128), 128)]
    for (h, w), size in frame_cases:
        frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ref = baseline_preprocess_frame(frame, size)
        new = P.preprocess_frame(frame, size)
        before, after = _median_pair(lambda: baseline_preprocess_frame(frame, size),
                                     lambda: P.preprocess_frame(frame, size), repeat)
        rows.append({"case": f"preprocess_frame {w}x{h} -> {size}", "before_ms": before, "after_ms": after,
                     "max_abs_diff": float(np.max(np.abs(new - ref)))})
    window = (rng.standard_normal(P.LIVE_WINDOW_SAMPLES) * 0.1).astype(np.float32)
    before, after = _median_pair(lambda: baseline_log_mel_window(window), lambda: P.log_mel_window(window), repeat)
    rows.append({"case": "log_mel_window 15600 samples", "before_ms": before, "after_ms": after,
                 "max_abs_diff": float(np.max(np.abs(P.log_mel_window(window) - baseline_log_mel_window(window))))})
    for fps in (25.0, 15.0):
        windows = _stream_windows(fps, 8.0, rng)
        stream = P.LogMelStream()
        b, a = _Cycle(baseline_log_mel_window, windows), _Cycle(stream, windows)
        before, after = _median_pair(b, a, repeat)
        # on a fresh pass over the first windows: equal to log_mel_window bit for bit, and to the baseline
        replay = P.LogMelStream()
        outs = [replay(x) for x in windows[:40]]
        exact = all(np.array_equal(y, P.log_mel_window(x)) for x, y in zip(windows[:40], outs))
        diff = max(float(np.max(np.abs(y - baseline_log_mel_window(x)))) for x, y in zip(windows[:40], outs))
        share = stream.frames_reused / max(1, stream.frames_reused + stream.frames_computed)
        rows.append({"case": f"LogMelStream {fps:g} fps ({share:.0%} frames reused)", "before_ms": before,
                     "after_ms": after, "max_abs_diff": diff, "equals_log_mel_window": bool(exact)})
    for r in rows:
        r["ratio"] = r["before_ms"] / r["after_ms"] if r["after_ms"] > 0 else float("inf")
    return {"threads": blas_threads(), "rows": rows}


def format_table(result: dict, title: str) -> str:
    lines = [f"{title} -- {result['threads']}",
             f"{'case':<44} {'before ms':>10} {'after ms':>10} {'ratio':>7} {'max |diff|':>11}"]
    for r in result["rows"]:
        lines.append(f"{r['case']:<44} {r['before_ms']:>10.3f} {r['after_ms']:>10.3f} {r['ratio']:>6.1f}x "
                     f"{r['max_abs_diff']:>11.1e}")
    return "\n".join(lines)


def _single_threaded(repeat: int, seed: int) -> dict:
    env = dict(os.environ)
    env.update({k: "1" for k in SINGLE_THREAD_ENV})
    cmd = [sys.executable, "-m", "autr.benchmarks.preprocess_bench", "--repeat", str(repeat), "--seed", str(seed),
           "--child"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"single-threaded run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autr.benchmarks.preprocess_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per case and implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-single-thread", action="store_true", help="skip the single-threaded child run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.child:
        print(json.dumps(run(args.repeat, args.seed)))
        return 0
    results = {"numpy_defaults": run(args.repeat, args.seed)}
    print(format_table(results["numpy_defaults"], "numpy defaults"))
    if not args.no_single_thread:
        results["single_threaded"] = _single_threaded(args.repeat, args.seed)
        print()
        print(format_table(results["single_threaded"], "single-threaded (" + "=".join(SINGLE_THREAD_ENV) + "=1)"))
    if args.json is not None:
        from .core import write_result

        write_result(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
