"""Local pretrained weights: timm/torchvision backbones, the PyTorch VGGish layout, clear errors."""
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

import autr
from autr.presets import get_config
from autr.weights import WeightsError, load_backbone_weights, load_vggish_weights

# The public PyTorch VGGish state dict (torchvggish port of the TensorFlow release): names and shapes.
VGGISH_KEYS = {
    "features.0": (64, 1), "features.3": (128, 64), "features.6": (256, 128), "features.8": (256, 256),
    "features.11": (512, 256), "features.13": (512, 512),
}
VGGISH_FC = {"embeddings.0": (4096, 12288), "embeddings.2": (4096, 4096), "embeddings.4": (128, 4096)}


def torchvggish_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (o, i) in VGGISH_KEYS.items():
        sd[f"{k}.weight"] = torch.randn(o, i, 3, 3, generator=g) * 0.01
        sd[f"{k}.bias"] = torch.randn(o, generator=g) * 0.01
    for k, (o, i) in VGGISH_FC.items():
        sd[f"{k}.weight"] = torch.randn(o, i, generator=g) * 0.01
        sd[f"{k}.bias"] = torch.randn(o, generator=g) * 0.01
    sd["pproc._pca_matrix"] = torch.eye(128)
    sd["pproc._pca_means"] = torch.zeros(128, 1)
    return sd


@pytest.fixture(scope="module")
def timm_resnet10t():
    return timm.create_model("resnet10t", pretrained=False).state_dict()


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_backbone_weights_load_and_freeze(tmp_path, timm_resnet10t, fmt):
    sd = {k: v + 0.5 if v.is_floating_point() else v for k, v in timm_resnet10t.items()}  # not the init
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "wrapped":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save(sd, path)
    model = autr.build_model("tiny", backbone_weights=path)
    body = model.visual.body.state_dict()
    assert torch.equal(body["conv1.0.weight"], sd["conv1.0.weight"])
    assert torch.equal(body["layer4.0.bn2.running_var"], sd["layer4.0.bn2.running_var"])
    assert not any(p.requires_grad for p in model.visual.parameters())
    model.train()
    assert not model.visual.body.training  # frozen BN statistics stay frozen in training mode
    assert model.audio.training


def test_backbone_weights_name_missing_and_unexpected_keys(tmp_path, timm_resnet10t):
    sd = dict(timm_resnet10t)
    del sd["layer2.0.conv1.weight"]
    sd["layer9.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        autr.build_model("tiny", backbone_weights=path)
    assert "missing keys: layer2.0.conv1.weight" in str(err.value)
    assert "unexpected keys: layer9.extra.weight" in str(err.value)


def test_backbone_weights_of_another_architecture(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit the resnet10t backbone of preset 'tiny'"):
        autr.build_model("tiny", backbone_weights=path)


def test_unreadable_weight_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        autr.build_model("tiny", backbone_weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        autr.build_model("tiny", backbone_weights=junk)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": object()}, f)
    with pytest.raises(WeightsError, match="cannot read weights"):  # never unpickles arbitrary objects
        autr.build_model("tiny", backbone_weights=evil)


def test_torchvggish_state_dict_loads_key_for_key(tmp_path):
    sd = torchvggish_state_dict()
    path = tmp_path / "vggish.pth"
    torch.save(sd, path)
    model = autr.AuTR(get_config("tiny", vggish_width=1.0, vggish_fc=4096))
    load_vggish_weights(model, path)
    got = model.audio.state_dict()
    assert set(got) == {k for k in sd if not k.startswith("pproc.")}
    assert all(torch.equal(got[k], sd[k]) for k in got)
    assert model.audio(torch.randn(2, 1, 96, 64)).shape == (2, 128)


def test_vggish_errors(tmp_path):
    sd = torchvggish_state_dict()
    del sd["embeddings.4.bias"]
    path = tmp_path / "vggish.pth"
    torch.save(sd, path)
    model = autr.AuTR(get_config("tiny", vggish_width=1.0, vggish_fc=4096))
    with pytest.raises(WeightsError, match="missing keys: embeddings.4.bias"):
        load_vggish_weights(model, path)
    with pytest.raises(WeightsError, match="fit only full-width presets"):
        load_vggish_weights(autr.build_model("tiny"), path)


def test_backbone_weights_for_pvt(tmp_path):
    path = tmp_path / "pvt.safetensors"
    sd = timm.create_model("pvt_v2_b0", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = autr.AuTR(get_config("small"))
    load_backbone_weights(model, path)
    assert torch.equal(model.visual.body.state_dict()["patch_embed.proj.weight"], sd["patch_embed.proj.weight"])
