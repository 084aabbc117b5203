"""The measurement behind the runtime's thread plan (autr/runtime/threads.py).

Runs the main job -- `autr demo`'s live synthetic scene through ONNX Runtime, with the mp4 sink -- under
candidate thread plans, interleaved round by round so that every candidate sees the same machine, and
reports per candidate: windows/s, frames dropped, end-to-end p50 / p99, and inference in the pipeline
against the same graph timed alone in the same process (the oversubscription the plan is meant to remove).

    python -m autr.benchmarks.thread_plan --seconds 10 --rounds 2 --json benchmarks/results/thread_plan_cpu.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

__all__ = ["CANDIDATES", "run_thread_plan_bench", "format_thread_plan"]


def _candidates(cores: int) -> dict:
    from autr.runtime.threads import ThreadPlan, plan_threads

    plan = plan_threads(pipeline=True, cores=cores)
    return {
        "before (ORT / BLAS / x264 defaults, spinning)": ThreadPlan(cores, cores, True, blas=None, encoder=0,
                                                                     chosen_by="benchmark"),
        "plan": plan,
        "plan with spinning": ThreadPlan(cores, plan.intra_op, True, chosen_by="benchmark"),
        "plan, 1 inference thread": ThreadPlan(cores, 1, False, chosen_by="benchmark"),
    }


CANDIDATES = tuple(_candidates(2))


def _one_run(model_dir: Path, plan, seconds: float, fps: float, seed: int, out: Path) -> dict:
    from autr.runtime import Mp4Sink, StreamRunner, SyntheticSource, open_backend

    backend = open_backend("ort", model_dir, provider="cpu", threads=plan.intra_op, spinning=plan.spinning, frames=1)
    try:
        source = SyntheticSource(fps=fps, seed=seed, size=224, realtime=True)
        source.start()
        sink = Mp4Sink(out, threads=plan.encoder)
        rep = StreamRunner(source, backend, sinks=[sink], duration=seconds, isolated_runs=20, plan=plan).run()
    finally:
        backend.close()
    lat = rep["latency_ms"]
    captured = rep["frames"]["captured"]
    dropped = rep["frames"]["dropped"]["total"]
    return {"windows_per_s": rep["fps"]["output"], "captured": captured, "dropped": dropped,
            "dropped_pct": round(100.0 * dropped / max(1, captured), 2),
            "end_to_end_p50": lat["end_to_end"]["p50"], "end_to_end_p99": lat["end_to_end"]["p99"],
            "preprocess_p50": lat["preprocess"]["p50"], "inference_p50": lat["inference"]["p50"],
            "inference_isolated_p50": rep["inference_isolated_ms"]["p50"],
            "in_pipeline_vs_isolated": rep["inference_in_pipeline_vs_isolated"], "error": rep.get("error")}


def run_thread_plan_bench(checkpoint="default", seconds: float = 10.0, fps: float = 15.0, rounds: int = 2,
                          seed: int = 7, workdir=None, log=None) -> dict:
    """Every candidate once per round (same order each round); medians over rounds per candidate."""
    from autr.demo import export_for_demo
    from autr.runtime.threads import available_cores

    say = log or (lambda msg: None)
    if seconds <= 0 or fps <= 0 or rounds < 1:
        raise ValueError(f"need --seconds > 0, --fps > 0, --rounds >= 1 (got {seconds}, {fps}, {rounds})")
    cores = available_cores()
    candidates = _candidates(cores)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        model_dir = export_for_demo(checkpoint, tmp, log=say)
        runs = {name: [] for name in candidates}
        for r in range(rounds):
            for name, plan in candidates.items():
                say(f"round {r + 1}/{rounds}: {name}")
                runs[name].append(_one_run(model_dir, plan, seconds, fps, seed, tmp / "demo.mp4"))
    rows = []
    for name, plan in candidates.items():
        samples = runs[name]
        row = {"candidate": name, "plan": plan.describe()}
        for key in samples[0]:
            if key != "error":
                row[key] = round(statistics.median(s[key] for s in samples), 3)
        row["errors"] = [s["error"] for s in samples if s["error"]]
        rows.append(row)
    return {"cores": cores, "seconds": seconds, "fps": fps, "rounds": rounds, "checkpoint": str(checkpoint),
            "rows": rows, "runs": runs,
            "method": "autr demo's scene (SyntheticSource live at fps, mp4 sink) per candidate plan, candidates "
                      "interleaved in each round; medians over rounds; isolated inference = 20 calls of the same "
                      "backend before the scene starts"}


def format_thread_plan(result: dict) -> str:
    lines = [f"{'candidate':<46} {'win/s':>6} {'drop %':>6} {'e2e p50':>8} {'p99':>7} {'infer p50':>9} "
             f"{'alone':>6} {'ratio':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['candidate']:<46} {r['windows_per_s']:>6.2f} {r['dropped_pct']:>6.1f} "
                     f"{r['end_to_end_p50']:>8.1f} {r['end_to_end_p99']:>7.1f} {r['inference_p50']:>9.1f} "
                     f"{r['inference_isolated_p50']:>6.1f} {r['in_pipeline_vs_isolated']:>6.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autr.benchmarks.thread_plan", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    from .core import command_line, environment, envelope, write_result

    try:
        body = run_thread_plan_bench(args.checkpoint, args.seconds, args.fps, args.rounds,
                                     log=lambda m: print(m, flush=True))
    except ValueError as exc:
        parser.exit(2, f"autr: {exc}\n")
    print(format_thread_plan(body))
    if args.json_out:
        cmd = command_line(argv=["python -m autr.benchmarks.thread_plan", *(sys.argv[1:] if argv is None else argv)])
        result = envelope("thread_plan", cmd, vars(args), environment())
        result.update(body)
        print(f"wrote {write_result(result, args.json_out)}")


if __name__ == "__main__":
    main()
