"""TPAVI, the AVSBench baseline, as a second architecture: the model, its temporal block, its loss, and that it
trains, evaluates, checkpoints and exports through the same commands as AuTR (`tpavi-tiny` at 64 x 64)."""
import json
import math

import onnx
import pytest
import torch
from click.testing import CliRunner

import autr
from autr import engine
from autr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from autr.cli import main
from autr.criterion import AutrCriterion, build_criterion
from autr.datasets import AVSBenchDataset, collate
from autr.presets import get_config, list_presets, provenance
from autr.tpavi import TPAVI, TpaviCriterion

SIZE = 64
TPAVI_PRESETS = ["tpavi-r50", "tpavi-pvt", "tpavi-small", "tpavi-tiny"]


def clip(t, b=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = (t,) if b is None else (b, t)
    return torch.randn(*lead, 3, SIZE, SIZE, generator=g), torch.randn(*lead, 1, 96, 64, generator=g)


def live_blocks(model):
    """Switch the TPAVI blocks on, as training does: their output batch norm starts at zero (each block starts as
    the identity), and at initialisation the audio (VGGish ~0.02) and the clip's pooled video carry little signal
    through the block's projections, so these are scaled up."""
    with torch.no_grad():
        for block in model.tpavi:
            block.out[1].weight.fill_(1.0)
            block.out[1].bias.zero_()
            for layer in (block.align, block.theta, block.phi, block.g):
                layer.weight.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def tiny():
    return live_blocks(autr.build_model("tpavi-tiny", seed=0)).eval()


# ------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("t", [1, 5])
def test_forward_backward_shapes(t):
    model = autr.build_model("tpavi-tiny", seed=1)
    assert isinstance(model, TPAVI) and model.frames_independent is False
    frames, log_mel = clip(t, b=2)
    out = model.train()(frames, log_mel)
    assert out["pred_masks"].shape == (2 * t, 1, SIZE, SIZE)
    assert [v.shape[1:] for v in out["avm_visual"]] == [(32, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2)]
    assert all(a.shape == (2 * t, 32) for a in out["avm_audio"])
    gt = (torch.rand(2 * t, SIZE, SIZE) > 0.5).float()
    TpaviCriterion(lambda_avm=0.5)(out, gt)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing  # every parameter is used (DDP runs with find_unused_parameters=False)
    with torch.no_grad():
        single = model.eval()(frames[0], log_mel[0])
        batched = model(frames, log_mel)
    assert single["masks"].shape == (t, SIZE, SIZE) and single["scores"].shape == (t,)
    assert batched["masks"].shape == (2, t, SIZE, SIZE) and batched["scores"].shape == (2, t)
    torch.testing.assert_close(batched["masks"][0], single["masks"], rtol=1e-4, atol=1e-4)  # clips do not mix
    torch.testing.assert_close(single["scores"], single["masks"].flatten(1).amax(1))  # the documented score


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in ("tpavi-r50", "tpavi-pvt")
                                    else p for p in TPAVI_PRESETS])
def test_every_preset_at_224(preset):
    model = live_blocks(autr.build_model(preset, seed=0))  # at initialisation no gradient reaches the audio
    g = torch.Generator().manual_seed(0)                     # through the masks (the blocks start as identity)
    frames, log_mel = torch.randn(2, 3, 224, 224, generator=g), torch.randn(2, 1, 96, 64, generator=g)
    out = model.train()(frames, log_mel)
    assert out["pred_masks"].shape == (2, 1, 224, 224)
    out["pred_masks"].mean().backward()
    for part in ("visual", "audio", "neck", "tpavi", "decoder", "mask_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    with torch.no_grad():
        pred = model.eval()(frames, log_mel)
    assert pred["masks"].shape == (2, 224, 224) and torch.isfinite(pred["masks"]).all()


def test_frozen_encoders_stay_frozen():
    from autr.training import check_optimizer

    model = autr.build_model("tpavi-tiny", freeze_visual=True, freeze_audio=True).train()
    assert not model.visual.training and not model.audio.training and model.neck.training
    assert model.frozen_parameters() and not any(p.requires_grad for p in model.frozen_parameters())
    check_optimizer(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))


def test_too_many_frames_is_refused(tiny):
    with pytest.raises(ValueError, match="allows at most T=5"):
        tiny(*clip(6))


def test_the_block_is_the_textbook_non_local_block():
    """The per-clip C'xC' form equals the [THW, THW] affinity with audio keys broadcast over H x W."""
    block = live_blocks(autr.build_model("tpavi-tiny", seed=2)).tpavi[1].eval()
    g = torch.Generator().manual_seed(0)
    x, audio = torch.randn(10, 32, 8, 8, generator=g), torch.randn(10, 128, generator=g)
    with torch.no_grad():
        fast, a_fast = block(x, audio, 5)
        dense, a_dense = block.dense(x, audio, 5)
    torch.testing.assert_close(fast, dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_fast, a_dense)
    assert (fast - x).abs().max() > 0.1  # the block does something


