"""`autr bench model`: the whole model, one row per (backend, precision, T [, variant]).

The first rows are always the research-code baseline: PyTorch eager, the reference MSDA (grid_sample),
float32, on the benchmark's device; every other row carries `speedup_vs_baseline` = baseline p50 / its p50
at the same T (equal to the throughput ratio).

Backends:
    torch -- the PyTorch model (`TorchRunner`, an `autr.runtime` Backend): eager with the reference MSDA; on
        CUDA also with the MSDA CUDA extension, eager and captured as a CUDA graph, float32 and float16
        autocast.
    ort   -- ONNX Runtime on the portable graph of an export directory (`--onnx DIR`, or exported once into a
        cache keyed by the weights' digest and the input size), through the runtime's OrtBackend; fp16 runs the
        float16 portable graph.
    trt   -- the runtime's TrtBackend on `--engine` files (their sidecar names their precision), or, without
        any, on engines built from the export by `autr.export.trt.build_engine` (cached next to it).
A row that cannot run here is kept, with `status: "skipped"` and the reason.

Each row: latency p50 / p90 / p99 / max (ms, host to host: numpy in, numpy out, including the host<->device
copies), throughput (T / p50, frames/s), peak memory (`core.PeakRss`; on CUDA also PyTorch's peak
allocation or the device-wide change of used memory), and on a GPU the GPU compute time and the copy time
separately (CUDA events / pycuda events; for ONNX Runtime's CUDA provider, wall time around
`run_with_iobinding` with device-resident inputs and the copies timed apart).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from autr.runtime.backends.base import Backend

from .core import BenchError

__all__ = ["BACKENDS", "PRECISIONS", "TorchRunner", "cached_export",
           "resolve_model_source", "run_model_bench", "format_model", "validate_model_args", "default_cache_dir"]

BACKENDS = ("torch", "ort", "openvino", "trt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# bf16 rows: OpenVINO's bfloat16 inference precision on the fp32 portable graph (CPUs with AVX-512 BF16 / AMX);
# the other backends say in their row why they have none
ORT_GRAPHS = ("portable", "fused")  # the portable graph (GridSample MSDA) and the plugin graph + custom-op library


def default_cache_dir() -> Path:
    return Path(os.environ.get("AUTR_BENCH_CACHE") or Path.home() / ".cache" / "autr" / "bench")


# ----------------------------------------------------------------------------------------------- arguments
def validate_model_args(backends, precisions, frames, onnx=None, engines=(), checkpoint=None, preset=None,
                        size=None, warmup: int = 2, iters: int = 10, threads=None, rounds: int = 1) -> tuple:
    """Everything that can be refused before torch is imported (BenchError, one line). Returns the
    (backends, precisions, frames) lists, parsed from "a,b" text or checked as given."""
    from autr.export.onnx_export import SIDECAR_FILE

    from .core import check_common, parse_list

    backends = parse_list(backends, BACKENDS, "backend")
    precisions = parse_list(precisions, PRECISIONS, "precision")
    frames = parse_list(frames, None, "frame count (--frames)", int)
    if checkpoint is not None and preset is not None:
        raise BenchError("give --checkpoint or --preset, not both")
    if onnx is not None:
        p = Path(onnx)
        if not p.is_dir():
            raise BenchError(f"--onnx {onnx}: no such export directory")
        if not (p / SIDECAR_FILE).is_file():
            raise BenchError(f"--onnx {onnx} holds no {SIDECAR_FILE}: not an `autr export onnx` directory")
    for e in engines:
        if not Path(e).is_file():
            raise BenchError(f"--engine {e}: no such file")
    if checkpoint not in (None, "default") and not Path(checkpoint).is_file():
        raise BenchError(f"--checkpoint {checkpoint}: no such file")
    check_common(size, warmup, iters, threads, frames)
    if rounds < 1:
        raise BenchError(f"--rounds must be >= 1; got {rounds}")
    return backends, precisions, frames


def resolve_model_source(checkpoint=None, preset=None, onnx=None, seed: int = 0):
    """(model on the CPU in eval mode, source record, sidecar or None, notices).

    --onnx without a model option: the model the export was made from (its weights digest must match).
    Neither: the embedded default checkpoint, or -- where this install has none -- the untrained `small`
    preset (weights do not change speed; a notice says so)."""
    from autr.export.errors import ExportError
    from autr.export.onnx_export import read_export, resolve_model
    from autr.export.verify import model_for_export

    notices = []
    sidecar = None
    try:
        if onnx is not None:
            sidecar = read_export(onnx)[1]
        if onnx is not None and checkpoint is None and preset is None:
            model = model_for_export(sidecar).eval()
            return model, {"source": "export", "onnx": str(onnx), "export_of": sidecar.get("checkpoint")}, sidecar, notices
        if preset is not None:
            model, source = resolve_model(preset=preset, seed=seed)
            return model, source, sidecar, notices
        if checkpoint is None:
            from autr.checkpoint import resolve_checkpoint

            try:
                path = resolve_checkpoint("default")
            except Exception:
                path = None
            if path is None or not Path(path).is_file():
                notices.append("this install has no embedded default model; benchmarking the untrained 'small' "
                               "preset (the same architecture: weights do not change speed)")
                model, source = resolve_model(preset="small", seed=seed)
                return model, source, sidecar, notices
            checkpoint = "default"
        model, source = resolve_model(checkpoint=checkpoint)
        return model, source, sidecar, notices
    except ExportError as exc:
        raise BenchError(str(exc)) from None


def cached_export(model, size: int, t_max: int, fp16: bool, cache_dir=None, log=None, source=None,
                  int8: bool = False) -> Path:
    """An export of `model` at `size` whose T range reaches `t_max` (and float16 / int8 graphs if `fp16` /
    `int8`), made once into `cache_dir/<preset>-<size>-<weights digest>` and reused while it fits (and while its
    sidecar's graph revision is the exporter's: a toolkit that exports different graphs remakes it).

    `source` (resolve_model_source's record) makes the export from the same checkpoint / preset, so its sidecar
    names where the weights came from (and `--onnx DIR` can rebuild the PyTorch model from it); without one
    the in-memory model is exported."""
    from autr.export.onnx_export import GRAPH_REVISION, SIDECAR_FILE, export_onnx, weights_digest

    say = log or (lambda msg: None)
    digest = weights_digest(model)
    target = Path(cache_dir or default_cache_dir()) / f"{model.cfg.name}-{size}-{digest[:12]}"
    side = target / SIDECAR_FILE
    have_t, have_fp16, have_int8 = 0, False, False
    if side.is_file():
        try:
            data = json.loads(side.read_text())
            if (data.get("weights_sha256") == digest and list(data.get("input_size", [])) == [size, size]
                    and (data.get("exporter") or {}).get("graph_revision") == GRAPH_REVISION):
                have_t = int(data["frames"]["max"])
                have_fp16 = "portable_fp16" in data.get("graphs", {})
                have_int8 = "portable_int8" in data.get("graphs", {})
        except (OSError, ValueError, KeyError, TypeError):
            have_t = 0
    if have_t >= t_max and (have_fp16 or not fp16) and (have_int8 or not int8):
        return target
    t_new, fp16_new, int8_new = max(t_max, have_t), fp16 or have_fp16, int8 or have_int8
    extra = "".join(x for x, on in ((", fp16", fp16_new), (", int8", int8_new)) if on)
    say(f"exporting {model.cfg.name} at {size}x{size} (T 1..{t_new}{extra}) into {target}")
    src = source or {}
    if src.get("source") == "preset":
        how = {"preset": src["preset"], "seed": src.get("seed", 0)}
    elif src.get("source") in ("file", "default") and src.get("path"):
        how = {"checkpoint": "default" if src["source"] == "default" else src["path"]}
    else:
        how = {"model": model}
    sidecar = export_onnx(target, **how, size=size, frames=t_new, fp16=fp16_new, int8=int8_new, check=False)
    if sidecar.get("weights_sha256") != digest:
        raise BenchError(f"the export in {target} does not have the benchmarked model's weights")
    return target


# ----------------------------------------------------------------------------------------------- torch rows
@contextlib.contextmanager
def msda_backend(name: str):
    import autr.ops as ops

    previous = ops._BACKEND
    ops.set_backend("reference" if name == "reference" else "auto")
    try:
        yield
    finally:
        ops.set_backend(previous)


class TorchRunner(Backend):
    """The PyTorch model as an `autr.runtime` Backend, in one configuration.

    Args:
        model: an AuTR model (moved to `device` in place; pass a copy to keep a CPU one).
        device: "cpu" or "cuda[:i]".
        precision: "fp32", "fp16" or "bf16" (CUDA autocast).
        msda: "reference" (grid_sample) or "cuda" (the autr.plugins extension; CUDA only).
        graphs: capture the forward as one CUDA graph per T (CUDA, msda="cuda").
        size: input side (default: the model's image_size).

    On CUDA, inputs go through page-locked host buffers; `last_split` holds the GPU times (ms) of the last
    call: `h2d`, `compute`, `d2h` (CUDA events).
    """

    name = "torch"

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", msda: str = "reference",
                 graphs: bool = False, size: int | None = None):
        import torch

        self.torch = torch
        cuda = str(device).startswith("cuda")
        if precision not in ("fp32", "fp16", "bf16"):
            raise RuntimeError(f"unknown precision {precision}")
        if precision != "fp32" and not cuda:
            raise RuntimeError("float16 PyTorch rows run with CUDA autocast; on the CPU PyTorch has no fast "
                               "float16 path")
        if msda == "cuda":
            from .msda_bench import cuda_op

            cuda_op(device)  # raises with the reason
        elif msda != "reference":
            raise RuntimeError(f"unknown MSDA implementation {msda}")
        if graphs and not cuda:
            raise RuntimeError("CUDA graphs need a CUDA device")
        if graphs and msda != "cuda":
            raise RuntimeError("the reference MSDA reads the level shapes back to the host (tolist), which a "
                               "CUDA graph cannot capture; graphs run with msda=cuda")
        size = int(size or model.cfg.image_size)
        super().__init__((size, size), 1, int(model.cfg.max_frames), device=str(device))
        self.model = model.eval().to(device)
        self.precision, self.msda, self.graphs, self.cuda = precision, msda, bool(graphs), cuda
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._bufs: dict = {}
        self.last_split = None
        self.variant = f"{'cuda-graph' if graphs else 'eager'}, msda={msda}"

    def _autocast(self, graphs: bool = False):
        if self._dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast("cuda", dtype=self._dtype, cache_enabled=not graphs)

    def _eager(self, f, a):
        with self.torch.inference_mode(), self._autocast(), msda_backend(self.msda):
            out = self.model(f, a)
        return out["masks"], out["scores"]

    def _buffers(self, t: int) -> dict:
        b = self._bufs.get(t)
        if b is not None:
            return b
        torch = self.torch
        h, w = self.input_size
        pin = dict(pin_memory=True)
        b = {"h_f": torch.empty(t, 3, h, w, **pin), "h_a": torch.empty(t, 1, 96, 64, **pin),
             "d_f": torch.zeros(t, 3, h, w, device=self.device), "d_a": torch.zeros(t, 1, 96, 64, device=self.device),
             "h_m": torch.empty(t, h, w, **pin), "h_s": torch.empty(t, **pin),
             "ev": [torch.cuda.Event(enable_timing=True) for _ in range(4)]}
        if self.graphs:
            b["graph"], b["out"] = self._capture(b["d_f"], b["d_a"])
        self._bufs[t] = b
        return b

    def _capture(self, d_f, d_a):
        torch = self.torch
        d_a.fill_(math.log(0.01))  # silence, as Backend.warmup feeds
        with torch.no_grad(), msda_backend(self.msda):
            self._eager(d_f, d_a)  # once eagerly: the input checks, and the model keeps its level tensors
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    with self._autocast(graphs=True):
                        self.model(d_f, d_a)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                with self._autocast(graphs=True):
                    res = self.model(d_f, d_a)  # capturable after one eager call (AuTR.level_tensors)
                    out = res["masks"], res["scores"]
        torch.cuda.synchronize()
        return graph, out

    def prepare(self, t: int) -> None:
        """Allocate (and capture) for T = t before timing."""
        if self.cuda:
            self._buffers(t)

    def infer(self, frames, log_mel):
        import numpy as np

        from autr.runtime.backends.base import check_inputs

        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        torch = self.torch
        if not self.cuda:
            masks, scores = self._eager(torch.from_numpy(np.ascontiguousarray(frames, np.float32)),
                                        torch.from_numpy(np.ascontiguousarray(log_mel, np.float32)))
            return masks.float().numpy(), scores.float().numpy().reshape(-1)
        b = self._buffers(frames.shape[0])
        b["h_f"].numpy()[...] = frames
        b["h_a"].numpy()[...] = log_mel
        ev = b["ev"]
        ev[0].record()
        b["d_f"].copy_(b["h_f"], non_blocking=True)
        b["d_a"].copy_(b["h_a"], non_blocking=True)
        ev[1].record()
        if self.graphs:
            b["graph"].replay()
            masks, scores = b["out"]
        else:
            masks, scores = self._eager(b["d_f"], b["d_a"])
        ev[2].record()
        b["h_m"].copy_(masks.float(), non_blocking=True)
        b["h_s"].copy_(scores.float().reshape(-1), non_blocking=True)
        ev[3].record()
        ev[3].synchronize()
        self.last_split = {"h2d": ev[0].elapsed_time(ev[1]), "compute": ev[1].elapsed_time(ev[2]),
                           "d2h": ev[2].elapsed_time(ev[3])}
        return b["h_m"].numpy().copy(), b["h_s"].numpy().copy()

    def describe(self) -> dict:
        d = super().describe()
        d.update(precision=self.precision, msda=self.msda, cuda_graphs=self.graphs, preset=self.model.cfg.name)
        return d

    def versions(self) -> dict:
        return {"torch": self.torch.__version__}

    def close(self) -> None:
        self._bufs.clear()


def torch_variants(device: str, precisions) -> list:
    """(precision, msda, graphs) rows of the torch backend after the baseline."""
    out = [("fp32", "cuda", False), ("fp32", "cuda", True)]
    if "fp16" in precisions:
        out += [("fp16", "reference", False), ("fp16", "cuda", False), ("fp16", "cuda", True)]
    return [v for v in out if v[0] in precisions]


# ----------------------------------------------------------------------------------------------- timing rows
def _split_summary(splits: list) -> dict:
    from .core import summarize

    return {"compute_ms": summarize([s["compute"] for s in splits]),
            "copy_ms": summarize([s["h2d"] + s["d2h"] for s in splits]),
            "h2d_ms_p50": summarize([s["h2d"] for s in splits])["p50"],
            "d2h_ms_p50": summarize([s["d2h"] for s in splits])["p50"]}


def _timed_calls(backend, frames, log_mel, warmup: int, iters: int, split=None):
    """(host-to-host samples ms, GPU splits) of `backend.infer`; `split(backend)` reads one call's GPU times."""
    from .core import time_cpu

    splits = []

    def read_split():
        s = split(backend)
        if s is not None:
            splits.append(s)

    samples = time_cpu(lambda: backend.infer(frames, log_mel), warmup, iters,
                       after=read_split if split is not None else None)
    return samples, splits


class _GpuMem:
    """PyTorch's peak allocation (torch rows) or the device-wide change of used memory (others)."""

    def __init__(self, torch, own: bool):
        self.torch, self.own = torch, own

    def __enter__(self):
        t = self.torch
        if t is None or not t.cuda.is_available():
            self.torch = None
            return self
        t.cuda.synchronize()
        if self.own:
            t.cuda.reset_peak_memory_stats()
            self.start = t.cuda.memory_allocated()
        else:
            self.start = t.cuda.mem_get_info()[0]
        return self

    def __exit__(self, *exc):
        t = self.torch
        if t is not None:
            t.cuda.synchronize()
            self.end = t.cuda.max_memory_allocated() if self.own else t.cuda.mem_get_info()[0]
        return False

    def result(self) -> dict | None:
        if self.torch is None or not hasattr(self, "end"):
            return None
        if self.own:
            return {"peak_allocated_mb": round(self.end / 2 ** 20, 1),
                    "peak_delta_mb": round((self.end - self.start) / 2 ** 20, 1),
                    "method": "torch.cuda.max_memory_allocated"}
        return {"used_delta_mb": round((self.start - self.end) / 2 ** 20, 1),
                "method": "device-wide used memory after the run minus before opening (torch.cuda.mem_get_info)"}


def _row(backend: str, precision: str, t: int, variant: str, **extra) -> dict:
    return {"backend": backend, "precision": precision, "frames": int(t), "variant": variant,
            "label": f"{backend} {precision} {variant}".strip(), **extra}


def _finish_row(row: dict, samples: list, splits: list, mem, gpu_mem) -> dict:
    from .core import summarize

    lat = summarize(samples)
    row.update(status="ok", latency_ms=lat, samples_ms=[round(s, 3) for s in samples],
               throughput_fps=round(row["frames"] / (lat["p50"] / 1e3), 3) if lat["p50"] > 0 else None,
               memory=mem.result())
    g = gpu_mem.result() if gpu_mem is not None else None
    if g is not None:
        row["gpu_memory"] = g
    if splits:
        row["gpu"] = _split_summary(splits)
    return row


def _skip(row: dict, reason) -> dict:
    row.update(status="skipped", reason=" ".join(str(reason).split()))
    return row


def _fail(row: dict, exc) -> dict:
    row.update(status="failed", reason=f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500])
    return row


def torch_row(model, device, precision, msda, graphs, t, size, warmup, iters, baseline=False) -> dict:
    import torch

    from autr.export.verify import random_clip

    from .core import PeakRss

    variant = f"{'cuda-graph' if graphs else 'eager'}, msda={msda}"
    row = _row("torch", precision, t, variant, baseline=baseline)
    frames, log_mel = random_clip(t, size, seed=t)
    runner = None
    try:
        with PeakRss() as mem, _GpuMem(torch, own=True) as gmem:
            try:
                runner = TorchRunner(model, device, precision, msda, graphs, size)
            except RuntimeError as exc:
                return _skip(row, exc)
            runner.prepare(t)
            samples, splits = _timed_calls(runner, frames, log_mel, warmup, iters,
                                           (lambda b: b.last_split) if runner.cuda else None)
        row["device"] = runner.device
        return _finish_row(row, samples, splits, mem, gmem if runner.cuda else None)
    except Exception as exc:  # a row that fails here is reported, the others still run
        return _fail(row, exc)
    finally:
        if runner is not None:
            runner.close()


def _ort_split(backend, frames, log_mel, warmup: int, iters: int):
    """GPU compute (wall time of run_with_iobinding on device-resident inputs/outputs) and copies (OrtValue
    updates and output copies) of ONNX Runtime's CUDA provider."""
    import time

    import onnxruntime as ort

    sess = backend.session
    binding = sess.io_binding()
    xf = ort.OrtValue.ortvalue_from_numpy(frames, "cuda", 0)
    xa = ort.OrtValue.ortvalue_from_numpy(log_mel, "cuda", 0)
    binding.bind_ortvalue_input("frames", xf)
    binding.bind_ortvalue_input("log_mel", xa)
    binding.bind_output("masks", "cuda")
    binding.bind_output("scores", "cuda")
    splits = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        xf.update_inplace(frames)
        xa.update_inplace(log_mel)
        t1 = time.perf_counter()
        sess.run_with_iobinding(binding)
        t2 = time.perf_counter()
        binding.copy_outputs_to_cpu()
        t3 = time.perf_counter()
        if i >= warmup:
            splits.append({"h2d": (t1 - t0) * 1e3, "compute": (t2 - t1) * 1e3, "d2h": (t3 - t2) * 1e3})
    return splits


def ort_row(export_dir: Path, sidecar: dict, precision: str, graph: str, t: int, provider: str, plan, warmup,
            iters) -> dict:
    from autr.export.verify import random_clip

    from .core import PeakRss

    row = _row("ort", precision, t, f"{graph}, provider={provider}")
    t_lo, t_hi = int(sidecar["frames"]["min"]), int(sidecar["frames"]["max"])
    if not t_lo <= t <= t_hi:
        return _skip(row, f"the export takes T = {t_lo}..{t_hi}; re-export with --frames {t}")
    size = int(sidecar["input_size"][0])
    frames, log_mel = random_clip(t, size, seed=t)
    backend = None
    try:
        torch = _torch_if_cuda()
        with PeakRss() as mem, _GpuMem(torch if provider == "cuda" else None, own=False) as gmem:
            from autr.runtime import open_backend
            from autr.runtime.errors import BackendError

            try:
                backend = open_backend("ort", export_dir, provider=provider, threads=plan.intra_op,
                                       spinning=plan.spinning, graph=graph, precision=precision, frames=t)
            except BackendError as exc:  # BackendUnavailable too: no CUDA provider, no library, no such graph
                return _skip(row, exc)
            samples, _ = _timed_calls(backend, frames, log_mel, warmup, iters)
            splits = _ort_split(backend, frames, log_mel, warmup, iters) if provider == "cuda" else []
        row.update(device=backend.device, artifact=str(backend.artifact), threads=backend.threads,
                   msda_library=backend.msda_library)
        return _finish_row(row, samples, splits, mem, gmem if provider == "cuda" else None)
    except Exception as exc:
        return _fail(row, exc)
    finally:
        if backend is not None:
            backend.close()


def openvino_row(export_dir: Path, sidecar: dict, precision: str, t: int, plan, warmup, iters) -> dict:
    """OpenVINO (the optional `openvino` extra) on the same portable graph: what a CPU deployer would pick
    instead of ONNX Runtime. fp32, bf16 (the fp32 graph with OpenVINO's bfloat16 inference precision, where the
    CPU has bfloat16 arithmetic) and int8 (OpenVINO runs the Q/DQ graph in low precision itself)."""
    from autr.export.verify import random_clip

    from .core import PeakRss
    from .openvino_runner import OpenVinoRunner, why_no_precision, why_unavailable

    row = _row("openvino", precision, t, "portable, CPU")
    missing = why_no_precision("bf16") if precision == "bf16" else why_unavailable()
    if missing:
        return _skip(row, missing)
    if precision == "fp16":
        return _skip(row, "OpenVINO's CPU plugin has no float16 compute on this CPU (the f16 hint falls back to f32)")
    kind = "portable_int8" if precision == "int8" else "portable"  # bf16: the fp32 graph, computed in bfloat16
    if kind not in sidecar.get("graphs", {}):
        return _skip(row, f"the export {export_dir} has no {kind} graph (export it with --int8)")
    if not int(sidecar["frames"]["min"]) <= t <= int(sidecar["frames"]["max"]):
        return _skip(row, f"the export takes T = {sidecar['frames']['min']}..{sidecar['frames']['max']}")
    frames, log_mel = random_clip(t, int(sidecar["input_size"][0]), seed=t)
    runner = None
    try:
        with PeakRss() as mem:
            runner = OpenVinoRunner(export_dir / sidecar["graphs"][kind]["file"], threads=plan.intra_op,
                                    precision="bf16" if precision == "bf16" else "f32", frames=t)
            samples, _ = _timed_calls(runner, frames, log_mel, warmup, iters)
        row.update(device=runner.device, artifact=str(runner.artifact), threads=runner.threads, config=runner.config)
        return _finish_row(row, samples, [], mem, None)
    except Exception as exc:
        return _fail(row, exc)
    finally:
        if runner is not None:
            runner.close()


def _torch_if_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _trt_split(backend, frames, log_mel):
    """One call of the TrtBackend's steps (copies in, execute, copies out) with pycuda events between them."""
    import numpy as np

    cuda = backend._cuda
    backend._ctx.push()
    try:
        ev = [cuda.Event() for _ in range(4)]
        ev[0].record(backend.stream)
        feeds = {"frames": frames, "log_mel": log_mel}
        for n in backend.inputs:
            x = feeds[n]
            view = backend.host[n][:x.size].reshape(x.shape)
            np.copyto(view, x, casting="same_kind")
            backend.context.set_input_shape(n, tuple(x.shape))
            cuda.memcpy_htod_async(backend.dev[n], view, backend.stream)
        ev[1].record(backend.stream)
        backend.context.execute_async_v3(backend.stream.handle)
        ev[2].record(backend.stream)
        for n in ("masks", "scores"):
            size = int(np.prod([int(s) for s in backend.context.get_tensor_shape(n)]))
            cuda.memcpy_dtoh_async(backend.host[n][:size], backend.dev[n], backend.stream)
        ev[3].record(backend.stream)
        backend.stream.synchronize()
        return {"h2d": ev[1].time_since(ev[0]), "compute": ev[2].time_since(ev[1]), "d2h": ev[3].time_since(ev[2])}
    finally:
        backend._ctx.pop()


def trt_available() -> str | None:
    """None when TensorRT and pycuda import here, else the reason (with the install hint)."""
    try:
        from autr.runtime.backends.trt import import_tensorrt

        import_tensorrt()
    except Exception as exc:
        return " ".join(str(exc).split())
    return None


def build_bench_engine(export_dir: Path, precision: str, log=None) -> Path:
    """An engine of the export's plugin graph in `precision`, built (or reused from its cache) by
    `autr.export.trt.build_engine` in a sibling folder `<export>.trt-<precision>` that holds links to the
    export's sidecar and plugin graph, so that the fp32 and fp16 engines are cached side by side."""
    import shutil

    from autr.export import trt as export_trt

    export_dir = Path(export_dir)
    target = export_dir.parent / f"{export_dir.name}.trt-{precision}"
    target.mkdir(parents=True, exist_ok=True)
    graph = export_trt.PLUGIN_FP16_FILE if precision == "fp16" else export_trt.PLUGIN_FILE
    for name in (export_trt.SIDECAR_FILE, graph):
        src, dst = export_dir / name, target / name
        if not src.is_file():
            raise BenchError(f"{src} not found (re-export{' with --fp16' if precision == 'fp16' else ''})")
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    info = export_trt.build_engine(target, fp16=precision == "fp16", log=log)
    return Path(info.get("engine_path") or export_trt.engine_paths(target)[0])


def trt_rows(engines, precisions, frames, warmup, iters, export_dir=None, log=None) -> list:
    """The trt rows: `--engine` files matched to precisions by their sidecars, or -- without any -- engines
    built from the export (`build_bench_engine`)."""
    from autr.export.verify import random_clip

    from .core import PeakRss

    rows = []
    missing = trt_available()
    if missing:
        return [_skip(_row("trt", p, t, "engine"), missing) for p in precisions for t in frames]
    by_precision = {}
    for e in engines:
        by_precision.setdefault(_engine_precision(e), []).append(e)
    for p in precisions:
        chosen = by_precision.get(p) or by_precision.get(None)
        reason = None
        if p == "bf16":
            reason = ("`autr export trt` builds fp32 / fp16 engines (TensorRT 11 networks are strongly typed: bf16 "
                      "would need a bf16 graph)")
        elif p == "int8":
            reason = ("`autr export trt` builds fp32 / fp16 engines; an int8 engine is TensorRT's own build of "
                      "model.plugin.int8.onnx (explicit Q/DQ), e.g. trtexec --onnx=model.plugin.int8.onnx --stronglyTyped")
        elif not engines:
            if export_dir is None:
                reason = "no --engine given and no export to build one from"
            else:
                try:
                    chosen = [build_bench_engine(export_dir, p, log)]
                except Exception as exc:
                    reason = f"building the {p} engine failed: {exc}"
        elif not chosen:
            reason = f"no {p} engine among --engine (have: {', '.join(sorted(str(k) for k in by_precision))})"
        for t in frames:
            row = _row("trt", p, t, "engine")
            if reason:
                rows.append(_skip(row, reason))
                continue
            backend = None
            try:
                with PeakRss() as mem, _GpuMem(_torch_if_cuda(), own=False) as gmem:
                    from autr.runtime import open_backend

                    backend = open_backend("trt", chosen[0])
                    if not backend.supports(t):
                        rows.append(_skip(row, f"the engine takes T = {backend.t_min}..{backend.t_max}"))
                        continue
                    f, a = random_clip(t, backend.input_size[0], seed=t)
                    samples, _ = _timed_calls(backend, f, a, warmup, iters)
                    splits = [_trt_split(backend, f, a) for _ in range(iters)]
                row.update(variant=f"engine {Path(chosen[0]).name}", device=backend.device, artifact=str(chosen[0]))
                row["label"] = f"trt {p} engine"
                rows.append(_finish_row(row, samples, splits, mem, gmem))
            except Exception as exc:
                rows.append(_fail(row, exc))
            finally:
                if backend is not None:
                    backend.close()
    return rows


def _engine_precision(engine):
    from autr.runtime.backends.sidecar import find_sidecar

    side = find_sidecar(engine)
    if side is None:
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    p = str(data.get("precision") or (data.get("engine") or {}).get("precision") or "").lower()
    return {"fp32": "fp32", "float32": "fp32", "fp16": "fp16", "float16": "fp16", "half": "fp16"}.get(p)


# ----------------------------------------------------------------------------------------------- the benchmark
def run_model_bench(backends=("torch", "ort"), precisions=("fp32",), frames=(1, 5), checkpoint=None, preset=None,
                    onnx=None, engines=(), size=None, warmup: int = 2, iters: int = 10, threads=None,
                    device: str = "auto", provider: str = "auto", cache_dir=None, log=None, rounds: int = 1) -> dict:
    import torch

    from autr.export.onnx_export import read_export

    from .model_cost import count_parameters, gflops_per_frame
    from .msda_bench import resolve_device

    say = log or (lambda msg: None)
    backends, precisions, frames = validate_model_args(backends, precisions, frames, onnx, engines, checkpoint,
                                                       preset, size, warmup, iters, threads)
    from autr.runtime.threads import plan_threads

    plan = plan_threads(pipeline=False, threads=threads)  # the engine alone: every core, spinning workers
    torch.set_num_threads(plan.intra_op)
    device = resolve_device(device)
    model, source, sidecar, notices = resolve_model_source(checkpoint, preset, onnx)
    cfg = model.cfg
    if sidecar is not None:
        side_size = int(sidecar["input_size"][0])
        if size is not None and size != side_size:
            raise BenchError(f"--size {size} differs from the export's input size {side_size} (--onnx {onnx})")
        size = side_size
    size = int(size or cfg.image_size)
    too_long = [t for t in frames if t > cfg.max_frames]
    if too_long:
        raise BenchError(f"--frames {','.join(map(str, too_long))}: preset {cfg.name!r} takes at most "
                         f"T = {cfg.max_frames}")
    for n in notices:
        say(n)

    export_dir = Path(onnx) if onnx is not None else None
    need_export = "ort" in backends or "openvino" in backends or \
        ("trt" in backends and not engines and trt_available() is None)
    if need_export and export_dir is None:
        export_dir = cached_export(model, size, max(frames), "fp16" in precisions, cache_dir, log=say, source=source,
                                   int8="int8" in precisions and ("ort" in backends or "openvino" in backends))
    if export_dir is not None and sidecar is None:
        sidecar = read_export(export_dir)[1]
    if provider == "auto" and "ort" in backends:
        import onnxruntime as ort

        provider = "cuda" if device.startswith("cuda") and \
            "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"

    info = {"preset": cfg.name, "config": cfg.to_dict(), "source": source,
            "params_m": round(count_parameters(model) / 1e6, 3),
            "gflops_per_frame": round(gflops_per_frame(model, size), 3)}

    from .core import gemm_gflops

    say(f"compute floor: float32 GEMM on {plan.intra_op} thread(s)")
    gemm = [gemm_gflops(plan.intra_op)]
    pairing = Pairing(model, device, size, frames, plan.intra_op, info["gflops_per_frame"])

    def one_pass(k: int) -> list:
        tag = f" (pass {k + 1}/{rounds})" if rounds > 1 else ""
        rows = []
        for t in frames:  # the research-code baseline first
            say(f"baseline: torch fp32 eager msda=reference T={t}{tag}")
            rows.append(torch_row(model, device, "fp32", "reference", False, t, size, warmup, iters, baseline=True))
        if "torch" in backends:
            for precision, msda, graphs in torch_variants(device, precisions):
                for t in frames:
                    say(f"torch {precision} msda={msda}{' cuda-graph' if graphs else ''} T={t}{tag}")
                    rows.append(pairing.around(
                        t, lambda: torch_row(model, device, precision, msda, graphs, t, size, warmup, iters)))
        if "ort" in backends:
            for precision in precisions:
                if precision == "bf16":
                    rows += [_skip(_row("ort", precision, t, f"provider={provider}"), "the exports hold fp32 / fp16 / "
                                   "int8 graphs, no bfloat16 one; the bf16 row is OpenVINO's inference precision")
                             for t in frames]
                    continue
                for graph in ORT_GRAPHS:
                    for t in frames:
                        say(f"ort {precision} {graph} T={t}{tag}")
                        rows.append(pairing.around(t, lambda: ort_row(export_dir, sidecar, precision, graph, t, provider,
                                                                      plan, warmup, iters)))
        if "openvino" in backends:
            for precision in precisions:
                for t in frames:
                    say(f"openvino {precision} T={t}{tag}")
                    rows.append(pairing.around(t, lambda: openvino_row(export_dir, sidecar, precision, t, plan, warmup,
                                                                       iters)) if device == "cpu"
                                else _skip(_row("openvino", precision, t, "portable, CPU"),
                                           "OpenVINO rows belong to a CPU run (--device cpu)"))
        if "trt" in backends:
            say(f"trt{tag}")
            rows += trt_rows(list(engines), precisions, frames, warmup, iters, export_dir, log=say)
        return rows

    passes = [one_pass(k) for k in range(rounds)]
    pairing.close()
    gemm.append(gemm_gflops(plan.intra_op))  # again at the end: the floor is the better of the two
    best = max(gemm, key=lambda g: g["gflops"])
    floor = {"gemm": best, "gemm_runs_gflops": [g["gflops"] for g in gemm],
             "gflops_per_frame": info["gflops_per_frame"],
             "ms_per_frame": round(info["gflops_per_frame"] / best["gflops"] * 1e3, 3),
             "method": "model GFLOPs per frame (2 per multiply-add, deformable sampling left out) / the GEMM "
                       "GFLOP/s of numpy float32 1024x1024 matmul on the same threads, best of 15, measured at "
                       "the start and the end of this run (the better one); vs_floor = row p50 / (T x floor)"}
    for rows in passes:
        add_ratios(rows, floor["ms_per_frame"])
    rows = merge_passes(passes)
    return {"model": info, "notices": notices, "size": size, "floor": floor, "thread_plan": plan.describe(),
            "export": None if export_dir is None else {"dir": str(export_dir), "created": sidecar.get("created"),
                                                       "opset": sidecar.get("opset")},
            "device_used": device, "provider": provider, "rows": rows,
            "rounds": rounds,
            "method": f"{iters} timed calls after {warmup} warm-up calls per row and pass ({rounds} pass(es) over "
                      "all rows: latency from every pass's samples, each ratio the median of the passes' ratios), "
                      "random inputs (seed T), eval "
                      "mode; latency is host to host (numpy in, numpy out; on a GPU including the copies); "
                      "throughput = T / p50; speedup_vs_baseline = baseline p50 / row p50 at the same T, and vs_floor "
                      "= row p50 / (T x floor), each with the baseline and floor measured again right before and "
                      "after the row (its `paired` record: the mean of the two baseline p50s of 10 calls, the better "
                      "of two best-of-5 GEMMs); "
                      "memory: peak RSS during the row minus RSS at its start (torch rows share one loaded "
                      "model; ort / trt rows open their session inside the row)"}


class Pairing:
    """The baseline and the GEMM floor measured again right before and right after each row, so that a row's
    ratios compare timings a few seconds apart: this workplace's hosts slow down by 2x for minutes at a time,
    which a baseline and a floor measured once, at the start, turn into a wrong ratio. Each bracket is a short
    block of the baseline (PyTorch eager, reference MSDA, float32; 10 calls) at the row's T and a best-of-5 GEMM."""

    def __init__(self, model, device, size: int, frames, threads: int, gflops_per_frame: float, iters: int = 10):
        from autr.export.verify import random_clip

        self.runner = TorchRunner(model, device, "fp32", "reference", False, size)
        self.inputs = {t: random_clip(t, size, seed=t) for t in frames}
        self.threads, self.gflops_per_frame, self.iters = threads, gflops_per_frame, iters

    def measure(self, t: int) -> tuple:
        from .core import gemm_gflops, summarize

        self.runner.prepare(t)
        samples, _ = _timed_calls(self.runner, *self.inputs[t], 1, self.iters)
        return summarize(samples)["p50"], gemm_gflops(self.threads, repeats=5)["gflops"]

    def around(self, t: int, make_row) -> dict:
        """make_row() between two brackets; the row's `paired` record holds their mean baseline p50 and the
        better GEMM (the floor), which add_ratios prefers to the run-wide ones."""
        before = self.measure(t)
        row = make_row()
        after = self.measure(t)
        if row.get("status") == "ok":
            gflops = max(before[1], after[1])
            row["paired"] = {"baseline_p50_ms": round((before[0] + after[0]) / 2, 3),
                             "baseline_p50_ms_before_after": [round(before[0], 3), round(after[0], 3)],
                             "gemm_gflops": gflops,
                             "floor_ms_per_frame": round(self.gflops_per_frame / gflops * 1e3, 3)}
        return row

    def close(self) -> None:
        self.runner.close()


def merge_passes(passes: list) -> list:
    """One row per (label, T) from `rounds` passes over the rows: the timing samples of every pass together
    (latency, throughput), and the ratios as the median over the passes of each pass's ratios (a pass's row
    is compared with the baseline and floor measured around it), with every pass's figures in `passes`."""
    import statistics

    from .core import summarize

    if len(passes) == 1:
        return passes[0]
    merged = []
    for i, first in enumerate(passes[0]):
        same = [p[i] for p in passes]
        if any(r["status"] != "ok" for r in same):
            merged.append(next((r for r in same if r["status"] != "ok"), first))
            continue
        row = dict(first)
        row["samples_ms"] = [x for r in same for x in r["samples_ms"]]
        row["latency_ms"] = summarize(row["samples_ms"])
        row["throughput_fps"] = round(row["frames"] / (row["latency_ms"]["p50"] / 1e3), 3)
        row["passes"] = [{"p50_ms": r["latency_ms"]["p50"], "speedup_vs_baseline": r.get("speedup_vs_baseline"),
                          "vs_floor": r.get("vs_floor"), "paired": r.get("paired")} for r in same]
        row.pop("paired", None)
        for key in ("speedup_vs_baseline", "vs_floor"):
            vals = [r[key] for r in same if r.get(key) is not None]
            if vals:
                row[key] = round(statistics.median(vals), 3)
        merged.append(row)
    return merged


def add_ratios(rows: list, floor_ms_per_frame: float | None = None) -> None:
    """speedup_vs_baseline on every ok row (baseline p50 / row p50 at the same T) and, given the compute floor,
    vs_floor (row p50 / (T x floor): 1.0 would be the machine's GEMM speed on every FLOP). A row with a
    `paired` record (Pairing) is compared with the baseline and floor measured around it."""
    base = {r["frames"]: r["latency_ms"]["p50"] for r in rows if r.get("baseline") and r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok" or r["latency_ms"]["p50"] <= 0:
            continue
        paired = r.get("paired") or {}
        b = paired.get("baseline_p50_ms") or base.get(r["frames"])
        if b:
            r["speedup_vs_baseline"] = round(b / r["latency_ms"]["p50"], 3)
        f = paired.get("floor_ms_per_frame") or floor_ms_per_frame
        if f:
            r["vs_floor"] = round(r["latency_ms"]["p50"] / (r["frames"] * f), 3)


def format_model(result: dict) -> str:
    floor = result.get("floor") or {}
    lines = [f"{result['model']['preset']} at {result['size']}x{result['size']} on {result['device_used']}"]
    if floor:
        lines.append(f"compute floor {floor['ms_per_frame']:.1f} ms/frame = {floor['gflops_per_frame']} GFLOP / "
                     f"{floor['gemm']['gflops']:.0f} GFLOP/s (float32 GEMM, {floor['gemm']['threads']} thread(s))")
    lines.append(f"{'row':<42} {'T':>2} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'frames/s':>9} {'speedup':>8} "
                 f"{'floor':>6} {'mem MB':>7}")
    from .report import collapse

    for r in result["rows"]:
        if r["status"] != "ok":
            continue
        lat = r["latency_ms"]
        mem = (r.get("memory") or {}).get("peak_rss_delta_mb")
        lines.append(f"{r['label']:<42} {r['frames']:>2} {lat['p50']:>8.1f} {lat['p90']:>8.1f} {lat['p99']:>8.1f} "
                     f"{lat['max']:>8.1f} {r['throughput_fps']:>9.2f} {r.get('speedup_vs_baseline', 0):>7.2f}x "
                     f"{r.get('vs_floor', 0):>5.1f}x {'' if mem is None else f'{mem:.0f}':>7}")
    bad = [r for r in result["rows"] if r["status"] != "ok"]
    for r, ts in collapse(bad, lambda r: r["label"], lambda r: r["frames"]):
        lines.append(f"{r['label']:<42} T={','.join(ts)} {r['status']}: {r['reason']}")
    return "\n".join(lines)
