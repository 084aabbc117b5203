"""The GPU check: everything about the MSDA CUDA kernel that needs a GPU, in one call (`make gpu-check`).

    python -m autr.benchmarks.gpu_check            # or: python benchmarks/gpu_check.py
    python -m autr.benchmarks.gpu_check --quick    # fewer iterations, small model only (a smoke run)

On a machine with an NVIDIA GPU, a CUDA build of PyTorch, nvcc and ninja (sized to finish in < 8 min on an
H100 / H200, the extension's first build included):

1. build   -- the PyTorch extension (autr.plugins.torch_op.load_extension: JIT build into its cache, or the
              prebuilt autr.plugins._C);
2. forward -- kernel, its generic (run-time L, P) path and the Deformable-DETR-style baseline vs the
              grid_sample reference on fresh random inputs (seed recorded), at the model's sizes (small and
              paper-r50 encoder + decoder at 224, T = 5) and at Deformable-DETR size, float32 / float16 /
              bfloat16; error = ||out - ref||_2 / ||ref||_2 against the float64 reference on the same
              (rounded) inputs: float32 <= 1e-5, float16 <= 1e-2, bfloat16 <= 2e-2;
3. gradcheck -- torch.autograd.gradcheck of the kernel's backward in float64 on a small case, and a
              bfloat16 autocast forward + backward through autr.ops (the path that used to raise);
4. kernel timing -- reference vs kernel vs generic kernel vs the research baseline (one thread per
              channel, Deformable-DETR's layout), CUDA events, medians, float32 / float16 / bfloat16, at
              paper-r50's encoder size and at Deformable-DETR size, with bytes moved and bandwidth next to
              the device-to-device copy bandwidth (a 1 GiB tensor copy: 2 x bytes / median time);
5. whole model -- `small` and `paper-r50` at 224, T = 1 and 5: reference vs kernel, float32 / float16 /
              bfloat16 autocast, eager and captured as a CUDA graph (autr.benchmarks.model_bench.torch_row,
              the same rows as `autr bench model`), each as a ratio to the research baseline (reference MSDA,
              float32, eager) of the same run and T;
6. targets -- PASS / FAIL per target (TARGETS below), then the JSON
              benchmarks/results/gpu_<device>_<date>.json and the README's GPU section (between
              `<!-- gpu:start -->` and `<!-- gpu:end -->`; --no-readme leaves it). Exit status 0 all passed,
              1 a target failed, 2 no CUDA here (one line, nothing written).
"""
from __future__ import annotations

import argparse
import secrets
import sys
import time
import traceback
from pathlib import Path

try:
    from autr.benchmarks import core
except ImportError:  # pragma: no cover - run from a checkout that is not installed
    sys.stderr.write("gpu_check: the autr package is not installed here; `pip install -e .` in the repository "
                     "first\n")
    sys.exit(2)

DTYPES = ("fp32", "fp16", "bf16")
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 2e-2}
IMPLS = ("reference", "kernel", "generic", "detr")  # detr: the one-thread-per-channel research baseline
FRAMES = (1, 5)
README_START, README_END = "<!-- gpu:start -->", "<!-- gpu:end -->"

# name -> (comparison, threshold, what it measures)
TARGETS = {
    **{f"msda_forward_{dt}_max_error": ("<=", TOLERANCE[dt], f"largest {dt} relative L2 error of the kernel (and "
                                        "its generic path and the baseline) over all sizes") for dt in DTYPES},
    "msda_gradcheck": ("==", 1, "torch.autograd.gradcheck in float64 (1 = passed)"),
    "msda_bf16_autocast_backward": ("==", 1, "autr.ops under bfloat16 autocast: forward + backward run (1 = ran)"),
    "msda_kernel_speedup_model": (">=", 5.0, "reference / kernel median, float32, paper-r50 encoder at 224, T=5"),
    "msda_kernel_speedup_detr": (">=", 5.0, "reference / kernel median, float32, Deformable-DETR size"),
    "msda_kernel_vs_detr_baseline_fp16": (">=", 1.0, "DETR-style baseline / kernel median, float16, paper-r50 "
                                                     "encoder at 224, T=5"),
    "whole_model_speedup_small": (">=", 2.0, "small, T=5: research baseline (reference MSDA, fp32, eager) p50 / "
                                             "the best kernel configuration's p50"),
    "whole_model_speedup_paper-r50": (">=", 2.0, "paper-r50, T=5: the same ratio"),
}


