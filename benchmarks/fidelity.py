"""Paper fidelity (issue 12) measured on SynthAVS: what each change does to held-out results, and what the
supervised-frames-only S4 step saves.

    python -m autr.benchmarks.fidelity --root runs/fidelity [--size 64 --train 400 --epochs 10 --seeds 0,1]

Runs (and skips what a previous call finished) every `autr data` / `autr train` / `autr eval` command of the
plan, each on one CPU thread (`--threads 1`, data loading in the training process), then writes
`benchmarks/results/paper_fidelity_synth.json` and prints a markdown table whose rows carry their commands.

- S4 step time: one optimiser step of the `small` preset on a batch of AVSBench-style S4 clips (only the first
  frame supervised), every frame through the model (before issue 12) vs only the supervised frames (now), on
  the same batches; and, with dropout off, the loss and gradients of both on one batch ("equal results").
- Variants: S4 trained from scratch (first frame supervised, as AVSBench S4) with the baseline config and with
  each option alone (`--pixel-pool`, `--dynamic-reference`, `--lr-schedule cosine --warmup-epochs 1`,
  `--aux-loss`), one run per seed, each scored on the held-out S4 clips of seed 1000.
- Query rules: the baseline S4 models and MS3 models (fine-tuned from them with `--init`, as the paper's
  Table II) scored with `--query-select clip` and `--query-select frame` on S4 / MS3 held-out clips; and the
  embedded default model on its own S4 held-out clips with both rules.

Every run of a variant has the same budget (clips, epochs, batch, seed list), so the rows compare with each
other; the test clips come from seed 1000, which no training set uses.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import time
from pathlib import Path

from .core import driver_header, publish_table, run_autr

TEST_SEED = 1000
RESULTS = Path(__file__).resolve().parent / "results" / "paper_fidelity_synth.json"
DATA_SEEDS = {"s4": 0, "ms3": 2}
METRICS = ("miou", "fscore", "audio_swap")

# variant: (what it measures, extra train flags)
VARIANTS = {
    "baseline": ("config defaults (clip query rule; nothing frozen: no pretrained encoder)", []),
    "pixel-pool": ("global pooling in the pixel decoder", ["--pixel-pool"]),
    "dynamic-reference": ("input-dependent decoder reference points", ["--dynamic-reference"]),
    "cosine": ("cosine learning rate with 1 epoch of warm-up", ["--lr-schedule", "cosine", "--warmup-epochs", "1"]),
    "aux-loss": ("auxiliary losses on every decoder layer", ["--aux-loss"]),
}


def _shown(cmd: list[str]) -> str:
    return "autr " + shlex.join(cmd)


class Durations:
    """Seconds each measured step took, kept in ROOT/durations.json so that a resumed call still knows them."""

    def __init__(self, root: Path):
        self.path = root / "durations.json"
        self.seconds = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, key: str, seconds: float) -> float:
        self.seconds[key] = round(seconds, 1)
        self.path.write_text(json.dumps(self.seconds, indent=1))
        return seconds

    def total(self) -> float:
        return round(sum(self.seconds.values()), 1)


def _run(cmd: list[str], log, durations: Durations) -> float:
    return durations.add(_shown(cmd), run_autr(cmd, log, "fidelity"))


def _metrics(cmd: list[str], log, durations: Durations) -> dict:
    """The numbers of an `autr eval --json FILE` command's result, running it first unless FILE exists."""
    path = Path(cmd[-1])
    if not path.is_file():
        _run(cmd, log, durations)
    return {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))}