def test_tpavi_mixes_the_frames_of_a_clip_and_autr_does_not(tiny):
    frames, log_mel = clip(5, seed=3)
    other = frames.clone()
    other[2] = 3.0  # change frame 2 only (to a bright frame: random frames share their global statistics)
    sound = log_mel.clone()
    sound[4] = 10.0  # change frame 4's audio only
    with torch.no_grad():
        a, b = tiny(frames, log_mel)["masks"], tiny(other, log_mel)["masks"]
        assert (a[1] - b[1]).abs().max() > 1e-2  # frame 1 sees frame 2 through the TPAVI blocks
        assert (tiny(frames, sound)["masks"][0] - a[0]).abs().max() > 1e-3  # and frame 4's audio
        fresh = autr.build_model("tpavi-tiny", seed=0).eval()  # blocks at their identity initialisation
        assert (fresh(frames, log_mel)["masks"][1] - fresh(other, log_mel)["masks"][1]).abs().max() < 1e-5
    autr_model = autr.build_model("tiny", seed=0, query_select="frame").eval()
    assert autr_model.frames_independent is True
    with torch.no_grad():
        a, b = autr_model(frames, log_mel)["masks"], autr_model(other, log_mel)["masks"]
        c = autr_model(frames, sound)["masks"]
    assert (a[2] - b[2]).abs().max() > 1e-2  # the changed frame does change
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[0], c[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- loss
def test_bce_on_valid_frames_only():
    gt = torch.zeros(3, 4, 4)
    gt[0, :2] = 1
    logits = torch.zeros(3, 1, 4, 4)
    logits[1] = 50.0  # frame 1 is badly wrong but carries no ground truth
    out = {"pred_masks": logits.requires_grad_()}
    losses = TpaviCriterion()(out, gt, valid=torch.tensor([True, False, True]))
    assert set(losses) == {"loss_bce", "loss"}
    assert losses["loss"].item() == pytest.approx(math.log(2), abs=1e-6)  # logit 0 everywhere: BCE = ln 2
    losses["loss"].backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    confident = {"pred_masks": (gt[:, None] * 2 - 1) * 30.0}
    assert TpaviCriterion()(confident, gt)["loss"].item() < 1e-10
    nothing = TpaviCriterion(0.5)(out, gt, valid=torch.zeros(3, dtype=torch.bool))
    assert nothing["loss"].item() == 0 and nothing["loss"].requires_grad


def test_avm_term_by_hand():
    """Logits 0 -> pooled mask 0.5; visual channels (0, 2 ln 3) -> masked feature (0, ln 3) -> q = (1/4, 3/4);
    audio (0, 0) -> p = (1/2, 1/2): KL(p || q) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3) per frame, summed over the
    valid frames (2 of 3), averaged over the stages."""
    n = 3
    visual = torch.zeros(n, 2, 4, 4)
    visual[:, 1] = 2 * math.log(3)
    out = {"pred_masks": torch.zeros(n, 1, 8, 8), "avm_visual": [visual, visual[..., :2, :2]],
           "avm_audio": [torch.zeros(n, 2), torch.zeros(n, 2)]}
    gt = torch.zeros(n, 8, 8)
    valid = torch.tensor([True, True, False])
    losses = TpaviCriterion(lambda_avm=0.5)(out, gt, valid=valid)
    assert losses["loss_avm"].item() == pytest.approx(2 * 0.5 * math.log(4 / 3), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(math.log(2) + 0.5 * losses["loss_avm"].item(), rel=1e-6)
    out["avm_audio"] = [torch.tensor([[0.0, math.log(3)]] * n)] * 2  # audio that matches: no loss
    assert TpaviCriterion(lambda_avm=0.5)(out, gt, valid=valid)["loss_avm"].item() == pytest.approx(0, abs=1e-6)


def test_build_criterion_per_arch_and_setting():
    assert isinstance(build_criterion(get_config("tiny"), "ms3"), AutrCriterion)
    assert build_criterion(get_config("tpavi-tiny"), "s4").lambda_avm == 0.0  # AVSBench S4: BCE only
    assert build_criterion(get_config("tpavi-tiny"), "ms3").lambda_avm == 0.5  # MS3: BCE + 0.5 AVM
    with pytest.raises(ValueError, match="mode"):
        build_criterion(get_config("tpavi-tiny"), "avss")


# ------------------------------------------------------------------------------------------- config
def test_presets_and_config():
    assert [p for p in list_presets() if p.startswith("tpavi")] == TPAVI_PRESETS
    assert {get_config(p).arch for p in TPAVI_PRESETS} == {"tpavi"} and get_config("small").arch == "autr"
    assert get_config("tpavi-r50").d_model == get_config("tpavi-pvt").d_model == 256
    small, autr_small = get_config("tpavi-small"), get_config("small")
    assert [getattr(small, k) for k in ("backbone", "vggish_width", "vggish_fc", "d_model")] == \
           [getattr(autr_small, k) for k in ("backbone", "vggish_width", "vggish_fc", "d_model")]
    assert "AVSBench" in provenance("tpavi-r50")["d_model"] and "not read" in provenance("tpavi-r50")["n_queries"]
    with pytest.raises(ValueError, match="dynamic_conv is an AuTR option"):
        get_config("tpavi-tiny", dynamic_conv=False)
    with pytest.raises(ValueError, match="arch must be one of autr, tpavi"):
        get_config("tiny", arch="avsegformer")
    assert autr.AutrConfig.from_dict({"name": "old"}).arch == "autr"  # configs from before the field: AuTR


def test_presets_command_lists_the_family():
    result = CliRunner().invoke(main, ["presets", "--preset", "tpavi-tiny", "--size", "64"])
    assert result.exit_code == 0, result.output
    row = result.output.splitlines()[1].split()
    assert row[:3] == ["tpavi-tiny", "tpavi", "resnet10t"] and float(row[-1]) > 0
    result = CliRunner().invoke(main, ["presets", "--preset", "huge"])
    assert result.exit_code == 2 and "tpavi-small" in result.output


# ------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_the_wrong_architecture(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tpavi.safetensors")
    loaded = load_checkpoint(path, expect="tpavi-tiny")
    assert isinstance(loaded, TPAVI) and loaded.cfg == tiny.cfg
    frames, log_mel = clip(3, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, log_mel)["masks"], tiny(frames, log_mel)["masks"], rtol=0, atol=0)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expect="tiny")
    assert str(err.value).count("\n") == 0
    assert "is a TPAVI checkpoint (arch 'tpavi'" in str(err.value) and "expected AuTR (arch 'autr'" in str(err.value)
    autr_path = save_checkpoint(autr.build_model("tiny", seed=0), tmp_path / "autr.safetensors")
    with pytest.raises(CheckpointError, match=r"is a AuTR checkpoint .*expected TPAVI \(arch 'tpavi'"):
        load_checkpoint(autr_path, expect="tpavi-tiny")
    with pytest.raises(CheckpointError, match="d_model: expected 128, checkpoint has 32"):
        load_checkpoint(path, expect="tpavi-small")


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from autr.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, mode="s4", n_train=4, n_val=1, n_test=2, seed=0, size=SIZE, workers=1, progress=False)
    return root