class NoCuda(RuntimeError):
    pass


def require_cuda(torch=None) -> None:
    """Raise NoCuda with one line saying why this machine cannot run the check."""
    if torch is None:
        try:
            import torch
        except ImportError as exc:
            raise NoCuda(f"gpu_check needs PyTorch ({exc})") from None
    if torch.version.cuda is None:
        raise NoCuda(f"gpu_check needs a CUDA GPU: PyTorch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise NoCuda(f"gpu_check needs a CUDA GPU: torch.cuda.is_available() is False (PyTorch {torch.__version__}, "
                     f"CUDA {torch.version.cuda}; no NVIDIA GPU or driver visible) -- run it on a GPU machine")


def check_targets(measured: dict, targets: dict = TARGETS) -> list:
    """[{name, value, op, threshold, passed, what}] for every target; a missing value fails."""
    ops = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}
    out = []
    for name, (op, threshold, what) in targets.items():
        value = measured.get(name)
        ok = value is not None and ops[op](value, threshold)
        out.append({"name": name, "value": value, "op": op, "threshold": threshold, "passed": bool(ok),
                    "what": what})
    return out


def format_targets(results: list) -> str:
    lines = []
    for t in results:
        value = "not measured" if t["value"] is None else (f"{t['value']:.3g}" if isinstance(t["value"], float)
                                                            else str(t["value"]))
        lines.append(f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']}: {value} (target {t['op']} "
                     f"{t['threshold']}) -- {t['what']}")
    return "\n".join(lines)


def result_path(out, device_name: str, date: str) -> Path:
    """`out` if it names a .json file, else DIR/gpu_<device>_<YYYY-MM-DD>.json (DIR: benchmarks/results)."""
    if out is not None and str(out).endswith(".json"):
        return Path(out)
    folder = Path(out) if out is not None else core.RESULTS_DIR
    return folder / f"gpu_{core.slug(device_name)}_{date[:10]}.json"


def copy_bandwidth(torch, nbytes: int = 1 << 30, iters: int = 20) -> dict:
    """Device-to-device copy of an nbytes tensor: 2 x nbytes (read + write) / median time."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    samples = core.time_cuda(lambda: dst.copy_(src), warmup=3, iters=iters, torch=torch)
    med = sorted(samples)[len(samples) // 2]
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": nbytes, "median_ms": med, "bandwidth_gbs": 2 * nbytes / (med * 1e-3) / 1e9}


def _gradcheck(torch) -> dict:
    from autr.benchmarks.msda_bench import MsdaCase, random_inputs
    from autr.plugins.torch_op import ms_deform_attn_cuda

    case = MsdaCase("gradcheck", 1, 3, 2, 4, 2, [(4, 5), (2, 3)])
    value, shapes, starts, loc, weights = random_inputs(case, "fp64", "cuda", seed=1)
    loc = loc.clamp(0.02, 0.98)
    for t in (value, loc, weights):
        t.requires_grad_(True)
    ok = torch.autograd.gradcheck(lambda v, l, w: ms_deform_attn_cuda(v, shapes, starts, l, w), (value, loc, weights),
                                  eps=1e-6, atol=1e-5, rtol=1e-3, nondet_tol=1e-7)
    return {"passed": bool(ok), "case": case.describe()}


def _bf16_autocast(torch) -> dict:
    """autr.ops.ms_deform_attn under bfloat16 autocast, forward + backward (torch_op casts to value's dtype)."""
    from autr import ops
    from autr.benchmarks.msda_bench import detr_case, random_inputs

    value, shapes, starts, loc, weights = random_inputs(detr_case(), "fp32", "cuda", seed=2)
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = ops.ms_deform_attn(leaves[0].bfloat16(), shapes, starts, leaves[1], leaves[2])
    out.float().square().mean().backward()
    return {"output_dtype": str(out.dtype), "grads": [str(t.grad.dtype) for t in leaves],
            "ran": all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in leaves)}