def commands(root: Path, args) -> dict:
    """The plan: data, train and eval command lines (lists, without the interpreter prefix)."""
    common = ["--preset", args.preset, "--size", str(args.size), "--workers", "0", "--threads", str(args.threads),
              "--quiet"]
    plan = {"data": {}, "runs": {}}
    for mode, seed in DATA_SEEDS.items():
        plan["data"][mode] = ["data", "synth", str(root / f"data-{mode}"), "--mode", mode, "--train", str(args.train),
                              "--val", str(args.val), "--test", "0", "--seed", str(seed), "--size", str(args.size),
                              "--workers", "1"]

    def evals(run_dir: Path, mode: str, rules) -> dict:
        return {rule: ["eval", "--checkpoint", str(run_dir / "best.safetensors"), "--synthetic", "--mode", mode,
                       "--seed", str(TEST_SEED), "--clips", str(args.test_clips), "--size", str(args.size),
                       "--threads", str(args.threads), "--quiet", "--query-select", rule,
                       "--json", str(run_dir / f"test-{rule}.json")] for rule in rules}

    for seed in args.seeds:
        for name, (_, flags) in VARIANTS.items():
            run_dir = root / f"s4-{name}-seed{seed}"
            train = ["train", "--data", str(root / "data-s4"), "--mode", "s4", "--out", str(run_dir), *common,
                     "--epochs", str(args.epochs), "--seed", str(seed), *flags]
            rules = ("clip", "frame") if name == "baseline" else ("clip",)
            plan["runs"][run_dir.name] = {"variant": name, "seed": seed, "mode": "s4", "train": train,
                                          "eval": evals(run_dir, "s4", rules)}
        run_dir = root / f"ms3-seed{seed}"
        train = ["train", "--data", str(root / "data-ms3"), "--mode", "ms3", "--out", str(run_dir), *common,
                 "--epochs", str(args.ms3_epochs), "--seed", str(seed),
                 "--init", str(root / f"s4-baseline-seed{seed}" / "best.safetensors")]
        plan["runs"][run_dir.name] = {"variant": "ms3", "seed": seed, "mode": "ms3", "train": train,
                                      "eval": evals(run_dir, "ms3", ("clip", "frame"))}
    plan["default"] = {rule: ["eval", "--checkpoint", "default", "--synthetic", "--mode", "s4", "--seed",
                              str(TEST_SEED), "--clips", str(args.test_clips), "--threads", str(args.threads),
                              "--quiet", "--query-select", rule, "--json", str(root / f"default-{rule}.json")]
                       for rule in ("clip", "frame")}
    return plan


# ------------------------------------------------------------------------------------------ S4 step time
def s4_step_time(data_dir: Path, args) -> dict:
    """Step time of every frame vs supervised frames only, on the same S4 batches, and their loss / gradients."""
    import torch

    from autr.criterion import AutrCriterion
    from autr.datasets import AVSBenchDataset, collate
    from autr.engine import train_step
    from autr.model import build_model

    torch.set_num_threads(args.threads)
    data = AVSBenchDataset(data_dir, "s4", "train", size=args.size)  # AVSBench S4: first frame supervised
    batch_size, n = 8, args.step_iters
    batches = [collate([data[(i * batch_size + j) % len(data)] for j in range(batch_size)]) for i in range(n + 2)]
    criterion = AutrCriterion()
    device = torch.device("cpu")

    # equal results: dropout off, the same weights, one batch each way; lr 0 keeps the weights
    grads, losses = {}, {}
    for name, only in (("all_frames", False), ("supervised_only", True)):
        model = build_model(args.preset, seed=0, image_size=args.size, dropout=0.0).train()
        out = train_step(model, criterion, batches[0], torch.optim.SGD(model.parameters(), lr=0.0), device,
                         supervised_only=only)
        losses[name] = {k: v.item() for k, v in out.items() if k != "matched"}
        grads[name] = [p.grad.clone() for p in model.parameters()]
    diff = max((a - b).abs().max().item() for a, b in zip(grads["all_frames"], grads["supervised_only"]))
    scale = max(a.abs().max().item() for a in grads["all_frames"])

    # step time: two models from one seed, AdamW as in training, the two paths alternating batch by batch
    models = {name: build_model(args.preset, seed=0, image_size=args.size).train() for name in ("before", "after")}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=5e-4) for name, m in models.items()}
    times = {"before": [], "after": []}
    for i, batch in enumerate(batches):
        for name, only in (("before", False), ("after", True)):
            tic = time.perf_counter()
            train_step(models[name], criterion, batch, opts[name], device, supervised_only=only)
            if i >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - tic)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    return {"preset": args.preset, "size": args.size, "batch": batch_size, "frames_per_clip": 5,
            "supervised_frames_per_clip": 1, "timed_steps": n, "threads": args.threads,
            "before_all_frames_s": round(before, 4), "after_supervised_only_s": round(after, 4),
            "speedup": round(before / after, 2),
            "equal_results": {"losses": losses,
                              "loss_abs_diff": abs(losses["all_frames"]["loss"] - losses["supervised_only"]["loss"]),
                              "grad_max_abs_diff": diff, "grad_max_abs": scale},
            "note": "median wall time of one optimiser step (forward, loss, backward, clip, AdamW) on batches loaded "
                    "beforehand; data loading is the same either way"}