def test_train_step_feeds_whole_clips_to_tpavi_and_supervised_frames_to_autr(synth_root):
    batch = collate([AVSBenchDataset(synth_root, "s4", "train", size=SIZE)[i] for i in range(2)])
    assert batch["valid"][:, 0].all() and not batch["valid"][:, 1:].any()  # AVSBench S4: only frame 0 has a mask
    for preset, frames_seen in (("tpavi-tiny", 5), ("tiny", 1)):
        model = autr.build_model(preset, seed=0)
        seen = []
        model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        losses = engine.train_step(model, build_criterion(model.cfg, "s4"), batch, opt, torch.device("cpu"))
        assert seen == [frames_seen] and math.isfinite(losses["loss"].item()), preset


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(main, ["train", "--data", str(synth_root), "--out", str(out), "--preset", "tpavi-tiny",
                                       "--epochs", "1", "--batch-size", "2", "--workers", "0", "--size", str(SIZE),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_autr_train_runs_tpavi(trained):
    row = json.loads((trained / "metrics.jsonl").read_text().splitlines()[0])
    assert set(row["train"]) == {"loss", "loss_bce"} and 0 <= row["val"]["miou"] <= 1
    run = json.loads((trained / "run.json").read_text())
    assert run["model"]["arch"] == "tpavi" and "lambda_avm=0.0" in run["criterion"]
    from safetensors import safe_open

    with safe_open(str(trained / "last.state.safetensors"), "pt") as f:
        assert f.get_tensor("0.step").item() == 2  # two steps: 4 clips in batches of 2
    model = load_checkpoint(trained / "best.safetensors", expect="tpavi-tiny")
    assert isinstance(model, TPAVI) and model.cfg.image_size == SIZE


def test_train_refuses_autr_options_for_tpavi(synth_root, tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(synth_root), "--out", str(tmp_path / "r"), "--preset",
                                       "tpavi-tiny", "--no-dynamic-conv", "--workers", "0", "--quiet"])
    assert result.exit_code == 2 and "dynamic_conv is an AuTR option" in result.output
    assert result.output.count("\n") == 1


def test_autr_eval_on_the_tpavi_checkpoint(trained, synth_root, tmp_path):
    js = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained / "best.safetensors"), "--data",
                                       str(synth_root), "--json", str(js), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(js.read_text())
    assert record["arch"] == "tpavi" and record["query_select"] is None and record["size"] == SIZE
    assert 0 <= record["miou"] <= 1 and 0 <= record["fscore"] <= 1
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained / "best.safetensors"), "--data",
                                       str(synth_root), "--query-select", "frame", "--quiet"])
    assert result.exit_code == 2 and "--query-select is AuTR's query rule" in result.output