def _inputs(torch, case, dtype: str, seed: int):
    """random_inputs in `dtype` (bfloat16: drawn in float32, then rounded)."""
    from autr.benchmarks.msda_bench import random_inputs

    x = random_inputs(case, "fp32" if dtype == "bf16" else dtype, "cuda", seed)
    if dtype == "bf16":
        x = tuple(t.bfloat16() if t.is_floating_point() else t for t in x)
    return x


def _impl(impl: str):
    from autr.ops import ms_deform_attn_reference
    from autr.plugins.torch_op import forward_variant

    if impl == "reference":
        return ms_deform_attn_reference
    return lambda *x: forward_variant(*x, impl=impl)


def _forward_checks(torch, cases, seed: int) -> list:
    from autr.benchmarks.msda_bench import rel_error, rel_l2_error

    rows = []
    for case in cases:
        for dtype in DTYPES:
            x = _inputs(torch, case, dtype, seed)
            with torch.no_grad():
                ref64 = _impl("reference")(*(t.double() if t.is_floating_point() else t for t in x))
                for impl in IMPLS[1:]:
                    out = _impl(impl)(*x)
                    rows.append({"case": case.name, "dtype": dtype, "impl": impl, "seed": seed,
                                 "rel_l2_error_vs_fp64": rel_l2_error(out, ref64),
                                 "rel_error_vs_fp64": rel_error(out, ref64)})
            del x, ref64
    torch.cuda.empty_cache()
    return rows