# ------------------------------------------------------------------------------------------ runs
def _mean(values: list):
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def _summary(tests: list[dict]) -> dict:
    return {k: {"mean": _mean([t.get(k) for t in tests]), "per_seed": [t.get(k) for t in tests]} for k in METRICS}


def run_all(root: Path, args, log=print) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    plan = commands(root, args)
    durations = Durations(root)
    for mode, cmd in plan["data"].items():
        if not (root / f"data-{mode}" / "synth_info.json").is_file():
            _run(cmd, log, durations)
    step_file = root / "s4_step_time.json"
    if not step_file.is_file():
        log("timing the S4 step: every frame vs supervised frames only")
        tic = time.time()
        step = s4_step_time(root / "data-s4", args)
        durations.add("s4 step time", time.time() - tic)
        step_file.write_text(json.dumps(step, indent=2))
    runs = {}
    for name, step in plan["runs"].items():  # in order: each MS3 run starts from its seed's S4 baseline
        run_dir = Path(step["train"][step["train"].index("--out") + 1])
        if not (run_dir / "done.json").is_file():
            (run_dir / "done.json").write_text(json.dumps({"train_seconds": _run(step["train"], log, durations)}))
        tests = {rule: _metrics(cmd, log, durations) for rule, cmd in step["eval"].items()}
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        best = max(epochs, key=lambda r: r["val"]["miou"])
        runs[name] = {"variant": step["variant"], "seed": step["seed"], "mode": step["mode"], "test": tests,
                      "best_epoch": best["epoch"], "val_miou_best": best["val"]["miou"],
                      "train_seconds": round(json.loads((run_dir / "done.json").read_text())["train_seconds"], 1),
                      "commands": [_shown(step["train"])] + [_shown(c) for c in step["eval"].values()]}
    default = {rule: _metrics(cmd, log, durations) for rule, cmd in plan["default"].items()}
    return {"s4_step_time": json.loads(step_file.read_text()), "runs": runs, "default": default,
            "measured_seconds": durations.total(),
            "data_commands": [_shown(c) for c in plan["data"].values()],
            "default_commands": [_shown(c) for c in plan["default"].values()]}


def effects(runs: dict) -> dict:
    """Per variant: mean and per-seed test metrics, the change against the baseline, the seed spread."""
    out = {}
    base = _summary([r["test"]["clip"] for r in runs.values() if r["variant"] == "baseline"])
    for name, (what, flags) in VARIANTS.items():
        rows = [r for r in runs.values() if r["variant"] == name]
        summary = _summary([r["test"]["clip"] for r in rows])
        delta = {k: None if summary[k]["mean"] is None or base[k]["mean"] is None
                 else round(summary[k]["mean"] - base[k]["mean"], 4) for k in METRICS}
        spread = {k: round(max(v) - min(v), 4) if (v := [x for x in summary[k]["per_seed"] if x is not None]) else None
                  for k in METRICS}
        out[name] = {"what": what, "flags": flags, "test": summary, "delta_vs_baseline": delta,
                     "seed_spread": spread, "train_seconds_mean": _mean([r["train_seconds"] for r in rows]),
                     "train_command": rows[0]["commands"][0] if rows else None}
    return out


