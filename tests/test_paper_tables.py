"""The paper-tables driver: each row trains with the flags its table is about, on one shared budget, for both
methods and every seed; the verdicts compare seed means against the seed spread."""
import argparse
import json
from pathlib import Path

import pytest

from autr.benchmarks.paper_tables import (RUNS, TEST_SEED, _one, commands, markdown, run_name, summarize,
                                          verdicts)


def _args(**kw):
    base = dict(preset="small", tpavi_preset="tpavi-small", methods=["autr", "tpavi"], seeds=[0, 1], jobs=2,
                size=64, train=300, val=40, epochs=10, test_clips=100)
    return argparse.Namespace(**{**base, **kw})


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_rows_differ_only_in_what_their_table_measures():
    root = Path("runs/paper")
    plan = commands(root, _args())
    # AuTR has every row, TPAVI Tables I-III only; two seeds each
    assert len(plan) == 2 * len(RUNS) + 2 * 4
    assert not any(k.startswith("tpavi-no-") for k in plan)
    s4 = plan["autr-s4-s0"]["train"]
    ablation = plan["autr-no-audio-queries-s0"]["train"]
    assert ablation[:-1] == [*s4[:6], str(root / "autr-no-audio-queries-s0"), *s4[7:]] and \
        ablation[-1] == "--no-audio-queries"
    assert "--no-dynamic-conv" in plan["autr-no-dynamic-conv-s1"]["train"]
    for method in ("autr", "tpavi"):
        for seed in (0, 1):
            # fine-tuning starts from the same method's S4 model of the same seed
            step = plan[run_name(method, "ms3-from-s4", seed)]
            assert step["train"][-2:] == ["--init", str(root / run_name(method, "s4", seed) / "best.safetensors")]
            assert step["init"] == run_name(method, "s4", seed)
            assert "--init" not in plan[run_name(method, "ms3", seed)]["train"]
            assert _flag(plan[run_name(method, "s4", seed)]["train"], "--preset") == \
                ("small" if method == "autr" else "tpavi-small")
    # the open set is the factored design (new combinations of trained factors), in data and in eval
    open_set = plan["tpavi-open-set-s1"]
    assert "--open-set" in open_set["data"] and _flag(open_set["data"], "--design") == "factored"
    assert "--open-set" in open_set["eval"] and _flag(open_set["eval"], "--design") == "factored"
    for name, step in plan.items():
        assert "--full-gt" not in step["train"], name  # S4 supervises the first frame, as the paper's S4
        assert _flag(step["eval"], "--seed") == str(TEST_SEED)  # no training set uses it
        assert _flag(step["train"], "--epochs") == "10" and _flag(step["train"], "--threads") in ("1", "2")
        assert int(_flag(step["data"], "--seed")) != TEST_SEED, name
        assert _flag(step["train"], "--seed") == name.rsplit("-s", 1)[1]


def _runs(values: dict) -> dict:
    """values: {(method, run): [metric dict per seed]} -> driver run records."""
    out = {}
    for (method, run), per_seed in values.items():
        for seed, test in enumerate(per_seed):
            out[run_name(method, run, seed)] = {"method": method, "run": run, "seed": seed, "test": test,
                                                "commands": ["autr data ...", f"autr train ... {run}", "autr eval"]}
    return out


def test_summary_and_verdicts_compare_seed_means_with_the_spread():
    runs = _runs({
        ("autr", "s4"): [{"miou": 0.60, "fscore": 0.7, "audio_swap": 0.9}, {"miou": 0.50, "fscore": 0.6,
                                                                            "audio_swap": 0.8}],
        ("tpavi", "s4"): [{"miou": 0.52, "fscore": 0.6, "audio_swap": 0.5}, {"miou": 0.50, "fscore": 0.6,
                                                                             "audio_swap": 0.4}],
        ("autr", "ms3"): [{"miou": 0.4}, {"miou": 0.4}],
        ("tpavi", "ms3"): [{"miou": 0.5}, {"miou": 0.5}],
        ("autr", "open-set"): [{"miou": 0.5, "miou_seen": 0.6, "miou_unseen": 0.42},
                               {"miou": 0.5, "miou_seen": 0.6, "miou_unseen": 0.38}],
    })
    summary = summarize(runs)
    assert summary["autr/s4"]["miou"] == {"mean": 0.55, "spread": 0.05, "values": [0.6, 0.5]}
    assert summary["autr/open-set"]["miou_unseen"]["mean"] == 0.4
    by_claim = {v["claim"]: v for v in verdicts(summary)}
    # S4: +0.04 against a spread of 0.05 + 0.01: the right direction, not beyond the seeds
    assert by_claim["I: AuTR beats TPAVI on S4"]["verdict"] == "same direction, within the seed spread"
    assert by_claim["I: AuTR beats TPAVI on MS3"]["verdict"] == "does not reproduce"
    swap = next(v for k, v in by_claim.items() if "audio_swap" == v["metric"])
    assert swap["verdict"] == "reproduces" and swap["difference"] == 0.4
    # a claim whose rows did not run is left out, not guessed
    assert not any(v["claim"].startswith("III") for v in by_claim.values())
    result = {"summary": summary, "verdicts": verdicts(summary), "runs": runs, "hardware": "cpu", "date": "today",
              "budget": {**vars(_args()), "seeds": [0, 1]}}
    table = markdown(result)
    assert "| I | S4-synth | 0.550 ± 0.050 | 0.510 ± 0.010 |" in table
    assert "| AuTR | 0.600 ± 0.000 | 0.400 ± 0.020 |" in table and "| TPAVI | – | – |" in table
    assert "same direction, within the seed spread" in table and "over 2 training seeds" in table