def _kernel_timing(torch, cases, seed: int, warmup: int, iters: int, copy) -> list:
    """Median GPU time of every implementation per case and dtype, with ratios to the reference and to the
    research baseline (detr) of the same case and dtype."""
    from autr.benchmarks.msda_bench import bytes_moved

    rows = []
    for case in cases:
        for dtype in DTYPES:
            x = _inputs(torch, case, dtype, seed)
            moved = sum(bytes_moved(case, "fp32" if dtype == "fp32" else "fp16").values())
            group = []
            for impl in IMPLS:
                fn = _impl(impl)
                with torch.no_grad():
                    med = float(sorted(core.time_cuda(lambda: fn(*x), warmup, iters, torch))[iters // 2])
                row = {"case": case.name, "dtype": dtype, "impl": impl, "median_ms": med, "bytes": moved,
                       "bandwidth_gbs": moved / (med * 1e-3) / 1e9}
                if copy:
                    row["fraction_of_copy_bandwidth"] = round(row["bandwidth_gbs"] / copy["bandwidth_gbs"], 4)
                group.append(row)
            by = {r["impl"]: r["median_ms"] for r in group}
            for r in group:
                r["speedup_vs_reference"] = round(by["reference"] / r["median_ms"], 3)
                r["speedup_vs_detr_baseline"] = round(by["detr"] / r["median_ms"], 3)
            rows += group
            del x
    torch.cuda.empty_cache()
    return rows


# (precision, msda, CUDA graph); the first is the research baseline every row is compared with
MODEL_VARIANTS = (("fp32", "reference", False), ("fp32", "cuda", False), ("fp32", "cuda", True),
                  ("fp16", "reference", False), ("fp16", "cuda", False), ("fp16", "cuda", True),
                  ("bf16", "reference", False), ("bf16", "cuda", False), ("bf16", "cuda", True))


def _whole_model(torch, preset: str, size: int, frames, model_iters: int) -> list:
    from autr.benchmarks import model_bench
    from autr.model import build_model

    model = build_model(preset, seed=0).eval().cuda()
    rows = [model_bench.torch_row(model, "cuda", p, m, g, t, size, 5, model_iters, baseline=(p, m, g) ==
                                  MODEL_VARIANTS[0]) for t in frames for p, m, g in MODEL_VARIANTS]
    model_bench.add_ratios(rows)
    del model
    torch.cuda.empty_cache()
    return rows


def run_check(presets=("small", "paper-r50"), size: int = 224, frames=FRAMES, iters: int = 50, warmup: int = 10,
              model_iters: int = 30, log=print, command: str | None = None) -> dict:
    import torch

    from autr.benchmarks import msda_bench

    require_cuda(torch)
    frames = tuple(int(t) for t in (frames if isinstance(frames, (list, tuple)) else (frames,)))
    t_main = max(frames)
    env = core.environment(torch)
    result = core.envelope("gpu_check", command or "python -m autr.benchmarks.gpu_check",
                           {"presets": list(presets), "size": size, "frames": list(frames), "iters": iters,
                            "warmup": warmup, "model_iters": model_iters}, env)
    measured, errors = {}, {}
    started = time.perf_counter()

    def step(name, fn):
        log(f"== {name} (at {time.perf_counter() - started:.0f} s)")
        t0 = time.perf_counter()
        try:
            out = fn()
            log(f"   done in {time.perf_counter() - t0:.1f} s")
            return out
        except Exception as exc:  # each step is reported; the next still runs
            errors[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            log(f"   FAILED: {errors[name]}")
            log(traceback.format_exc(limit=3))
            return None

    from autr.plugins import torch_op

    build = step("build the PyTorch extension", lambda: {"module": getattr(torch_op.load_extension(), "__file__", None),
                                                         "build_dir": str(torch_op.extension_build_dir())})
    result["build"] = build
    cases = [c for p in presets for c in msda_bench.model_cases(p, size, t_main)] + [msda_bench.detr_case()]
    seed = secrets.randbelow(2 ** 31)
    fwd = step("forward vs reference", lambda: _forward_checks(torch, cases, seed)) if build else None
    result["forward"] = fwd
    if fwd:
        for dtype in DTYPES:
            measured[f"msda_forward_{dtype}_max_error"] = max(r["rel_l2_error_vs_fp64"] for r in fwd
                                                              if r["dtype"] == dtype)
    grad = step("gradcheck (float64)", lambda: _gradcheck(torch)) if build else None
    result["gradcheck"] = grad
    if grad:
        measured["msda_gradcheck"] = int(grad["passed"])
    bf16 = step("bfloat16 autocast forward + backward", lambda: _bf16_autocast(torch)) if build else None
    result["bf16_autocast"] = bf16
    if bf16:
        measured["msda_bf16_autocast_backward"] = int(bf16["ran"])

    copy = step("device-to-device copy bandwidth", lambda: copy_bandwidth(torch))
    result["copy_bandwidth"] = copy
    timed_cases = msda_bench.model_cases("paper-r50", size, t_main)[:1] + [msda_bench.detr_case()]
    kernel_rows = step("kernel timing", lambda: _kernel_timing(torch, timed_cases, seed, warmup, iters, copy)) \
        if build else None
    result["kernel"] = kernel_rows
    for r in kernel_rows or []:
        if r["impl"] == "kernel" and r["dtype"] == "fp32":
            key = "model" if r["case"] == timed_cases[0].name else "detr"
            measured[f"msda_kernel_speedup_{key}"] = r["speedup_vs_reference"]
        if r["impl"] == "kernel" and r["dtype"] == "fp16" and r["case"] == timed_cases[0].name:
            measured["msda_kernel_vs_detr_baseline_fp16"] = r["speedup_vs_detr_baseline"]

    result["whole_model"] = {}
    for preset in presets:
        rows = step(f"whole model {preset} T={','.join(map(str, frames))}",
                    lambda preset=preset: _whole_model(torch, preset, size, frames, model_iters))
        result["whole_model"][preset] = rows
        kern = [r for r in rows or [] if r["status"] == "ok" and "msda=cuda" in r["variant"]
                and r["frames"] == t_main]
        if kern:
            best = max(kern, key=lambda r: r.get("speedup_vs_baseline") or 0)
            measured[f"whole_model_speedup_{preset}"] = best.get("speedup_vs_baseline")
            result.setdefault("whole_model_best", {})[preset] = f"{best['precision']}, {best['variant']}"
    result["measured"] = measured
    result["targets"] = check_targets(measured, {k: v for k, v in TARGETS.items()
                                                 if not k.startswith("whole_model_speedup_")
                                                 or k.split("whole_model_speedup_")[1] in presets})
    result["errors"] = errors
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["passed"] = all(t["passed"] for t in result["targets"]) and not errors
    return result


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def render_gpu_section(result: dict, json_rel: str) -> str:
    """The README's GPU section (markdown) from a gpu_check result."""
    dev = result.get("device_label") or "?"
    out = ["", "<!-- generated by `python -m autr.benchmarks.gpu_check` (make gpu-check): do not edit by hand -->",
           "", f"### GPU: {dev}, {str(result.get('date', ''))[:10]}", "",
           f"`{result.get('command', '')}` in {result.get('seconds', '?')} s; [{Path(json_rel).name}]({json_rel}). "
           f"{'All targets passed.' if result.get('passed') else 'Some targets FAILED (see below).'}", "",
           "| target | measured | threshold | result |", "|---|---|---|---|"]
    for t in result.get("targets", []):
        value = "n/a" if t.get("value") is None else f"{t['value']:.3g}"
        out.append(f"| {t['name']} | {value} | {t['op']} {t['threshold']} | {'PASS' if t['passed'] else 'FAIL'} |")
    rows = result.get("kernel") or []
    if rows:
        out += ["", "MSDA kernel (median GPU time; ratios to the grid_sample reference and to the Deformable-DETR-"
                    "style one-thread-per-channel baseline of the same case and dtype):", "",
                "| case | dtype | impl | median ms | GB/s | vs reference | vs DETR baseline |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['median_ms']:.4f} | {r['bandwidth_gbs']:.1f} | "
                f"{_x(r.get('speedup_vs_reference'))} | {_x(r.get('speedup_vs_detr_baseline'))} |" for r in rows]
    for preset, rows in (result.get("whole_model") or {}).items():
        out += ["", f"Whole model `{preset}` at {result['settings']['size']}, ratio to the research baseline "
                    "(reference MSDA, fp32, eager) at the same T:", "",
                "| precision | variant | T | p50 ms | frames/s | vs research baseline |", "|---|---|---|---|---|---|"]
        for r in rows or []:
            if r.get("status") == "ok":
                out.append(f"| {r['precision']} | {r['variant']} | {r['frames']} | {r['latency_ms']['p50']:.2f} | "
                           f"{r.get('throughput_fps') or 0:.1f} | {_x(r.get('speedup_vs_baseline'))} |")
            else:
                out.append(f"| {r['precision']} | {r['variant']} | {r['frames']} | {r.get('status')}: "
                           f"{r.get('reason', '')} | | |")
    for name, err in (result.get("errors") or {}).items():
        out.append(f"\nError in {name}: {err}")
    return "\n".join(out) + "\n"


def update_readme_section(readme: Path, section: str) -> bool:
    """Replace the text between the GPU markers; False (nothing written) where the README lacks them."""
    text = readme.read_text(encoding="utf-8")
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}{section}{README_END}{tail}", encoding="utf-8")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autr.benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="result file (.json) or folder (default: benchmarks/results/)")
    ap.add_argument("--presets", default="small,paper-r50", help="whole-model presets (default small,paper-r50)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--frames", default="1,5", help="whole-model clip lengths T (default 1,5)")
    ap.add_argument("--iters", type=int, default=50, help="timed kernel calls per row")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--model-iters", type=int, default=30, help="timed model calls per row")
    ap.add_argument("--quick", action="store_true", help="smoke run: small only, few iterations")
    ap.add_argument("--no-readme", action="store_true", help="leave the README's GPU section as it is")
    args = ap.parse_args(argv)
    try:
        frames = tuple(int(t) for t in args.frames.split(",") if t.strip())
    except ValueError:
        frames = ()
    if not frames or min(frames) < 1:
        sys.stderr.write(f"--frames must be positive integers like 1,5, got {args.frames!r}\n")
        return 2
    try:
        require_cuda()
    except NoCuda as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    presets = ("small",) if args.quick else tuple(p for p in args.presets.split(",") if p)
    iters, model_iters = (10, 5) if args.quick else (args.iters, args.model_iters)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m autr.benchmarks.gpu_check", *argv])
    result = run_check(presets, args.size, frames, iters, args.warmup, model_iters, command=command)
    print(format_targets(result["targets"]))
    for name, err in result["errors"].items():
        print(f"ERROR {name}: {err}")
    path = core.write_result(result, result_path(args.out, result["device"]["gpu"]["name"], result["date"]))
    print(f"wrote {path}")
    readme = core.RESULTS_DIR.parent.parent / "README.md"
    if not args.no_readme and readme.is_file():
        import os

        rel = Path(os.path.relpath(path, readme.parent)).as_posix()
        if update_readme_section(readme, render_gpu_section(result, rel)):
            print(f"updated the GPU section of {readme}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
