"""The paper's Tables I-IV reproduced on SynthAVS, every row from `autr` commands.

    python -m autr.benchmarks.paper_tables --root runs/paper [--size 64 --train 400 --epochs 12]

Runs (and skips what a previous call finished) the data generation, training and evaluation commands
of each row, then writes `benchmarks/results/paper_tables_synth.json` and prints a markdown table
whose rows carry their commands. Every run uses one budget (preset, input size, clips, epochs), so
the rows compare with each other; the test splits come from seed 1000, which no training set uses.

Rows: Table I S4-synth and MS3-synth from scratch; Table II MS3 fine-tuned from the S4 model
(`--init`) vs MS3 from scratch; Table III open set (categories held out of training, test split
scored on seen and unseen categories); Table IV the S4 model without audio-aware queries and
without dynamic convolution.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from .core import driver_header, publish_table, run_autr

TEST_SEED = 1000
RESULTS = Path(__file__).resolve().parent / "results" / "paper_tables_synth.json"

# name: (table, row label, mode, data set, extra train flags, init run, open-set eval)
RUNS = {
    "s4": ("I", "S4-synth", "s4", "s4", [], None, False),
    "ms3": ("I / II", "MS3-synth (from scratch)", "ms3", "ms3", [], None, False),
    "ms3-from-s4": ("II", "MS3-synth, fine-tuned from S4-synth", "ms3", "ms3", [], "s4", False),
    "open-set": ("III", "S4-synth open set (2 categories held out)", "s4", "s4-open", [], None, True),
    "no-audio-queries": ("IV", "S4-synth w/o audio-aware queries", "s4", "s4", ["--no-audio-queries"], None, False),
    "no-dynamic-conv": ("IV", "S4-synth w/o dynamic convolution", "s4", "s4", ["--no-dynamic-conv"], None, False),
}
DATA = {"s4": ("s4", False, 0), "ms3": ("ms3", False, 2), "s4-open": ("s4", True, 3)}  # mode, open set, seed


def _run(cmd: list[str], log) -> float:
    return run_autr(cmd, log, "paper_tables")


def commands(root: Path, args) -> dict:
    """Per run: the data, train and eval command lines (as lists, without the interpreter prefix)."""
    out = {}
    for name, (_, _, mode, data, flags, init, open_set) in RUNS.items():
        d_mode, d_open, d_seed = DATA[data]
        data_cmd = ["data", "synth", str(root / f"data-{data}"), "--mode", d_mode, "--train", str(args.train),
                    "--val", str(args.val), "--test", "0", "--seed", str(d_seed), "--size", str(args.size)]
        data_cmd += ["--open-set"] if d_open else []
        train_cmd = ["train", "--data", str(root / f"data-{data}"), "--mode", mode, "--out", str(root / name),
                     "--preset", args.preset, "--size", str(args.size), "--epochs", str(args.epochs),
                     "--workers", "1", "--quiet", *flags]
        train_cmd += ["--full-gt"] if mode == "s4" else []
        train_cmd += ["--init", str(root / init / "best.safetensors")] if init else []
        eval_cmd = ["eval", "--checkpoint", str(root / name / "best.safetensors"), "--synthetic", "--mode", mode,
                    "--seed", str(TEST_SEED), "--clips", str(args.test_clips), "--size", str(args.size), "--quiet",
                    "--json", str(root / name / "test.json")]
        eval_cmd += ["--open-set"] if open_set else []
        out[name] = {"data": data_cmd, "train": train_cmd, "eval": eval_cmd, "init": init}
    return out


def run_all(root: Path, args, log=print) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    plan = commands(root, args)
    rows = {}
    for name in RUNS:  # in order: ms3-from-s4 needs s4's best checkpoint
        step = plan[name]
        data_dir = Path(step["data"][2])
        if not (data_dir / "synth_info.json").is_file():
            _run(step["data"], log)
        run_dir = root / name
        if not (run_dir / "done.json").is_file():
            (run_dir / "done.json").write_text(json.dumps({"train_seconds": _run(step["train"], log)}))
        train_s = json.loads((run_dir / "done.json").read_text())["train_seconds"]
        if not (run_dir / "test.json").is_file():
            _run(step["eval"], log)
        test = json.loads((run_dir / "test.json").read_text())
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        best = max(epochs, key=lambda r: r["val"]["miou"])
        rows[name] = {
            "table": RUNS[name][0], "row": RUNS[name][1], "mode": RUNS[name][2],
            "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
            "best_epoch": best["epoch"], "val_miou_best": best["val"]["miou"], "train_seconds": round(train_s, 1),
            "commands": ["autr " + shlex.join(step[k]) for k in ("data", "train", "eval")],
        }
    return rows


def markdown(result: dict) -> str:
    """The README table: one row per run, its test metrics and the command that trained it."""
    lines = ["| table | run | test mIoU | test F | audio_swap | seen / unseen mIoU | train command |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        t = r["test"]
        swap = f"{t['audio_swap']:.3f}" if "audio_swap" in t else "–"
        seen = f"{t['miou_seen']:.3f} / {t['miou_unseen']:.3f}" if "miou_unseen" in t else "–"
        lines.append(f"| {r['table']} | {r['row']} | {t['miou']:.3f} | {t['fscore']:.3f} | {swap} | {seen} | "
                     f"`{r['commands'][1]}` |")
    b = result["budget"]
    lines.append("")
    lines.append(f"Budget per run: `{b['preset']}` preset at {b['size']}x{b['size']}, {b['train']} training clips, "
                 f"{b['epochs']} epochs, batch 8, AdamW 1e-4; test: {b['test_clips']} clips of seed {TEST_SEED} "
                 f"(`autr eval --synthetic --seed {TEST_SEED}`); {result['hardware']}, {result['date']}. "
                 f"Data: `{result['rows']['s4']['commands'][0]}` (MS3: seed 2, open set: seed 3 `--open-set`).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/paper"), help="Where data and runs go.")
    p.add_argument("--preset", default="small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", type=int, default=400, help="Training clips per data set.")
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--test-clips", type=int, default=100)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    started = time.time()
    rows = run_all(args.root, args)
    result = {**driver_header("paper_tables", argv),
              "budget": {k: getattr(args, k) for k in ("preset", "size", "train", "val", "epochs", "test_clips")},
              "seconds": round(time.time() - started, 1), "rows": rows}
    publish_table(result, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