def test_a_finished_run_is_read_back_with_its_training_curves(tmp_path):
    """A run that a previous call finished is not trained again; its record keeps the per-epoch validation
    mIoU and training loss (the figure's right panel) and the best epoch by validation mIoU."""
    run = tmp_path / "autr-s4-s0"
    run.mkdir()
    (run / "done.json").write_text(json.dumps({"train_seconds": 12.34}))
    (run / "test.json").write_text(json.dumps({"miou": 0.5, "fscore": 0.6, "size": 64, "note": "text is dropped"}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train": {"loss": 3.0 - e}, "val": {"miou": m}}) + "\n"
        for e, m in ((1, 0.2), (2, 0.31), (3, 0.25))))
    step = {k: ["false"] for k in ("data", "train", "eval")}  # would fail if anything ran
    rec = _one(tmp_path, "autr-s4-s0", step, log=lambda *_: None)
    assert rec["best_epoch"] == 2 and rec["val_miou_best"] == 0.31
    assert rec["val_miou_curve"] == [0.2, 0.31, 0.25] and rec["train_loss_curve"] == [2.0, 1.0, 0.0]
    assert rec["test"] == {"miou": 0.5, "fscore": 0.6, "size": 64} and rec["train_seconds"] == 12.3


def test_the_figure_shows_both_methods_and_every_curve(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from autr.benchmarks import plots
    from autr.benchmarks.plots import plot_paper_tables

    drawn = {}
    save = plots._save

    def keep(fig, path):  # the figure as drawn, before it is written and closed
        left, right = fig.axes
        drawn["legend"] = [t.get_text() for t in left.get_legend().get_texts()]
        drawn["bars"] = len(left.patches)
        drawn["curves"] = {line.get_label(): list(line.get_ydata()) for line in right.get_lines()}
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)

    runs = _runs({("autr", "s4"): [{"miou": 0.3, "audio_swap": 0.4}, {"miou": 0.2, "audio_swap": 0.3}],
                  ("tpavi", "s4"): [{"miou": 0.1, "audio_swap": 0.2}, {"miou": 0.2, "audio_swap": 0.1}],
                  ("autr", "open-set"): [{"miou_seen": 0.4, "miou_unseen": 0.3}, {"miou_seen": 0.5,
                                                                                   "miou_unseen": 0.2}]})
    for i, r in enumerate(runs.values()):
        r["val_miou_curve"] = [0.1 * i, 0.2, 0.25 + 0.01 * i][: 2 + i % 2]  # seeds may stop at different epochs
    result = {"summary": summarize(runs), "runs": runs, "budget": vars(_args()), "hardware": "cpu"}
    path = plot_paper_tables(result, tmp_path / "paper.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert drawn["legend"] == ["AuTR", "TPAVI"]
    assert drawn["bars"] == 6  # AuTR: S4, open set seen / unseen, audio_swap; TPAVI: S4, audio_swap
    # one curve per method and row, the mean over its seeds, as long as the shortest seed's
    assert drawn["curves"].keys() == {"AuTR s4", "TPAVI s4", "AuTR open-set"}
    assert drawn["curves"]["AuTR s4"] == pytest.approx([0.05, 0.2])
    assert drawn["curves"]["TPAVI s4"] == pytest.approx([0.25, 0.2])
