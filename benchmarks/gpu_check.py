"""The GPU check: everything about the MSDA CUDA kernel that needs a GPU, in one call.

    python -m autr.benchmarks.gpu_check            # or: python benchmarks/gpu_check.py
    python -m autr.benchmarks.gpu_check --quick    # fewer iterations, small model only (a smoke run)

On a machine with an NVIDIA GPU, a CUDA build of PyTorch, nvcc and ninja:

1. build   -- the PyTorch extension (autr.plugins.torch_op.load_extension: JIT build into its cache, or the
              prebuilt autr.plugins._C);
2. forward -- kernel vs the grid_sample reference on fresh random inputs (seed recorded), at the model's sizes
              (small and paper-r50 encoder + decoder at 224, T = 5) and at Deformable-DETR size; error =
              ||out - ref||_2 / ||ref||_2 against the reference in float64 on the same inputs: float32
              <= 1e-5, float16 <= 1e-2 (max-abs / max|ref| is recorded too);
3. gradcheck -- torch.autograd.gradcheck of the kernel's backward in float64 on a small case;
4. kernel timing -- reference vs kernel (CUDA events, warm-up, medians) at paper-r50's encoder size and at
              Deformable-DETR size, float32 and float16, with the bytes moved and achieved bandwidth
              (autr.benchmarks.msda_bench, the same code as `autr bench msda`), next to the device's
              device-to-device copy bandwidth (a 1 GiB tensor copy: 2 x bytes / median time);
5. whole model -- `small` and `paper-r50` at 224, T = 5: reference vs kernel, float32 / float16 and bfloat16
              autocast, eager and captured as a CUDA graph (autr.benchmarks.model_bench.TorchRunner, the same
              rows as `autr bench model`);
6. targets -- PASS / FAIL per target (TARGETS below), then the JSON
              benchmarks/results/gpu_<device>_<date>.json. Exit status 0 all passed, 1 a target failed,
              2 no CUDA here (one line, nothing written).
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

# name -> (comparison, threshold, what it measures)
TARGETS = {
    "msda_forward_fp32_max_error": ("<=", 1e-5, "largest float32 relative L2 error of the kernel over all sizes"),
    "msda_forward_fp16_max_error": ("<=", 1e-2, "largest float16 relative L2 error of the kernel over all sizes"),
    "msda_gradcheck": ("==", 1, "torch.autograd.gradcheck in float64 (1 = passed)"),
    "msda_kernel_speedup_model": (">=", 5.0, "reference / kernel median, float32, paper-r50 encoder at 224, T=5"),
    "msda_kernel_speedup_detr": (">=", 5.0, "reference / kernel median, float32, Deformable-DETR size"),
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


def _forward_checks(torch, cases, seed: int) -> list:
    from autr.benchmarks.msda_bench import random_inputs, rel_error, rel_l2_error
    from autr.ops import ms_deform_attn_reference
    from autr.plugins.torch_op import ms_deform_attn_cuda

    rows = []
    for case in cases:
        for dtype in ("fp32", "fp16"):
            x = random_inputs(case, dtype, "cuda", seed)
            with torch.no_grad():
                ref64 = ms_deform_attn_reference(*(t.double() if t.is_floating_point() else t for t in x))
                ref32 = ms_deform_attn_reference(*(t.float() if t.is_floating_point() else t for t in x))
                out = ms_deform_attn_cuda(*x)
            rows.append({"case": case.name, "dtype": dtype, "seed": seed,
                         "rel_l2_error_vs_fp64": rel_l2_error(out, ref64), "rel_error_vs_fp64": rel_error(out, ref64),
                         "rel_error_vs_fp32_reference": rel_error(out, ref32)})
            del x, ref64, ref32, out
    torch.cuda.empty_cache()
    return rows


def run_check(presets=("small", "paper-r50"), size: int = 224, frames: int = 5, iters: int = 50, warmup: int = 10,
              model_iters: int = 30, log=print, command: str | None = None) -> dict:
    import torch

    from autr.benchmarks import model_bench, msda_bench

    require_cuda(torch)
    env = core.environment(torch)
    result = core.envelope("gpu_check", command or "python -m autr.benchmarks.gpu_check", {"presets": list(presets), "size": size,
                                                              "frames": frames, "iters": iters, "warmup": warmup,
                                                              "model_iters": model_iters}, env)
    measured, errors = {}, {}

    def step(name, fn):
        log(f"== {name}")
        t0 = time.perf_counter()
        try:
            out = fn()
            log(f"   done in {time.perf_counter() - t0:.1f} s")
            return out
        except Exception as exc:  # each step is reported; the next still runs
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"   FAILED: {errors[name]}")
            log(traceback.format_exc(limit=3))
            return None

    from autr.plugins import torch_op

    build = step("build the PyTorch extension", lambda: {"module": getattr(torch_op.load_extension(), "__file__", None),
                                                         "build_dir": str(torch_op.extension_build_dir())})
    result["build"] = build
    cases = [c for p in presets for c in msda_bench.model_cases(p, size, frames)] + [msda_bench.detr_case()]
    seed = secrets.randbelow(2 ** 31)
    fwd = step("forward vs reference", lambda: _forward_checks(torch, cases, seed)) if build else None
    result["forward"] = fwd
    if fwd:
        for dtype in ("fp32", "fp16"):
            measured[f"msda_forward_{dtype}_max_error"] = max(r["rel_l2_error_vs_fp64"] for r in fwd
                                                              if r["dtype"] == dtype)
    grad = step("gradcheck (float64)", lambda: _gradcheck(torch)) if build else None
    result["gradcheck"] = grad
    if grad:
        measured["msda_gradcheck"] = int(grad["passed"])

    copy = step("device-to-device copy bandwidth", lambda: copy_bandwidth(torch))
    result["copy_bandwidth"] = copy
    timed_cases = [c for c in msda_bench.model_cases("paper-r50", size, frames)[:1]] + \
        [c for p in presets if p != "paper-r50" for c in msda_bench.model_cases(p, size, frames)[:1]] + \
        [msda_bench.detr_case()]
    kernel_rows = step("kernel timing", lambda: [r for c in timed_cases for r in msda_bench.bench_case(
        c, ("reference", "cuda"), ("fp32", "fp16"), "cuda", warmup, iters, seed)])
    result["kernel"] = kernel_rows
    if kernel_rows:
        for r in kernel_rows:
            if r["status"] == "ok" and copy:
                r["fraction_of_copy_bandwidth"] = round(r["bandwidth_gbs"] / copy["bandwidth_gbs"], 4)
        for key, case in (("model", timed_cases[0].name), ("detr", "deformable-detr")):
            hit = [r for r in kernel_rows if r["case"] == case and r["impl"] == "cuda" and r["dtype"] == "fp32"
                   and r["status"] == "ok"]
            if hit:
                measured[f"msda_kernel_speedup_{key}"] = hit[0].get("speedup_vs_reference")

    variants = [("fp32", "reference", False), ("fp32", "cuda", False), ("fp32", "cuda", True),
                ("fp16", "reference", False), ("fp16", "cuda", False), ("fp16", "cuda", True),
                ("bf16", "cuda", False), ("bf16", "cuda", True)]
    result["whole_model"] = {}
    for preset in presets:
        def whole(preset=preset):
            from autr.model import build_model

            model = build_model(preset, seed=0).eval().cuda()
            rows = [model_bench.torch_row(model, "cuda", p, m, g, frames, size, 5, model_iters,
                                          baseline=(p, m, g) == variants[0]) for p, m, g in variants]
            model_bench.add_ratios(rows)
            del model
            torch.cuda.empty_cache()
            return rows

        rows = step(f"whole model {preset} T={frames}", whole)
        result["whole_model"][preset] = rows
        if rows:
            kern = [r for r in rows if r["status"] == "ok" and "msda=cuda" in r["variant"]]
            if kern:
                best = max(kern, key=lambda r: r.get("speedup_vs_baseline") or 0)
                measured[f"whole_model_speedup_{preset}"] = best.get("speedup_vs_baseline")
                result.setdefault("whole_model_best", {})[preset] = best["label"]
    result["measured"] = measured
    result["targets"] = check_targets(measured, {k: v for k, v in TARGETS.items()
                                                 if not k.startswith("whole_model_speedup_")
                                                 or k.split("whole_model_speedup_")[1] in presets})
    result["errors"] = errors
    result["passed"] = all(t["passed"] for t in result["targets"]) and not errors
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autr.benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="result file (.json) or folder (default: benchmarks/results/)")
    ap.add_argument("--presets", default="small,paper-r50", help="whole-model presets (default small,paper-r50)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50, help="timed kernel calls per row")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--model-iters", type=int, default=30, help="timed model calls per row")
    ap.add_argument("--quick", action="store_true", help="smoke run: small only, few iterations")
    args = ap.parse_args(argv)
    try:
        require_cuda()
    except NoCuda as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    presets = ("small",) if args.quick else tuple(p for p in args.presets.split(",") if p)
    iters, model_iters = (10, 5) if args.quick else (args.iters, args.model_iters)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m autr.benchmarks.gpu_check", *argv])
    result = run_check(presets, args.size, args.frames, iters, args.warmup, model_iters, command=command)
    print(format_targets(result["targets"]))
    for name, err in result["errors"].items():
        print(f"ERROR {name}: {err}")
    path = core.write_result(result, result_path(args.out, result["device"]["gpu"]["name"], result["date"]))
    print(f"wrote {path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
