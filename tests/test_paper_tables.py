"""The paper-tables driver: each row trains with the flags its table is about, on one shared budget."""
import argparse
from pathlib import Path

from autr.benchmarks.paper_tables import TEST_SEED, commands, markdown


def _args(**kw):
    base = dict(preset="small", size=64, train=400, val=40, epochs=12, test_clips=100)
    return argparse.Namespace(**{**base, **kw})


def test_rows_differ_only_in_what_their_table_measures():
    plan = commands(Path("runs/paper"), _args())
    s4 = plan["s4"]["train"]
    assert plan["no-audio-queries"]["train"] == [*s4[:6], "runs/paper/no-audio-queries", *s4[7:-1],
                                                 "--no-audio-queries", "--full-gt"]
    assert "--no-dynamic-conv" in plan["no-dynamic-conv"]["train"]
    assert plan["ms3-from-s4"]["train"][-2:] == ["--init", "runs/paper/s4/best.safetensors"]
    assert "--init" not in plan["ms3"]["train"] and "--full-gt" not in plan["ms3"]["train"]
    assert "--open-set" in plan["open-set"]["data"] and "--open-set" in plan["open-set"]["eval"]
    for name, step in plan.items():
        assert step["eval"][step["eval"].index("--seed") + 1] == str(TEST_SEED)  # no training set uses it
        assert step["train"][step["train"].index("--epochs") + 1] == "12"
        seed = step["data"][step["data"].index("--seed") + 1]
        assert int(seed) != TEST_SEED, name


def test_markdown_lists_every_row_with_its_command():
    rows = {name: {"table": "I", "row": name, "test": {"miou": 0.5, "fscore": 0.6, "audio_swap": 0.7},
                   "commands": ["autr data ...", f"autr train ... {name}", "autr eval ..."]}
            for name in ("s4", "ms3")}
    rows["s4"]["test"].update(miou_seen=0.8, miou_unseen=0.2)
    table = markdown({"rows": rows, "budget": vars(_args()), "hardware": "cpu", "date": "today"})
    assert "| 0.800 / 0.200 |" in table and "`autr train ... ms3`" in table and table.count("\n| I |") == 2