# ------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from autr.export.cli import export as export_group

    ckpt = save_checkpoint(tiny, tmp_path_factory.mktemp("ckpt") / "tpavi.safetensors")
    out = tmp_path_factory.mktemp("exports") / "tpavi"
    result = CliRunner().invoke(export_group, ["onnx", "--checkpoint", str(ckpt), "--size", str(SIZE), "--out",
                                               str(out), "--fp16", "--quiet"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "model.json").read_text())


def test_export_writes_plugin_and_portable_graphs_without_msda(exported):
    from autr.export import verify

    out, side = exported
    assert side["msda"]["count"] == 0 and side["config"]["arch"] == "tpavi"
    assert side["architecture"] == {"arch": "tpavi", "frames_independent": False}
    assert side["frames"] == {"min": 1, "max": 5, "dynamic": True, "axis_name": "T"}
    plugin, portable = onnx.load(str(out / "model.plugin.onnx")), onnx.load(str(out / "model.portable.onnx"))
    for model in (plugin, portable):
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
        assert all(v.type.tensor_type.shape.dim[0].dim_param == "T"
                   for v in list(model.graph.input) + list(model.graph.output))
    assert side["graphs"]["plugin"]["op_counts"] == side["graphs"]["portable"]["op_counts"]
    for kind in ("plugin", "portable"):
        assert set(side["parity"][kind]) == {"random T=1", "random T=5"}
        assert all(verify.within_tolerance(r) for r in side["parity"][kind].values())
    # the float16 graph keeps the mask head and the score (its max) in float32
    err = side["graphs"]["portable_fp16"]["error_vs_torch_fp32"]
    assert err["max_abs"] < 0.05 and err["iou_min"] > 0.98
    half = onnx.shape_inference.infer_shapes(onnx.load(str(out / "model.portable.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in half.graph.value_info}
    last_conv = [n for n in half.graph.node if n.op_type == "Conv"][-1]
    assert types[last_conv.output[0]] == onnx.TensorProto.FLOAT


def test_exported_graph_runs_any_clip_length(exported, tiny):
    from autr.export import verify

    out, _ = exported
    sess = verify.session(out / "model.portable.onnx")
    for t in (2, 3):
        frames, log_mel = verify.random_clip(t, SIZE, seed=t)
        row = verify.agreement(*verify.run_torch(tiny, frames, log_mel), *verify.run_session(sess, frames, log_mel))
        assert verify.within_tolerance(row) and row["score_max_abs"] < 1e-3, (t, row)


def test_export_verify_and_the_runtime_read_it(exported):
    from autr.export.cli import export as export_group
    from autr.runtime.backends import sidecar as sidecar_mod

    out, side = exported
    spec = sidecar_mod.parse_spec(side)
    assert tuple(spec.input_size) == (SIZE, SIZE) and (spec.t_min, spec.t_max) == (1, 5)
    result = CliRunner().invoke(export_group, ["verify", str(out), "--runs", "1", "--no-synth"])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "portable" in result.output and "plugin" in result.output
    from autr.runtime.backends.ort import OrtBackend  # the runtime runs it as it runs AuTR's exports

    frames, log_mel = clip(1)
    masks, scores = OrtBackend(str(out), threads=1).infer(frames.numpy(), log_mel.numpy())
    assert masks.shape == (1, SIZE, SIZE) and scores.shape == (1,)


def test_int8_exclusion_of_msda_inputs_says_tpavi_has_none(tmp_path):
    """TPAVI has no MSDA layer: asking to keep MSDA's inputs in float32 is one line that says so."""
    result = CliRunner().invoke(main, ["export", "onnx", "--preset", "tpavi-tiny", "--size", "64", "--int8",
                                       "--int8-clips", "1", "--int8-exclude", "msda-inputs", "--skip-check",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert "has no AutrMSDeformAttn node" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
