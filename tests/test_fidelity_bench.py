"""The paper-fidelity driver: every variant differs from the baseline only by its own flags, one thread each."""
import argparse
from pathlib import Path

import pytest

from autr.benchmarks.fidelity import TEST_SEED, VARIANTS, commands, effects, markdown, query_rules


def _args(**kw):
    base = dict(preset="small", size=64, train=400, val=20, epochs=10, ms3_epochs=2, seeds=[0, 1], test_clips=100,
                threads=1)
    return argparse.Namespace(**{**base, **kw})


def test_runs_differ_only_in_what_they_measure():
    plan = commands(Path("runs/f"), _args())
    assert len(plan["runs"]) == 2 * (len(VARIANTS) + 1)
    for seed in (0, 1):
        base = plan["runs"][f"s4-baseline-seed{seed}"]["train"]
        for name, (_, flags) in VARIANTS.items():
            train = plan["runs"][f"s4-{name}-seed{seed}"]["train"]
            out = train.index("--out")
            assert train[:out + 1] + train[out + 2:] == base[:out + 1] + base[out + 2:] + flags, name
        ms3 = plan["runs"][f"ms3-seed{seed}"]
        assert ms3["train"][-2:] == ["--init", f"runs/f/s4-baseline-seed{seed}/best.safetensors"]
        assert set(ms3["eval"]) == {"clip", "frame"} and set(plan["runs"][f"s4-baseline-seed{seed}"]["eval"]) == {
            "clip", "frame"}
    every = [c for r in plan["runs"].values() for c in [r["train"], *r["eval"].values()]] + list(plan["default"].values())
    for cmd in every:
        assert cmd[cmd.index("--threads") + 1] == "1" and "--full-gt" not in cmd
        if cmd[0] == "eval":
            assert cmd[cmd.index("--seed") + 1] == str(TEST_SEED)
    for cmd in plan["data"].values():
        assert cmd[cmd.index("--workers") + 1] == "1" and int(cmd[cmd.index("--seed") + 1]) != TEST_SEED


def test_effects_are_differences_of_seed_means():
    def run(variant, seed, miou, swap=0.5):
        test = {"miou": miou, "fscore": 0.5, "audio_swap": swap}
        return {"variant": variant, "seed": seed, "test": {"clip": test, "frame": {**test, "miou": miou - 0.1}},
                "train_seconds": 100.0, "commands": [f"autr train {variant} {seed}"]}

    runs = {f"{v}-{s}": run(v, s, m) for v, s, m in [("baseline", 0, 0.4), ("baseline", 1, 0.6),
                                                     ("pixel-pool", 0, 0.5), ("pixel-pool", 1, 0.8),
                                                     ("ms3", 0, 0.3), ("ms3", 1, 0.3)]}
    out = effects(runs)
    assert out["baseline"]["test"]["miou"]["mean"] == pytest.approx(0.5)
    assert out["pixel-pool"]["delta_vs_baseline"]["miou"] == pytest.approx(0.15)
    assert out["pixel-pool"]["seed_spread"]["miou"] == pytest.approx(0.3)
    assert out["cosine"]["test"]["miou"]["mean"] is None  # not run: no number is made up
    rules = query_rules(runs, {r: {"miou": 0.8, "fscore": 0.9, "audio_swap": 0.99} for r in ("clip", "frame")})
    assert rules["s4"]["frame"]["miou"]["mean"] == pytest.approx(0.4) and rules["ms3"]["clip"]["miou"]["mean"] == 0.3
    step = {"preset": "small", "size": 64, "batch": 8, "threads": 1, "before_all_frames_s": 1.2,
            "after_supervised_only_s": 0.3, "speedup": 4.0,
            "equal_results": {"loss_abs_diff": 0.0, "grad_max_abs_diff": 1e-9, "grad_max_abs": 0.01}}
    table = markdown({"effects": out, "query_rules": rules, "s4_step_time": step, "budget": vars(_args()),
                      "hardware": "cpu", "date": "today", "measured_seconds": 3000})
    assert "| pixel-pool | 0.650 (0.500, 0.800) |" in table and "`autr train pixel-pool 0`" in table
    assert "| cosine | – () |" in table and "1.200 s with every frame" in table and "50 min" in table
