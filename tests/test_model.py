"""The model contract (DESIGN.md): shapes, training vs inference outputs, audio sensitivity, seeds, bad input."""
import pytest
import torch

import autr
from autr.model import select_best_query
from autr.presets import get_config, list_presets


def clip(t, size=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, size, size, generator=g), torch.randn(t, 1, 96, 64, generator=g)


@pytest.fixture(scope="module")
def tiny():
    return autr.build_model("tiny", seed=0)


PRESET_PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p.startswith("paper") else p
                 for p in list_presets() if get_config(p).arch == "autr"]  # TPAVI's: tests/test_tpavi.py


@pytest.mark.parametrize("preset", PRESET_PARAMS)
@pytest.mark.parametrize("t", [1, 5])
def test_forward_backward_every_preset(preset, t):
    model = autr.build_model(preset, seed=0)
    cfg = model.cfg
    frames, log_mel = clip(t)
    model.train()
    out = model(frames, log_mel)
    assert out["pred_masks"].shape == (t, cfg.n_queries, 56, 56)
    assert out["pred_scores"].shape == (t, cfg.n_queries)
    (out["pred_masks"].mean() + out["pred_scores"].mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # every part of the network takes part in the loss
    for part in ("visual", "audio", "avef", "encoder", "decoder", "pixel_decoder", "mask_head", "score_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in getattr(model, part).parameters()), part
    model.eval()
    with torch.no_grad():
        pred = model(frames, log_mel)
    assert pred["masks"].shape == (t, 224, 224) and pred["scores"].shape == (t,)
    assert torch.isfinite(pred["masks"]).all()


@pytest.mark.parametrize("rule", ["clip", "frame"])
def test_inference_shows_the_query_its_rule_picks_upsampled(rule):
    model = autr.build_model("tiny", seed=0, query_select=rule).eval()
    frames, log_mel = clip(3, 64)
    with torch.no_grad():
        masks, scores = model.forward_queries(frames, log_mel)
        out = model(frames, log_mel)
    per_frame = scores.argmax(1)
    assert len(set(per_frame.tolist())) > 1  # the rules disagree on this clip, so the test tells them apart
    best = per_frame if rule == "frame" else scores.sigmoid().mean(0).argmax().repeat(3)
    torch.testing.assert_close(out["scores"], scores[torch.arange(3), best])
    want = torch.nn.functional.interpolate(masks[torch.arange(3), best][:, None], size=(64, 64),
                                           mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out["masks"], want)


def test_the_clip_rule_is_the_default_and_both_rules_agree_at_one_frame():
    assert get_config("small").query_select == "clip" and get_config("paper-r50").query_select == "clip"
    clip_model = autr.build_model("tiny", seed=0).eval()
    frame_model = autr.build_model("tiny", seed=0, query_select="frame").eval()
    frames, log_mel = clip(3, 64)
    with torch.no_grad():
        for t in range(3):  # T = 1, as the live runtime runs: the same query either way
            a = clip_model(frames[t:t + 1], log_mel[t:t + 1])
            b = frame_model(frames[t:t + 1], log_mel[t:t + 1])
            assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["scores"], b["scores"])
    with pytest.raises(ValueError, match="query_select must be one of clip, frame"):
        get_config("tiny", query_select="video")


def test_select_best_query_on_a_hand_made_case():
    masks = torch.zeros(2, 3, 2, 2)
    masks[0, 1] = 7.0
    masks[1, 2] = -3.0
    scores = torch.tensor([[0.1, 0.9, 0.2], [0.0, -1.0, 2.0]])
    mask, score = select_best_query(masks, scores, (4, 4))
    assert torch.all(mask[0] == 7.0) and torch.all(mask[1] == -3.0)
    assert score.tolist() == pytest.approx([0.9, 2.0])


def test_the_clip_rule_averages_probabilities_not_logits():
    masks = torch.arange(4.0).view(2, 2, 1, 1).expand(2, 2, 2, 2)  # frame t, query q: value 2t + q
    # query 0: logits 10, -1 (mean 4.5, mean probability 0.63); query 1: 2, 2 (mean 2, probability 0.88)
    scores = torch.tensor([[10.0, 2.0], [-1.0, 2.0]])
    mask, score = select_best_query(masks, scores, (2, 2), clip_len=2)
    assert mask[:, 0, 0].tolist() == [1.0, 3.0] and score.tolist() == [2.0, 2.0]  # query 1 on both frames
    mask, _ = select_best_query(masks, scores, (2, 2))
    assert mask[:, 0, 0].tolist() == [0.0, 3.0]  # per frame: query 0, then query 1


def test_frames_are_independent(tiny):
    """Per-query outputs of a frame do not depend on the other frames (and neither do masks, per frame)."""
    frames, log_mel = clip(4, 64)
    frame_rule = autr.build_model("tiny", seed=0, query_select="frame").eval()
    with torch.no_grad():
        together = frame_rule(frames, log_mel)["masks"]
        alone = torch.cat([frame_rule(frames[i:i + 1], log_mel[i:i + 1])["masks"] for i in range(4)])
        queries = tiny.eval().forward_queries(frames, log_mel)[0]
        queries_alone = torch.cat([tiny.forward_queries(frames[i:i + 1], log_mel[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(queries, queries_alone, rtol=1e-4, atol=1e-4)


def test_batch_of_clips_folds_into_frames(tiny):
    """[B, T] input: each clip picks its own query (clip rule), as if run alone."""
    frames, log_mel = clip(4, 64)
    tiny.eval()
    with torch.no_grad():
        batched = tiny(frames.view(2, 2, 3, 64, 64), log_mel.view(2, 2, 1, 96, 64))
        alone = [tiny(frames[i:i + 2], log_mel[i:i + 2]) for i in (0, 2)]
    assert batched["masks"].shape == (2, 2, 64, 64) and batched["scores"].shape == (2, 2)
    for b in range(2):
        torch.testing.assert_close(batched["masks"][b], alone[b]["masks"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched["scores"][b], alone[b]["scores"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"audio_queries": False}, {"dynamic_conv": False}])
def test_changing_only_the_audio_changes_the_masks(overrides):
    model = autr.build_model("tiny", seed=1, **overrides).eval()
    frames, log_mel = clip(2, 64)
    other = torch.randn_like(log_mel) * 3
    with torch.no_grad():
        a = model(frames, log_mel)["masks"]
        b = model(frames, other)["masks"]
    # eval is deterministic: identical inputs give identical outputs, so any change is the audio's
    assert (a - b).abs().max() > 1e-5


def test_seeds_make_models_and_runs_repeatable():
    a = autr.build_model("tiny", seed=7)
    b = autr.build_model("tiny", seed=7)
    c = autr.build_model("tiny", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    frames, log_mel = clip(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(frames, log_mel)["masks"], b.eval()(frames, log_mel)["masks"])


def test_seeded_build_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    autr.build_model("tiny", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_ablations_change_the_architecture():
    base = autr.build_model("tiny", seed=0)
    no_dyn = autr.build_model("tiny", seed=0, dynamic_conv=False)
    no_aq = autr.build_model("tiny", seed=0, audio_queries=False)
    assert type(base.mask_head).__name__ == "DynamicMaskHead"
    assert type(no_dyn.mask_head).__name__ == "DotProductMaskHead"
    assert base.decoder.query_content is None and no_aq.decoder.query_content is not None


def test_audio_aware_queries_start_from_the_audio(tiny):
    """With audio queries, the decoder's input content is the projected audio (paper Sec. 3.3)."""
    seen = {}
    layer = tiny.decoder.layers[0]
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.update(tgt=args[0]))
    frames, log_mel = clip(1, 64)
    tiny.eval()
    with torch.no_grad():
        tiny(frames, log_mel)
        audio = tiny.audio_proj(tiny.audio(log_mel))
    handle.remove()
    assert seen["tgt"].shape == (1, tiny.cfg.n_queries, tiny.cfg.d_model)
    torch.testing.assert_close(seen["tgt"][0], audio.expand(tiny.cfg.n_queries, -1))


@pytest.mark.parametrize("frames_shape,mel_shape,match", [
    ((5, 64, 64), (5, 1, 96, 64), r"frames \[T, 3, H, W\]"),
    ((2, 1, 64, 64), (2, 1, 96, 64), r"frames \[T, 3, H, W\]"),
    ((2, 3, 64, 64), (2, 96, 64), r"log_mel must be \[2, 1, 96, 64\]"),
    ((2, 3, 64, 64), (3, 1, 96, 64), r"log_mel must be \[2, 1, 96, 64\]"),
    ((2, 3, 60, 64), (2, 1, 96, 64), "not a multiple of 32"),
    ((6, 3, 64, 64), (6, 1, 96, 64), r"T=6 frames but preset 'tiny' allows at most T=5"),
])
def test_bad_shapes_raise_value_error_with_the_expected_shape(tiny, frames_shape, mel_shape, match):
    with pytest.raises(ValueError, match=match):
        tiny(torch.zeros(frames_shape), torch.zeros(mel_shape))


def test_non_finite_input_is_rejected(tiny):
    frames, log_mel = clip(1, 64)
    frames[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny(frames, log_mel)
    frames, log_mel = clip(1, 64)
    log_mel[0, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny(frames, log_mel)
    with pytest.raises(ValueError, match="floating point"):
        tiny(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), log_mel)


def test_unknown_preset_and_config_keys_name_the_choices():
    with pytest.raises(ValueError, match="choose one of: paper-r50, paper-pvt, small, tiny"):
        autr.build_model("huge")
    with pytest.raises(ValueError, match="unknown config keys"):
        get_config("tiny", n_querys=3)
    with pytest.raises(ValueError, match="unknown backbone"):
        get_config("tiny", backbone="vit_huge")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        get_config("tiny", d_model=66)


def test_level_tensors_describe_the_flattened_levels():
    model = autr.build_model("tiny", seed=0)
    shapes, starts = model.level_tensors([(8, 8), (4, 4), (2, 2)], torch.device("cpu"))
    assert shapes.tolist() == [[8, 8], [4, 4], [2, 2]] and starts.tolist() == [0, 64, 80]
    assert shapes.dtype == starts.dtype == torch.long
    assert not model._levels  # kept on CUDA only (for graph capture); CPU tensors are made per call


def test_the_deploy_form_computes_the_same_function():
    """The exporter traces `deploy_form`: the audio cross-attention over its two keys in closed form. It must
    equal the textbook attention (random weights, so no head is trivially saturated), switch back after the
    block, and never apply in training mode (attention dropout has no closed form)."""
    from autr.model import AuTR, deploy_form
    from autr.transformer import AudioCrossAttention

    torch.manual_seed(0)
    attn = AudioCrossAttention(32, 4).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    tokens, audio, pos = torch.randn(3, 50, 32), torch.randn(3, 32), torch.randn(3, 50, 32)
    with torch.no_grad():
        textbook = attn(tokens, audio, pos)
        kv = torch.cat((audio[:, None], attn.null.expand(3, 1, -1)), 1)
        direct = attn.attn(tokens + pos, kv, kv, need_weights=False)[0]
        assert torch.allclose(attn.two_key_attention(tokens + pos, audio), direct, atol=1e-5)
    model = AuTR(get_config("tiny", image_size=64)).eval()
    frames, log_mel = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        plain = model(frames, log_mel)
        with deploy_form(model) as same:
            assert same is model and all(m.closed_form for m in model.modules() if isinstance(m, AudioCrossAttention))
            deployed = model(frames, log_mel)
    assert not any(m.closed_form for m in model.modules() if isinstance(m, AudioCrossAttention))
    assert torch.allclose(plain["masks"], deployed["masks"], atol=1e-4)
    assert torch.allclose(plain["scores"], deployed["scores"], atol=1e-5)
    attn.train()
    attn.closed_form = True
    calls = []
    attn.two_key_attention = lambda *a: calls.append(a)  # training must take the textbook path
    attn(tokens, audio, pos)
    assert calls == [] and textbook.shape == tokens.shape
