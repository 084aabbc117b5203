"""The paper's Tables I-IV reproduced on SynthAVS for AuTR and the TPAVI baseline, every row from `autr`
commands, every row with several training seeds.

    python -m autr.benchmarks.paper_tables --root runs/paper [--seeds 0,1 --jobs 2 --size 64 --train 400]

Runs (and skips what a previous call finished) the data generation, training and evaluation commands of
each row, then writes `benchmarks/results/paper_tables_synth.json` with its figure (.png) and prints
markdown tables whose footnote carries the commands. The defaults are the committed budget (400 training
clips, 80 validation clips, 10 epochs: the README says how it was chosen). Every run uses one budget (input
size, clips, epochs), so the rows compare with each other; the methods use presets of the same encoders
(`small`, `tpavi-small`); the test splits come from seed 1000, which no training set uses. Runs go `--jobs` at a time, each on cores / jobs threads.

Rows, per method: Table I S4-synth and MS3-synth from scratch; Table II MS3 fine-tuned from the method's
own S4 model (`--init`) vs MS3 from scratch; Table III the factored open set (categories that are new
combinations of trained sound / look factors held out of training; test split scored on seen and unseen
categories); Table IV (AuTR) the S4 model without audio-aware queries and without dynamic convolution.
S4 trains as the paper's S4 does: ground truth on the first frame of each clip only.

`verdicts` states for each of the paper's claims whether it reproduces: the seed-mean difference in the
claimed direction and larger than the spread of the seeds (half the range, added over the two rows
compared) is "reproduces"; in the claimed direction but within the spread, "same direction, within the
seed spread"; otherwise "does not reproduce". With one seed there is no spread, and the verdict says so.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import time
from pathlib import Path

from .core import driver_header, publish_table, run_autr
from .plots import plot_paper_tables

TEST_SEED = 1000
RESULTS = Path(__file__).resolve().parent / "results" / "paper_tables_synth.json"
METHODS = {"autr": "AuTR", "tpavi": "TPAVI"}
# run: (table, row label, mode, data set, extra train flags, init run, open-set eval, methods)
RUNS = {
    "s4": ("I", "S4-synth", "s4", "s4", [], None, False, ("autr", "tpavi")),
    "ms3": ("I / II", "MS3-synth (from scratch)", "ms3", "ms3", [], None, False, ("autr", "tpavi")),
    "ms3-from-s4": ("II", "MS3-synth, fine-tuned from S4-synth", "ms3", "ms3", [], "s4", False, ("autr", "tpavi")),
    "open-set": ("III", "S4-synth factored open set", "s4", "s4-open", [], None, True, ("autr", "tpavi")),
    "no-audio-queries": ("IV", "S4-synth w/o audio-aware queries", "s4", "s4", ["--no-audio-queries"], None, False,
                         ("autr",)),
    "no-dynamic-conv": ("IV", "S4-synth w/o dynamic convolution", "s4", "s4", ["--no-dynamic-conv"], None, False,
                        ("autr",)),
}
# data set: (mode, open set, dataset seed, design)
DATA = {"s4": ("s4", False, 0, "distinct"), "ms3": ("ms3", False, 2, "distinct"),
        "s4-open": ("s4", True, 3, "factored")}
METRICS = ("miou", "fscore", "audio_swap", "miou_seen", "miou_unseen")


def _run(cmd: list[str], log) -> float:
    return run_autr(cmd, log, "paper_tables")


def run_name(method: str, run: str, seed: int) -> str:
    return f"{method}-{run}-s{seed}"


def commands(root: Path, args) -> dict:
    """Per run (method x row x seed): data, train and eval command lines (lists, no interpreter prefix),
    the run it starts from (`init`) and its key (method, row, seed)."""
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    presets = {"autr": args.preset, "tpavi": args.tpavi_preset}
    out = {}
    for method in args.methods:
        for run, (_, _, mode, data, flags, init, open_set, methods) in RUNS.items():
            if method not in methods:
                continue
            d_mode, d_open, d_seed, design = DATA[data]
            data_cmd = ["data", "synth", str(root / f"data-{data}"), "--mode", d_mode, "--train", str(args.train),
                        "--val", str(args.val), "--test", "0", "--seed", str(d_seed), "--size", str(args.size),
                        "--design", design]
            data_cmd += ["--open-set"] if d_open else []
            for seed in args.seeds:
                name = run_name(method, run, seed)
                train_cmd = ["train", "--data", str(root / f"data-{data}"), "--mode", mode, "--out", str(root / name),
                             "--preset", presets[method], "--size", str(args.size), "--epochs", str(args.epochs),
                             "--seed", str(seed), "--workers", "0", "--threads", str(threads), "--quiet", *flags]
                start = run_name(method, init, seed) if init else None
                train_cmd += ["--init", str(root / start / "best.safetensors")] if start else []
                eval_cmd = ["eval", "--checkpoint", str(root / name / "best.safetensors"), "--synthetic", "--mode",
                            mode, "--seed", str(TEST_SEED), "--clips", str(args.test_clips), "--size", str(args.size),
                            "--threads", str(threads), "--quiet", "--json", str(root / name / "test.json")]
                eval_cmd += ["--open-set", "--design", design] if open_set else []
                out[name] = {"data": data_cmd, "train": train_cmd, "eval": eval_cmd, "init": start,
                             "key": (method, run, seed)}
    return out


def _one(root: Path, name: str, step: dict, log) -> dict:
    run_dir = root / name
    if not (run_dir / "done.json").is_file():
        (run_dir / "done.json").write_text(json.dumps({"train_seconds": _run(step["train"], log)}))
    if not (run_dir / "test.json").is_file():
        _run(step["eval"], log)
    test = json.loads((run_dir / "test.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    best = max(epochs, key=lambda r: r["val"]["miou"])
    return {"test": {k: v for k, v in test.items() if isinstance(v, (int, float))}, "best_epoch": best["epoch"],
            "val_miou_best": best["val"]["miou"], "val_miou_curve": [round(r["val"]["miou"], 4) for r in epochs],
            "train_loss_curve": [round(r["train"]["loss"], 4) for r in epochs],
            "train_seconds": round(json.loads((run_dir / "done.json").read_text())["train_seconds"], 1),
            "commands": ["autr " + shlex.join(step[k]) for k in ("data", "train", "eval")]}


def run_all(root: Path, args, log=print) -> dict:
    """Every run, `args.jobs` at a time; a run that starts from another waits for it. {name: run record}."""
    root.mkdir(parents=True, exist_ok=True)
    plan = commands(root, args)
    for step in {tuple(s["data"]): s for s in plan.values()}.values():  # each data set once, first
        if not (Path(step["data"][2]) / "synth_info.json").is_file():
            _run(step["data"], log)
    # longest first (TPAVI trains whole clips; MS3 supervises every frame), runs that start from another last: a
    # worker that takes one waits for a run that is already done or running, never for one still queued
    order = sorted(plan, key=lambda n: (plan[n]["init"] is not None, plan[n]["key"][0] == "autr",
                                        plan[n]["key"][1] not in ("ms3", "ms3-from-s4")))
    futures = {}

    def job(name):
        if plan[name]["init"]:
            futures[plan[name]["init"]].result()
        return _one(root, name, plan[name], log)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name in order:
            futures[name] = pool.submit(job, name)
        done = {name: fut.result() for name, fut in futures.items()}
    return {name: {**done[name], "method": plan[name]["key"][0], "run": plan[name]["key"][1],
                   "seed": plan[name]["key"][2]} for name in plan}


def summarize(runs: dict) -> dict:
    """Per method and row: mean and spread (half the range) of each test metric over the seeds."""
    rows = {}
    for r in runs.values():
        rows.setdefault((r["method"], r["run"]), []).append(r)
    out = {}
    for (method, run), rs in rows.items():
        rec = {"method": method, "run": run, "table": RUNS[run][0], "row": RUNS[run][1],
               "seeds": sorted(r["seed"] for r in rs)}
        for m in METRICS:
            vals = [r["test"][m] for r in rs if m in r["test"]]
            if vals:
                rec[m] = {"mean": round(statistics.fmean(vals), 4), "spread": round((max(vals) - min(vals)) / 2, 4),
                          "values": [round(v, 4) for v in vals]}
        out[f"{method}/{run}"] = rec
    return out


def _claim(summary: dict, a: str, b: str, metric: str, text: str) -> dict | None:
    """Claim: row `a` beats row `b` on `metric` (keys 'method/run')."""
    if a not in summary or b not in summary or metric not in summary[a] or metric not in summary[b]:
        return None
    ra, rb = summary[a][metric], summary[b][metric]
    diff, spread = ra["mean"] - rb["mean"], ra["spread"] + rb["spread"]
    if min(len(ra["values"]), len(rb["values"])) < 2:  # no spread to compare with
        verdict = "same direction (one seed: no spread)" if diff > 0 else "does not reproduce (one seed)"
    else:
        verdict = ("reproduces" if diff > spread else
                   "same direction, within the seed spread" if diff > 0 else "does not reproduce")
    return {"claim": text, "metric": metric, "a": a, "b": b, "difference": round(diff, 4),
            "spread": round(spread, 4), "verdict": verdict}


def verdicts(summary: dict) -> list:
    claims = [
        ("autr/s4", "tpavi/s4", "miou", "I: AuTR beats TPAVI on S4"),
        ("autr/ms3", "tpavi/ms3", "miou", "I: AuTR beats TPAVI on MS3"),
        ("autr/ms3-from-s4", "autr/ms3", "miou", "II: fine-tuning from S4 helps AuTR on MS3"),
        ("tpavi/ms3", "tpavi/ms3-from-s4", "miou", "II: fine-tuning from S4 hurts TPAVI on MS3"),
        ("autr/open-set", "tpavi/open-set", "miou_unseen", "III: AuTR generalises better to unseen categories"),
        ("autr/s4", "tpavi/s4", "audio_swap",
         "AuTR follows the sound, TPAVI segments silent salient objects (S4 audio_swap)"),
        ("autr/s4", "autr/no-audio-queries", "miou", "IV: audio-aware queries help"),
        ("autr/s4", "autr/no-dynamic-conv", "miou", "IV: dynamic convolution helps"),
    ]
    return [c for c in (_claim(summary, *args) for args in claims) if c is not None]


def _cell(rec: dict | None, metric: str) -> str:
    if not rec or metric not in rec:
        return "–"
    return f"{rec[metric]['mean']:.3f} ± {rec[metric]['spread']:.3f}"


def markdown(result: dict) -> str:
    """The README tables: seed mean ± half range per method, the claims' verdicts, the commands."""
    s = result["summary"]
    get = lambda method, run: s.get(f"{method}/{run}")  # noqa: E731
    n_seeds = len(result["budget"]["seeds"])
    lines = [f"Test metrics, mean ± half the range over {n_seeds} training seeds.", "",
             "| table | row | AuTR mIoU | TPAVI mIoU | AuTR F | TPAVI F | AuTR audio_swap | TPAVI audio_swap |",
             "|---|---|---|---|---|---|---|---|"]
    for run in ("s4", "ms3", "ms3-from-s4"):
        a, t = get("autr", run), get("tpavi", run)
        lines.append(f"| {RUNS[run][0]} | {RUNS[run][1]} | {_cell(a, 'miou')} | {_cell(t, 'miou')} | "
                     f"{_cell(a, 'fscore')} | {_cell(t, 'fscore')} | {_cell(a, 'audio_swap')} | "
                     f"{_cell(t, 'audio_swap')} |")
    lines += ["", "| table III (factored open set) | seen mIoU | unseen mIoU |", "|---|---|---|"]
    for method, label in METHODS.items():
        r = get(method, "open-set")
        lines.append(f"| {label} | {_cell(r, 'miou_seen')} | {_cell(r, 'miou_unseen')} |")
    lines += ["", "| table IV (AuTR, S4-synth) | mIoU | F | audio_swap |", "|---|---|---|---|"]
    for run in ("s4", "no-audio-queries", "no-dynamic-conv"):
        r = get("autr", run)
        label = "full model" if run == "s4" else RUNS[run][1].replace("S4-synth ", "")
        lines.append(f"| {label} | {_cell(r, 'miou')} | {_cell(r, 'fscore')} | {_cell(r, 'audio_swap')} |")
    lines += ["", "| the paper's claim | difference (seed means) | seed spread | on SynthAVS |", "|---|---|---|---|"]
    for v in result["verdicts"]:
        lines.append(f"| {v['claim']} | {v['difference']:+.3f} ({v['metric']}) | {v['spread']:.3f} | {v['verdict']} |")
    b = result["budget"]
    first = next(iter(result["runs"].values()))["commands"]
    lines += ["", f"Budget per run: `{b['preset']}` / `{b['tpavi_preset']}` presets at {b['size']}x{b['size']}, "
              f"{b['train']} training clips ({b.get('val', '?')} validation clips pick the best epoch), {b['epochs']} epochs, batch 8, AdamW 1e-4, training seeds "
              f"{', '.join(map(str, b['seeds']))}; test: {b['test_clips']} clips of seed {TEST_SEED} "
              f"(`autr eval --synthetic --seed {TEST_SEED}`); {result['hardware']}, {result['date']}. "
              f"Example run: `{first[1]}`; data: `{first[0]}` (MS3: seed 2; open set: seed 3 "
              f"`--design factored --open-set`). Every command: the `runs` record of "
              f"benchmarks/results/paper_tables_synth.json."]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/paper"), help="Where data and runs go.")
    p.add_argument("--preset", default="small", help="AuTR's preset.")
    p.add_argument("--tpavi-preset", default="tpavi-small", help="TPAVI's preset.")
    p.add_argument("--methods", default="autr,tpavi", type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--seeds", default="0,1", type=_ints, help="Training seeds (comma list).")
    p.add_argument("--jobs", type=int, default=2, help="Runs at a time (each gets cores / jobs threads).")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", type=int, default=400, help="Training clips per data set.")
    p.add_argument("--val", type=int, default=80, help="Validation clips per data set (they pick the best epoch).")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--test-clips", type=int, default=100)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=None, help="The figure (default: --out with .png).")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.seeds or args.jobs < 1:
        p.error(f"--methods takes {', '.join(METHODS)}; --seeds needs one seed or more; --jobs >= 1")
    started = time.time()
    runs = run_all(args.root, args)
    summary = summarize(runs)
    result = {**driver_header("paper_tables", argv),
              "budget": {k: getattr(args, k) for k in ("preset", "tpavi_preset", "methods", "seeds", "size", "train",
                                                        "val", "epochs", "test_clips", "jobs")},
              # seconds: this call's wall time (runs that an earlier call finished are read back, not timed)
              "seconds": round(time.time() - started, 1),
              "train_seconds_total": round(sum(r["train_seconds"] for r in runs.values()), 1), "summary": summary, "verdicts": verdicts(summary),
              "runs": runs}
    publish_table(result, args.out, markdown)
    print(f"wrote {plot_paper_tables(result, args.plot or args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
