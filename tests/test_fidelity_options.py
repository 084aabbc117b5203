"""Issue 12 options: supervised frames only, pixel-decoder pooling, input-dependent reference points,
auxiliary decoder losses, learning-rate schedules, and the presets' provenance."""
import dataclasses
import math

import pytest
import torch

import autr
import autr.presets as presets
from autr.criterion import AutrCriterion
from autr.engine import supervised_frames, train_step
from autr.presets import AutrConfig, get_config, provenance
from autr.training import TrainConfig, lr_schedule


def batch(b=2, t=5, size=64, valid=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(b, t, size, size, generator=g) > 0.7).float()
    valid = torch.ones(b, t, dtype=torch.bool) if valid is None else valid
    return {"frames": torch.randn(b, t, 3, size, size, generator=g),
            "log_mel": torch.randn(b, t, 1, 96, 64, generator=g), "masks": masks * valid[..., None, None],
            "valid": valid}


def s4_valid(b=2, t=5):
    valid = torch.zeros(b, t, dtype=torch.bool)
    valid[:, 0] = True
    return valid


# ------------------------------------------------------------------------------ supervised frames only
def test_supervised_frames_cut_s4_batches_and_leave_others_alone():
    s4 = batch(valid=s4_valid())
    cut = supervised_frames(s4)
    assert cut["frames"].shape == (2, 1, 3, 64, 64) and cut["log_mel"].shape == (2, 1, 1, 96, 64)
    assert torch.equal(cut["frames"][:, 0], s4["frames"][:, 0]) and cut["valid"].all()
    full = batch()
    assert supervised_frames(full) is full  # MS3 / --full-gt: every frame is supervised
    ragged = s4_valid()
    ragged[1, 2] = True
    assert supervised_frames(batch(valid=ragged))["frames"].shape[1] == 5  # clips differ: the criterion masks
    none = torch.zeros(2, 5, dtype=torch.bool)
    assert supervised_frames(batch(valid=none))["frames"].shape[1] == 5


def test_supervised_frames_only_give_the_same_loss_and_gradients():
    """Frozen batch-norm statistics (a trainable backbone's BN would see fewer frames)."""
    data = batch(valid=s4_valid())
    grads, losses = {}, {}
    for only in (False, True):
        model = autr.build_model("tiny", seed=0, freeze_visual=True).train()
        out = train_step(model, AutrCriterion(), data, torch.optim.SGD(model.parameters(), lr=0.0),
                         torch.device("cpu"), max_norm=0, supervised_only=only)
        losses[only] = out["loss"].item()
        grads[only] = [p.grad for p in model.parameters() if p.requires_grad]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)  # float32 sums in another order


def test_an_s4_step_runs_only_the_supervised_frames():
    model = autr.build_model("tiny", seed=0).train()
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    train_step(model, AutrCriterion(), batch(valid=s4_valid()), torch.optim.AdamW(model.parameters()),
               torch.device("cpu"))
    assert seen == [(2, 1, 3, 64, 64)]


# ------------------------------------------------------------------------------ pooling, reference points
def clip(t=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, size, size, generator=g), torch.randn(t, 1, 96, 64, generator=g)


@pytest.mark.parametrize("option,part", [("pixel_pool", "pixel_decoder.pool"), ("dynamic_reference", "decoder.refine")])
def test_options_start_as_the_plain_model_and_then_change_it(option, part):
    plain = autr.build_model("tiny", seed=0).eval()
    model = autr.build_model("tiny", seed=0, **{option: True}).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(part) for k in missing)  # only the option's own parameters are new
    frames, log_mel = clip()
    with torch.no_grad():
        torch.testing.assert_close(model(frames, log_mel)["masks"], plain(frames, log_mel)["masks"])
        for name, p in model.named_parameters():
            if name.startswith(part):
                p.normal_(0, 0.5)
        assert (model(frames, log_mel)["masks"] - plain(frames, log_mel)["masks"]).abs().max() > 1e-3


