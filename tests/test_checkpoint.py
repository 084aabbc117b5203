"""safetensors checkpoints carry their config; loading never unpickles and refuses mismatches."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import autr
from autr.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = autr.build_model("tiny", seed=3, dynamic_conv=False).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, path, metadata={"epoch": 4, "miou": 0.5})
    return model, path


def run(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 1, 96, 64, generator=g))["masks"]


def test_roundtrip_rebuilds_the_same_model(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg and not loaded.cfg.dynamic_conv
    torch.testing.assert_close(run(loaded), run(model), rtol=0, atol=0)
    cfg, _, meta = read_checkpoint(path)
    assert meta["epoch"] == 4 and meta["miou"] == 0.5
    assert not list(path.parent.glob("*.tmp"))


def test_half_precision_file_loads_as_float32(tmp_path, saved):
    model, _ = saved
    path = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert all(v.dtype in (torch.float16, torch.int64) for v in load_file(str(path)).values())
    loaded = load_checkpoint(path)
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(run(loaded), run(model), rtol=2e-2, atol=2e-2)


def test_checkpoint_from_another_config_is_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="dynamic_conv: expected True, checkpoint has False"):
        load_checkpoint(path, expect="tiny")
    with pytest.raises(CheckpointError, match="backbone: expected 'pvt_v2_b0'"):
        load_checkpoint(path, expect="small")


def test_checkpoint_whose_tensors_do_not_match_its_config(tmp_path, saved):
    _, path = saved
    tensors = load_file(str(path))
    meta = {"autr_config": read_checkpoint(path)[0].to_json()}
    del tensors["score_head.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="missing keys: score_head.bias"):
        load_checkpoint(bad)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by autr"):
        load_checkpoint(foreign)
    odd = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(2)}, str(odd), metadata={"autr_config": json.dumps({"wings": 2})})
    with pytest.raises(CheckpointError, match="unknown config keys"):
        load_checkpoint(odd)