def query_rules(runs: dict, default: dict) -> dict:
    out = {}
    for mode, variant in (("s4", "baseline"), ("ms3", "ms3")):
        rows = [r for r in runs.values() if r["variant"] == variant]
        out[mode] = {rule: _summary([r["test"][rule] for r in rows]) for rule in ("clip", "frame")}
        out[mode]["runs"] = [r["commands"][0] for r in rows]
    out["default_model_s4"] = {rule: {k: default[rule].get(k) for k in METRICS} for rule in ("clip", "frame")}
    return out


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    lines = ["| change | test mIoU (per seed) | F | audio_swap | Δ mIoU | Δ audio_swap | seed spread mIoU | "
             "train s | train command |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in result["effects"].items():
        t, d = e["test"], e["delta_vs_baseline"]
        seeds = ", ".join(_fmt(v) for v in t["miou"]["per_seed"])
        lines.append(f"| {name} | {_fmt(t['miou']['mean'])} ({seeds}) | {_fmt(t['fscore']['mean'])} | "
                     f"{_fmt(t['audio_swap']['mean'])} | {_fmt(d['miou'])} | {_fmt(d['audio_swap'])} | "
                     f"{_fmt(e['seed_spread']['miou'])} | {_fmt(e['train_seconds_mean'], '.0f')} | "
                     f"`{e['train_command']}` |")
    lines += ["", "| query rule | S4 mIoU | S4 F | S4 audio_swap | MS3 mIoU | MS3 F | MS3 audio_swap | "
              "default model S4 mIoU | default audio_swap |", "|---|---|---|---|---|---|---|---|---|"]
    q = result["query_rules"]
    for rule in ("clip", "frame"):
        s4, ms3, d = q["s4"][rule], q["ms3"][rule], q["default_model_s4"][rule]
        cells = [s4["miou"]["mean"], s4["fscore"]["mean"], s4["audio_swap"]["mean"], ms3["miou"]["mean"],
                 ms3["fscore"]["mean"], ms3["audio_swap"]["mean"], d["miou"], d["audio_swap"]]
        lines.append(f"| {rule} | " + " | ".join(_fmt(v) for v in cells) + " |")
    s = result["s4_step_time"]
    eq = s["equal_results"]
    lines += ["", f"S4 training step (`{s['preset']}`, {s['size']}x{s['size']}, batch {s['batch']}, 1 of 5 frames "
              f"supervised, {s['threads']} thread): {s['before_all_frames_s']:.3f} s with every frame, "
              f"{s['after_supervised_only_s']:.3f} s with the supervised frames only ({s['speedup']:.2f}x); same "
              f"batch, dropout off: loss differs by {eq['loss_abs_diff']:.1e}, gradients by at most "
              f"{eq['grad_max_abs_diff']:.1e} (largest gradient {eq['grad_max_abs']:.1e})."]
    b = result["budget"]
    lines.append(f"Budget per run: `{b['preset']}` at {b['size']}x{b['size']}, {b['train']} training clips, S4 "
                 f"{b['epochs']} epochs from scratch, MS3 {b['ms3_epochs']} epochs from the seed's S4 baseline, "
                 f"batch 8, AdamW 1e-4, seeds {', '.join(map(str, b['seeds']))}, {b['threads']} thread; test: "
                 f"{b['test_clips']} clips of seed {TEST_SEED}; {result['hardware']}, {result['date']}; "
                 f"{result['measured_seconds'] / 60:.0f} min of measurement in all.")
    return "\n".join(lines)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers like 0,1; got {text!r}") from None
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes distinct integers like 0,1; got {text!r}")
    return seeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/fidelity"), help="Where data and runs go.")
    p.add_argument("--preset", default="small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", type=int, default=400, help="Training clips per data set.")
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10, help="S4 epochs (from scratch).")
    p.add_argument("--ms3-epochs", type=int, default=2, help="MS3 epochs (fine-tuned from the S4 baseline).")
    p.add_argument("--seeds", type=_seeds, default=[0, 1])
    p.add_argument("--test-clips", type=int, default=100)
    p.add_argument("--step-iters", type=int, default=10, help="Timed S4 steps per path.")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every run.")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for key in ("size", "train", "val", "epochs", "ms3_epochs", "test_clips", "step_iters", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1; got {getattr(args, key)}")
    if args.size % 32:
        p.error(f"--size must be a multiple of 32; got {args.size}")
    started, load = time.time(), os.getloadavg()[0]
    measured = run_all(args.root, args)
    result = {**driver_header("fidelity", argv), "load_average_at_start": round(load, 2),
              "budget": {k: getattr(args, k) for k in ("preset", "size", "train", "val", "epochs", "ms3_epochs",
                                                       "seeds", "test_clips", "threads")},
              "measured_seconds": measured["measured_seconds"],
              "seconds_this_call": round(time.time() - started, 1),
              "s4_step_time": measured["s4_step_time"],
              "effects": effects(measured["runs"]),
              "query_rules": query_rules(measured["runs"], measured["default"]),
              "freezing": "no effect on these runs: SynthAVS trains every encoder from scratch (no pretrained file), "
                          "so nothing is frozen; tests/test_freezing.py covers build, --init, --resume and checkpoints",
              "data_commands": measured["data_commands"], "default_commands": measured["default_commands"],
              "runs": measured["runs"]}
    publish_table(result, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