def test_dynamic_reference_points_depend_on_the_input():
    def final_refs(model, seed):
        frames, log_mel = clip(1, seed=seed)
        seen = {}
        handle = model.decoder.register_forward_hook(lambda mod, args, out: seen.update(refs=out[1]))
        with torch.no_grad():
            model(frames, log_mel)
        handle.remove()
        return seen["refs"]

    plain = autr.build_model("tiny", seed=0).eval()
    a, b = final_refs(plain, 1), final_refs(plain, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # fixed priors: the same for every input
    model = autr.build_model("tiny", seed=0, dynamic_reference=True).eval()
    with torch.no_grad():
        for head in model.decoder.refine:
            head[-1].weight.normal_(0, 0.5)
    a, b = final_refs(model, 1), final_refs(model, 2)
    assert len(a) == model.cfg.dec_layers
    assert (a[-1] - b[-1]).abs().max() > 1e-3 and ((a[-1] > 0) & (a[-1] < 1)).all()
    assert (a[0] - a[-1]).abs().max() > 1e-4  # each layer moves the points


# ------------------------------------------------------------------------------ auxiliary losses
def test_aux_loss_adds_every_earlier_layer_and_leaves_inference_alone():
    model = autr.build_model("tiny", seed=0, aux_loss=True, dec_layers=3).train()
    frames, log_mel = clip(4)
    out = model(frames.view(2, 2, 3, 64, 64), log_mel.view(2, 2, 1, 96, 64))
    assert len(out["aux_outputs"]) == 2
    assert all(a["pred_masks"].shape == out["pred_masks"].shape for a in out["aux_outputs"])
    gt = (torch.rand(4, 64, 64) > 0.7).float()
    crit = AutrCriterion()
    losses = crit(out, gt, clip_len=2)
    main = crit.layer_losses(out, gt, clip_len=2)["loss"]
    aux = sum(crit.layer_losses(a, gt, clip_len=2)["loss"] for a in out["aux_outputs"])
    torch.testing.assert_close(losses["loss_aux"], aux)
    torch.testing.assert_close(losses["loss"], main + aux)
    losses["loss"].backward()
    first = model.decoder.layers[0].ffn.net[0].weight.grad
    assert first is not None and first.abs().sum() > 0

    plain = autr.build_model("tiny", seed=0, dec_layers=3).eval()
    plain.load_state_dict(model.state_dict())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(frames, log_mel)["masks"], plain(frames, log_mel)["masks"])
    assert "aux_outputs" not in autr.build_model("tiny", seed=0).train()(frames, log_mel)


# ------------------------------------------------------------------------------ learning-rate schedules
def schedule(**kw):
    return lr_schedule(TrainConfig(data="d", out="o", epochs=10, lr=1.0, **kw), steps_per_epoch=10)


def test_learning_rate_schedules():
    constant = schedule()
    assert {constant(s) for s in range(100)} == {1.0}
    step = schedule(lr_schedule="step")  # x0.1 after 8 of 10 epochs (Deformable-DETR's 40 of 50)
    assert step(79) == 1.0 and step(80) == pytest.approx(0.1) and step(99) == pytest.approx(0.1)
    assert schedule(lr_schedule="step", lr_drop=3)(30) == pytest.approx(0.1)
    cosine = schedule(lr_schedule="cosine", warmup_epochs=1)
    assert [cosine(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])  # linear warm-up over 10 steps
    assert cosine(10) == pytest.approx(1.0) and cosine(55) == pytest.approx(0.5)
    values = [cosine(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:])) and cosine(99) < 0.001
    assert schedule(lr_schedule="cosine")(0) == 1.0 and math.isclose(schedule(lr_schedule="cosine")(50), 0.5)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, step, cosine"):
        schedule(lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        schedule(warmup_epochs=-1)


def test_train_flags_are_checked_in_one_line(tmp_path):
    from click.testing import CliRunner

    from autr.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for args, message in ((["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
                          (["--lr-drop", "0"], "--lr-drop must be >= 1"),
                          (["--threads", "0"], "--threads must be >= 1")):
        result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *args])
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    result = CliRunner().invoke(main, ["eval", "--synthetic", "--threads", "0"])
    assert result.exit_code == 2 and "--threads must be >= 1" in result.output


# ------------------------------------------------------------------------------ provenance
def test_every_preset_value_names_its_source():
    fields = [f.name for f in dataclasses.fields(AutrConfig)]
    assert sorted(presets.PROVENANCE) == sorted(fields)
    for name in presets.list_presets():
        sources = provenance(name)
        assert sorted(sources) == sorted(fields) and all(isinstance(v, str) and v for v in sources.values())
    paper = provenance("paper-r50")
    for key in ("d_model", "n_heads", "n_points", "n_queries"):
        assert "ReferFormer" in paper[key] and "does not state" in paper[key], key
    assert "Deformable-DETR" in paper["enc_layers"] and "ReferFormer uses 4" in paper["enc_layers"]
    assert provenance("small")["d_model"] == "ours" and "paper" in provenance("paper-pvt")["backbone"]
    assert "The paper fixes d=256" not in presets.__doc__
    with pytest.raises(ValueError, match="overrides \\['d_model'\\] without naming their source"):
        presets.register_preset(get_config("paper-r50", name="unsourced", d_model=512), sources={})
