"""`autr export bench`: what exporting costs and what ONNX Runtime buys on a CPU.

For one preset and input size: export wall time (tracing + simplification + checks, and the whole
`export_onnx` call), file sizes and node counts (as exported, after onnxscript's optimizer, final) of
each graph, and CPU latency of the portable graph in ONNX Runtime against PyTorch eager at T=1 and
T=5: median (and min / max) of `runs` timed runs after `warmup` runs, same inputs, the two
alternating run by run, the machine's default thread counts (or `threads` each). The 1-minute load
average before and after is recorded: on a shared machine the figures mean little when it is high.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _interleaved_ms(fns: dict, warmup: int, runs: int) -> dict:
    """Time each callable `runs` times after `warmup` calls, alternating between them run by run,
    so that a busy machine slows them alike."""
    times = {name: [] for name in fns}
    for i in range(warmup + runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": runs}
            for name, t in times.items()}


def _thread_key(threads) -> str:
    return "default" if not threads else f"{threads}_thread" + ("s" if threads > 1 else "")


def run_bench(preset: str = "small", size: int = 224, frames=(1, 5), runs: int = 10, warmup: int = 2,
              opset: int | None = None, fp16: bool = False, threads=(None,), checkpoint=None, workdir=None,
              log=None) -> dict:
    """`threads`: the thread settings to time (None = each library's default), e.g. (None, 1).
    `checkpoint` (a file or "default") replaces the untrained `preset`."""
    import onnxruntime as ort
    import torch

    from autr.export.onnx_export import DEFAULT_OPSET, export_onnx
    from autr.export.verify import model_for_export, random_clip, session

    say = log or (lambda msg: None)
    opset = DEFAULT_OPSET if opset is None else opset
    threads = (threads,) if threads is None or isinstance(threads, int) else tuple(threads)
    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "export"
        say(f"exporting {checkpoint or preset} at {size}x{size} (opset {opset})")
        start = time.perf_counter()
        source = {"checkpoint": checkpoint} if checkpoint is not None else {"preset": preset}
        sidecar = export_onnx(out, **source, size=size, opset=opset, fp16=fp16, frames=max(frames))
        export_s = time.perf_counter() - start
        model = model_for_export(sidecar)
        graphs = {kind: {"bytes": rec["bytes"], "mib": round(rec["bytes"] / 2 ** 20, 2), "nodes": rec["nodes"],
                         "msda_nodes": rec["msda_nodes"]}
                  for kind, rec in sidecar["graphs"].items()}
        for kind, rec in sidecar["graphs"].items():
            if "error_vs_torch_fp32" in rec:
                graphs[kind]["error_vs_torch_fp32"] = rec["error_vs_torch_fp32"]
        latency = {}
        try:
            for n_threads in threads:
                sess = session(out / sidecar["graphs"]["portable"]["file"], threads=n_threads)
                torch.set_num_threads(n_threads or default_threads)
                rows = latency[_thread_key(n_threads)] = {}
                for t in frames:
                    f, a = random_clip(t, size, seed=t)
                    ft, at = torch.from_numpy(f), torch.from_numpy(a)
                    say(f"timing T={t}, threads: {n_threads or 'default'}")

                    def eager():
                        with torch.inference_mode():
                            model(ft, at)

                    timed = _interleaved_ms({"pytorch_eager_ms": eager,
                                             "ort_portable_ms": lambda: sess.run(None, {"frames": f, "log_mel": a})},
                                            warmup, runs)
                    rows[str(t)] = {**timed, "speedup": timed["pytorch_eager_ms"]["median"]
                                    / timed["ort_portable_ms"]["median"]}
        finally:
            torch.set_num_threads(default_threads)
    return {
        "preset": sidecar["config"]["name"], "checkpoint": sidecar["checkpoint"], "size": size, "opset": opset, "frames_max": max(frames),
        "export_seconds": round(export_s, 2), "trace_and_simplify_seconds": sidecar["trace_seconds"],
        "graphs": graphs, "parity": sidecar.get("parity"), "cpu_latency": latency,
        "environment": {"torch": torch.__version__, "onnxruntime": ort.__version__,
                        "torch_default_threads": default_threads, "cpu_count": os.cpu_count(),
                        "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "ort_providers": ["CPUExecutionProvider"],
                        "load_average_1m": {"before": round(load_before[0], 2),
                                            "after": round(os.getloadavg()[0], 2)}},
        "method": f"median of {runs} runs after {warmup} warm-up runs, PyTorch and ONNX Runtime alternating "
                  "run by run, random inputs, eval mode; PyTorch under torch.inference_mode(); ONNX Runtime "
                  "CPU, default options except intra-op spinning off (idle ORT threads must not slow the "
                  "PyTorch runs); cpu_latency is keyed by thread setting (torch.set_num_threads and ORT "
                  "intra_op_num_threads; 'default' leaves both at their defaults)",
    }


def format_bench(result: dict) -> str:
    lines = [f"{result['preset']} at {result['size']}x{result['size']}, opset {result['opset']}: "
             f"export {result['export_seconds']:.1f} s (trace + simplify {result['trace_and_simplify_seconds']:.1f} s)",
             f"{'graph':<15} {'MiB':>7} {'nodes exported':>15} {'optimized':>10} {'final':>7} {'MSDA':>5}"]
    for kind, g in result["graphs"].items():
        n = g["nodes"]
        lines.append(f"{kind:<15} {g['mib']:>7.2f} {n['exported']:>15} {n['onnxscript_optimized']:>10} "
                     f"{n['final']:>7} {g['msda_nodes']:>5}")
    lines.append(f"{'threads':<12} {'T':>3} {'PyTorch eager ms':>17} {'ORT portable ms':>16} {'speed-up':>9}")
    for setting, rows in result["cpu_latency"].items():
        for t, row in rows.items():
            lines.append(f"{setting:<12} {t:>3} {row['pytorch_eager_ms']['median']:>17.1f} "
                         f"{row['ort_portable_ms']['median']:>16.1f} {row['speedup']:>8.2f}x")
    load = result["environment"]["load_average_1m"]
    lines.append(f"load average (1 min) {load['before']} -> {load['after']} on {result['environment']['cpu_count']} CPUs")
    return "\n".join(lines)


def write_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
