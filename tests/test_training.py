"""`autr train` on tiny SynthAVS data: a run, resume, fine-tune guard, DDP on two CPU processes, learning."""
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import autr
from autr.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from autr.cli import main
from autr.criterion import AutrCriterion
from autr.datasets import AVSBenchDataset, collate
from autr.synth import generate
from autr.training import TrainConfig, train


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, mode="s4", n_train=6, n_val=2, n_test=2, seed=0, size=64, workers=1, progress=False)
    return root


def cfg(root, out, **kw):
    base = dict(data=str(root), out=str(out), preset="tiny", epochs=1, batch_size=3, workers=0,
                full_gt=True, progress=False)
    return TrainConfig(**{**base, **kw})


def test_a_run_writes_checkpoints_logs_and_plot(synth_root, tmp_path):
    result = train(cfg(synth_root, tmp_path, size=64))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert set(rows[0]["train"]) >= {"loss", "loss_dice", "loss_focal", "loss_sound"}
    assert set(rows[0]["val"]) >= {"miou", "fscore", "miou_dataset"}
    assert result["best_miou"] == rows[0]["val"]["miou"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_checkpoint(tmp_path / "best.safetensors", expect="tiny")
    assert read_checkpoint(tmp_path / "best.safetensors")[2]["epoch"] == 1
    assert model.cfg.name == "tiny"
    assert model.cfg.image_size == 64  # the checkpoint records the size it was trained at


def test_resume_continues_where_it_stopped(synth_root, tmp_path):
    train(cfg(synth_root, tmp_path, epochs=1))
    first = load_checkpoint(tmp_path / "last.safetensors").state_dict()
    train(cfg(synth_root, tmp_path, epochs=2, resume=True))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    second = load_checkpoint(tmp_path / "last.safetensors").state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first if first[k].is_floating_point())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "last.state.safetensors"), "pt") as f:
        steps = f.get_tensor("0.step")
    assert steps.item() == 4  # 2 epochs x 2 batches of 3 clips: the optimiser state came back
    with pytest.raises(ValueError, match="already done 2 epoch"):  # nothing left to do is said, not done silently
        train(cfg(synth_root, tmp_path, epochs=2, resume=True))


def test_zero_epochs_are_refused_before_anything_loads(synth_root, tmp_path):
    """`--epochs 0` exited 0 with "best validation mIoU -1.0000" and no checkpoint."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(synth_root), "--out", str(out), "--preset", "tiny",
                                       "--epochs", "0", "--quiet"])
    assert result.exit_code == 2 and "--epochs must be >= 1" in result.output and result.output.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train(cfg(synth_root, tmp_path / "lib", epochs=0))
    result = CliRunner().invoke(main, ["train", "--data", str(synth_root), "--out", str(out), "--preset", "tiny",
                                       "--batch-size", "0", "--quiet"])
    assert result.exit_code == 2 and "--batch-size must be >= 1" in result.output


def test_an_empty_validation_split_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    root = tmp_path / "data"
    generate(root, mode="s4", n_train=1, n_val=0, n_test=0, seed=0, size=32, workers=1, progress=False)
    import autr.training

    monkeypatch.setattr(autr.training, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    result = CliRunner().invoke(main, ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--preset",
                                       "tiny", "--quiet"])
    assert result.exit_code == 2 and "no s4 clips in its 'val' split" in result.output, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_resume_without_a_run_is_one_clear_error(synth_root, tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(synth_root), "--out", str(tmp_path / "none"),
                                       "--preset", "tiny", "--resume", "--quiet"])
    assert result.exit_code == 2 and "has no last.safetensors" in result.output


def test_init_from_a_checkpoint_of_another_config_is_refused(synth_root, tmp_path):
    path = tmp_path / "other.safetensors"
    autr.save_checkpoint(autr.build_model("tiny", dynamic_conv=False), path)
    with pytest.raises(CheckpointError, match="dynamic_conv"):
        train(cfg(synth_root, tmp_path / "run", init=str(path)))


def test_ddp_on_two_cpu_processes(synth_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "-m", "autr.cli", "train", "--data", str(synth_root), "--out", str(tmp_path), "--preset", "tiny",
           "--epochs", "1", "--batch-size", "1", "--workers", "0", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run.json").read_text())["world_size"] == 2
    assert proc.stdout.count("best validation mIoU") == 1  # only rank 0 reports
    load_checkpoint(tmp_path / "last.safetensors")


def test_the_model_can_fit_a_batch(synth_root):
    """A learning sanity check: 40 steps on two clips cut the loss by more than half."""
    torch.manual_seed(0)
    data = AVSBenchDataset(synth_root, "s4", "train", size=64, full_gt=True)
    batch = collate([data[0], data[1]])
    model = autr.build_model("tiny", seed=0).train()
    criterion = AutrCriterion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        out = model(batch["frames"], batch["log_mel"])
        loss = criterion(out, batch["masks"].flatten(0, 1), valid=batch["valid"].flatten(0, 1), clip_len=5)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
