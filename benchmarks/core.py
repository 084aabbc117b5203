"""What every benchmark shares: timing (CPU wall clock, CUDA events), percentiles, peak memory, the
environment record and the result envelope / writer.

One implementation of each, used by `autr bench model|msda|stream` and by `gpu_check.py`.

Timing:
    CPU: `time.perf_counter()` around each call, after `warmup` untimed calls.
    CUDA: a pair of `torch.cuda.Event(enable_timing=True)` around each call on the current stream, after
    `warmup` untimed calls; the events are read after one final synchronisation, so the host never waits
    inside the timed loop (the GPU time of each call, not the host's).
Percentiles: `autr.runtime.stats.StageStats` (count / mean / p50 / p90 / p99 / max, numpy's linear
interpolation), the same summary the streaming runtime reports.
Peak memory (CPU): the kernel's high-water mark of resident memory, `VmHWM` in /proc/self/status, reset at
the start of a measurement by writing 5 to /proc/self/clear_refs (Linux >= 4.0), after returning freed heap
memory to the OS (gc + glibc malloc_trim); the figure is the peak minus the resident size at the start. Where the reset is not allowed, `resource.getrusage(...).ru_maxrss`
(the process's lifetime peak) is used and the delta is only a lower bound; `method` says which.
Peak memory (GPU): `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (PyTorch's own
allocations), or the device-wide change of used memory (`torch.cuda.mem_get_info`) for ONNX Runtime /
TensorRT, which allocate outside PyTorch.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from importlib import metadata as _metadata
from pathlib import Path

__all__ = ["BenchError", "RESULTS_DIR", "utc_now", "parse_list", "time_cpu", "time_cuda", "time_fn", "summarize",
           "gemm_gflops",
           "PeakRss", "environment", "envelope", "write_result", "command_line", "slug",
           "gpu_environment"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1


class BenchError(ValueError):
    """A benchmark that cannot start (bad arguments, missing files); the CLI prints it as one line, exit 2."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def slug(text: str) -> str:
    """A file-name-safe lower-case slug: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"


def parse_list(text, choices=None, what: str = "value", cast=str) -> list:
    """'a,b' (or ['a', 'b']) -> ['a', 'b'] (order kept, duplicates dropped); unknown choices or bad numbers ->
    BenchError."""
    if not isinstance(text, str):
        text = ",".join(map(str, text))
    items = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = cast(part)
        except (TypeError, ValueError):
            raise BenchError(f"bad {what} {part!r} in {text!r}") from None
        if choices is not None and value not in choices:
            raise BenchError(f"unknown {what} {part!r}; choose from {', '.join(map(str, choices))}")
        if value not in items:
            items.append(value)
    if not items:
        raise BenchError(f"no {what} given")
    return items


def check_common(size=None, warmup: int = 0, iters: int = 1, threads=None, frames=()) -> None:
    """The checks every benchmark shares (BenchError, one line): model input size, timing loop, threads, T."""
    if size is not None and (size <= 0 or size % 32):
        raise BenchError(f"--size must be a positive multiple of 32, got {size}")
    if warmup < 0 or iters < 1:
        raise BenchError(f"--warmup must be >= 0 and --iters >= 1 (got {warmup}, {iters})")
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    for t in frames:
        if int(t) < 1:
            raise BenchError(f"--frames must be >= 1, got {t}")


# ----------------------------------------------------------------------------------------------- timing
def time_cpu(fn, warmup: int = 2, iters: int = 10, after=None) -> list:
    """Wall time of `fn()` in ms, `iters` samples after `warmup` untimed calls; `after()`, if given, runs
    after each timed call, outside the timing (e.g. to read that call's GPU times)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
        if after is not None:
            after()
    return out


def time_cuda(fn, warmup: int = 2, iters: int = 10, torch=None) -> list:
    """GPU time of `fn()` in ms with CUDA events on the current stream; read after one final synchronize."""
    if torch is None:
        import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def time_fn(fn, device: str = "cpu", warmup: int = 2, iters: int = 10) -> list:
    """`time_cuda` on a CUDA device, else `time_cpu`."""
    if str(device).startswith("cuda"):
        return time_cuda(fn, warmup, iters)
    return time_cpu(fn, warmup, iters)


def summarize(samples_ms) -> dict:
    """count / mean / p50 / p90 / p99 / max (ms) of timing samples, by the runtime's StageStats."""
    from autr.runtime.stats import StageStats

    st = StageStats()
    for v in samples_ms:
        st.add(float(v) / 1e3)
    return st.summary_ms()


def gemm_gflops(threads: int | None = None, n: int = 1024, repeats: int = 15) -> dict:
    """This machine's float32 matrix-multiply throughput, the yardstick of the compute floor: numpy's
    ``[n, n] @ [n, n]`` (BLAS sgemm), best of `repeats`, on `threads` BLAS threads (None: numpy's default).
    Measured in the same run as the rows it is compared with (hosts here differ by 3x)."""
    import numpy as np

    from autr.runtime.threads import limit_blas

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with limit_blas(threads) as limited:
        a @ b
        best = min(time_cpu(lambda: a @ b, warmup=1, iters=repeats))
    return {"gflops": round(2.0 * n ** 3 / (best / 1e3) / 1e9, 2), "n": n, "repeats": repeats, "best_ms": round(best, 3),
            "threads": threads or "numpy default", "blas": limited or "unlimited"}


# ----------------------------------------------------------------------------------------------- memory
def _status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_free_memory() -> None:
    """gc, then glibc's malloc_trim(0): memory freed by earlier work goes back to the OS, so that what a
    measurement allocates shows up as resident growth instead of reusing the freed heap."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Peak resident memory of this process while the `with` block runs (see the module docstring).

        with PeakRss() as mem:
            work()
        mem.result()  # {"peak_rss_mb", "rss_start_mb", "peak_rss_delta_mb", "method"}
    """

    def __enter__(self):
        _release_free_memory()
        self.method = "VmHWM after reset (/proc/self/clear_refs)"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "ru_maxrss (lifetime peak; delta is a lower bound)"
        self.start_kb = _status_kb("VmRSS")
        if self.start_kb is None:
            self.start_kb = self._maxrss_kb()
        return self

    @staticmethod
    def _maxrss_kb():
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak

    def __exit__(self, *exc):
        peak = _status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        self.peak_kb = peak if peak is not None else self._maxrss_kb()
        return False

    def result(self) -> dict:
        return {"peak_rss_mb": round(self.peak_kb / 1024, 1), "rss_start_mb": round(self.start_kb / 1024, 1),
                "peak_rss_delta_mb": round(max(self.peak_kb - self.start_kb, 0) / 1024, 1), "method": self.method}


# ----------------------------------------------------------------------------------------------- environment
def _dist_version(name: str):
    try:
        return _metadata.version(name)
    except Exception:
        return None


def _nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _driver_api(torch):
    """The CUDA driver API version (e.g. 12080 -> "12.8"), read through torch."""
    try:
        v = int(torch._C._cuda_getDriverVersion())
        return f"{v // 1000}.{v % 1000 // 10}"
    except Exception:
        return None


def gpu_environment(torch) -> dict | None:
    """Name, compute capability, memory, driver and CUDA versions of device 0, or None without CUDA."""
    if torch is None or not torch.cuda.is_available():
        return None
    idx = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    return {"name": props.name, "index": idx, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2 ** 30, 1), "multiprocessors": props.multi_processor_count,
            "driver": _nvidia_driver(), "cuda_driver_api": _driver_api(torch), "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}


def environment(torch=None) -> dict:
    """{"device": ..., "versions": ..., "threads": ...}: the runtime's host record plus torch, TensorRT, the GPU.

    Versions come from package metadata (nothing is imported for them); torch's thread count and the GPU are
    read from `torch` when the caller has imported it.
    """
    from autr.runtime.stats import environment as runtime_env

    env = runtime_env()
    versions = env["versions"]
    for key, dist in (("torch", "torch"), ("onnx", "onnx"), ("tensorrt", "tensorrt"), ("pycuda", "pycuda"),
                      ("matplotlib", "matplotlib"), ("timm", "timm")):
        v = _dist_version(dist)
        if v is not None:
            versions[key] = v
    if torch is not None:
        versions["torch"] = torch.__version__
        versions["torch_cuda"] = torch.version.cuda
    if "tensorrt" in sys.modules:  # the module's own version where a backend loaded it
        versions["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", versions.get("tensorrt"))
    device = env["device"]
    try:
        device["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    gpu = gpu_environment(torch)
    if gpu is not None:
        device["gpu"] = gpu
    threads = {"cpu_count": os.cpu_count()}
    if torch is not None:
        threads["torch_intra_op"] = torch.get_num_threads()
        threads["torch_inter_op"] = torch.get_num_interop_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            threads[var] = os.environ[var]
    return {"device": device, "versions": {k: v for k, v in versions.items() if v is not None}, "threads": threads}


def device_label(env: dict) -> str:
    """'NVIDIA H100 80GB HBM3' or the CPU model (with its core count)."""
    dev = env.get("device", {})
    if dev.get("gpu"):
        return dev["gpu"]["name"]
    return f"{dev.get('cpu', platform.machine())} ({dev.get('cpu_cores', '?')} cores)"


def command_line(ctx=None, argv=None) -> str:
    """The command that reproduces a run: from a click context (its path + every parameter not left at its
    default), else from `argv` / sys.argv."""
    if ctx is None:
        args = list(sys.argv if argv is None else argv)
        if args and args[0].endswith(".py"):
            args[0] = "python " + args[0]
        return " ".join([args[0]] + [shlex.quote(a) for a in args[1:]]) if args else ""
    import click

    parts = ["autr", *ctx.command_path.split()[1:]]  # the console script, whatever the program was called
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name not in ctx.params:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params[param.name]
        flag = max(param.opts, key=len)
        if param.is_flag:
            if value:
                parts.append(flag)
            continue
        values = value if param.multiple else [value]
        for v in values:
            if v is None:
                continue
            parts += [flag, shlex.quote(str(v))]
    return " ".join(parts)


def envelope(kind: str, command: str, settings: dict, env: dict) -> dict:
    """The head every result JSON starts with."""
    return {"autr_bench": SCHEMA, "kind": kind, "date": utc_now(), "command": command,
            "device": env["device"], "device_label": device_label(env), "versions": env["versions"],
            "threads": env["threads"], "settings": settings}


def run_autr(args: list, log, who: str) -> float:
    """Run ``autr ARGS`` in a child interpreter for a training driver (paper_tables, fidelity): the line is
    logged first, a failure ends the driver with the command's last output; returns the seconds it took."""
    shown = "autr " + shlex.join(args)
    log(f"$ {shown}")
    tic = time.time()
    proc = subprocess.run([sys.executable, "-m", "autr.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        sys.exit(f"{who}: `{shown}` failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return time.time() - tic


def driver_header(module: str, argv) -> dict:
    """date, hardware and the command line of a training driver's result (``python -m autr.benchmarks.X``)."""
    return {"date": utc_now(), "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU",
            "command": f"python -m autr.benchmarks.{module} " + shlex.join(argv if argv is not None else sys.argv[1:])}


def publish_table(result: dict, path, markdown) -> None:
    """Add ``markdown(result)`` to the result, write it to `path` and print the table."""
    result["markdown"] = markdown(result)
    write_result(result, path)
    print(result["markdown"])
    print(f"wrote {path}")


def write_result(result: dict, path) -> Path:
    """Write JSON atomically (numpy scalars / paths / non-finite floats cleaned), by the runtime's writer."""
    from autr.runtime.pipeline import write_report

    return write_report(result, path)
