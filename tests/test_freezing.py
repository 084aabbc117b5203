"""Freezing is configuration (issue 12): it survives build, checkpoints, `--init` and `--resume`, whatever the
source of the weights; frozen encoders keep their weights and batch-norm statistics and never reach the
optimiser."""
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import autr
from autr.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_checkpoint, save_checkpoint
from autr.cli import main
from autr.presets import get_config
from autr.synth import generate
from autr.training import TrainConfig, check_optimizer, freeze_flags, train


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A resnet10t state dict that is not the model's initialisation (so a trained copy would show)."""
    sd = timm.create_model("resnet10t", pretrained=False).state_dict()
    sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path_factory.mktemp("weights") / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, mode="s4", n_train=4, n_val=1, n_test=0, seed=0, size=64, workers=1, progress=False)
    return root


def visual_state(model) -> dict:
    return {k: v.clone() for k, v in model.visual.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def assert_frozen(model, name="visual"):
    part = getattr(model, name)
    assert not any(p.requires_grad for p in part.parameters())
    model.train()
    assert not any(m.training for m in part.modules())  # batch-norm statistics stay fixed in training mode
    assert model.score_head.training


def test_an_encoder_loaded_from_a_file_is_frozen_one_from_scratch_is_not(backbone_file):
    model = autr.build_model("tiny", backbone_weights=backbone_file)
    assert model.cfg.freeze_visual and not model.cfg.freeze_audio and model.cfg.frozen_encoders == ["visual"]
    assert_frozen(model)
    assert all(p.requires_grad for p in model.audio.parameters())
    before = visual_state(model)
    model(torch.randn(2, 3, 64, 64), torch.randn(2, 1, 96, 64))  # a training-mode forward
    assert same(before, visual_state(model))  # running_mean / running_var did not move

    scratch = autr.build_model("small")
    assert not scratch.cfg.freeze_visual and not scratch.cfg.freeze_audio
    assert all(p.requires_grad for p in scratch.parameters()) and not scratch.frozen_parameters()

    tuned = autr.build_model("tiny", backbone_weights=backbone_file, freeze_visual=False)  # override: fine-tune
    assert all(p.requires_grad for p in tuned.visual.parameters()) and tuned.train().visual.body.training
    forced = autr.build_model("tiny", freeze_audio=True)  # override: freeze an encoder trained from scratch
    assert_frozen(forced, "audio")


def test_a_loaded_vggish_is_frozen(tmp_path):
    from autr.encoders import VGGish

    path = tmp_path / "vggish.pth"
    torch.save(VGGish(1.0, 4096, 128).state_dict(), path)  # the torchvggish layout, key for key
    model = autr.build_model(get_config("tiny", vggish_width=1.0, vggish_fc=4096), vggish_weights=path)
    assert model.cfg.freeze_audio and not model.cfg.freeze_visual
    assert_frozen(model, "audio")


def test_a_checkpoint_carries_the_freeze(tmp_path, backbone_file):
    model = autr.build_model("tiny", backbone_weights=backbone_file, seed=0)
    path = save_checkpoint(model, tmp_path / "frozen.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.cfg.freeze_visual
    assert_frozen(loaded)
    assert load_checkpoint(path, expect="tiny").cfg.freeze_visual  # freezing is not architecture


def test_checkpoints_from_before_the_field_load_as_they_were_made(tmp_path):
    model = autr.build_model("tiny", seed=0)
    config = model.cfg.to_dict()
    for key in ("freeze_visual", "freeze_audio", "query_select", "pixel_pool", "dynamic_reference", "aux_loss"):
        del config[key]
    import json

    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    for frozen in (True, False):
        path = tmp_path / f"old-{frozen}.safetensors"
        save_file(tensors, str(path), metadata={"autr_config": json.dumps(config),
                                                "backbone_frozen": json.dumps(frozen)})
        old = load_checkpoint(path)
        assert old.cfg.freeze_visual is frozen and not old.cfg.freeze_audio
        assert old.cfg.query_select == "frame"  # how they picked their query
    # the embedded default was written before the fields too: nothing frozen, per-frame queries as measured
    default = load_checkpoint(DEFAULT_CHECKPOINT)
    assert default.cfg.query_select == "frame" and default.cfg.frozen_encoders == []
    g = torch.Generator().manual_seed(0)
    frames, log_mel = torch.randn(3, 3, 128, 128, generator=g), torch.randn(3, 1, 96, 64, generator=g)
    with torch.no_grad():
        masks, scores = default.forward_queries(frames, log_mel)
        out = default(frames, log_mel)
    torch.testing.assert_close(out["scores"], scores.max(1).values, rtol=0, atol=0)


def cfg(root, out, **kw):
    base = dict(data=str(root), out=str(out), preset="tiny", size=64, epochs=1, batch_size=2, workers=0,
                full_gt=True, progress=False, lr=1e-2)
    return TrainConfig(**{**base, **kw})


def test_the_freeze_survives_training_init_and_resume(synth_root, tmp_path, backbone_file):
    loaded = visual_state(autr.build_model("tiny", backbone_weights=backbone_file))
    run = tmp_path / "pretrained"
    train(cfg(synth_root, run, backbone_weights=str(backbone_file)))
    first = load_checkpoint(run / "last.safetensors")
    assert first.cfg.freeze_visual
    assert same(loaded, visual_state(first))  # weights and batch-norm statistics untouched by training
    assert not same({k: v for k, v in autr.build_model("tiny", seed=0).state_dict().items() if k.startswith("audio")},
                    {k: v for k, v in first.state_dict().items() if k.startswith("audio")})  # the audio trained

    train(cfg(synth_root, run, epochs=2, resume=True))  # no --backbone-weights: the run's config says frozen
    assert same(loaded, visual_state(load_checkpoint(run / "last.safetensors")))

    init = tmp_path / "init"  # --init without --backbone-weights keeps the checkpoint's freeze (Table II S4 -> MS3)
    assert freeze_flags(cfg(synth_root, init, init=str(run / "best.safetensors"))) == {
        "freeze_visual": True, "freeze_audio": False}
    train(cfg(synth_root, init, init=str(run / "best.safetensors")))
    assert load_checkpoint(init / "last.safetensors").cfg.freeze_visual
    assert same(visual_state(load_checkpoint(run / "best.safetensors")),
                visual_state(load_checkpoint(init / "last.safetensors")))

    thawed = tmp_path / "thawed"  # the override trains it after all
    train(cfg(synth_root, thawed, init=str(run / "best.safetensors"), freeze={"freeze_visual": False}))
    model = load_checkpoint(thawed / "last.safetensors")
    assert not model.cfg.freeze_visual and not same(loaded, visual_state(model))


def test_no_frozen_parameter_reaches_the_optimiser(backbone_file):
    model = autr.build_model("tiny", backbone_weights=backbone_file)
    check_optimizer(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    with pytest.raises(RuntimeError, match="frozen parameter.*reached the optimiser"):
        check_optimizer(model, torch.optim.AdamW(model.parameters()))
    next(model.visual.parameters()).requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen encoder .*visual.* requires grad"):
        check_optimizer(model, torch.optim.AdamW([p for p in model.audio.parameters()]))


def test_freezing_flags_are_checked_before_anything_loads(synth_root, tmp_path, monkeypatch):
    import autr.training

    monkeypatch.setattr(autr.training, "load_checkpoint", lambda *a, **k: pytest.fail("a checkpoint was loaded"))
    result = CliRunner().invoke(main, ["train", "--data", str(synth_root), "--out", str(tmp_path), "--preset", "tiny",
                                       "--resume", "--train-visual", "--pixel-pool", "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--freeze-visual/--train-visual, --pixel-pool" in result.output
    with pytest.raises(ValueError, match="freezing flags only apply to a new run"):
        cfg(synth_root, tmp_path, resume=True, freeze={"freeze_visual": True})
    with pytest.raises(ValueError, match="freeze takes freeze_visual, freeze_audio"):
        cfg(synth_root, tmp_path, freeze={"freeze_backbone": True})
