"""Tests for autr.criterion: matching, loss values, gradients, empty GT, valid mask, shape checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from autr.criterion import AutrCriterion, dice_loss, sigmoid_focal_loss

BIG = 20.0  # confident logit


def _gt(N, H=8, W=8, seed=0, empty=()):
    g = torch.Generator().manual_seed(seed)
    gt = (torch.rand(N, H, W, generator=g) > 0.6).float()
    gt[:, 0, 0] = 1.0  # never accidentally empty
    for i in empty:
        gt[i] = 0.0
    return gt


def _to_logits(mask, mag=BIG):
    return (mask * 2.0 - 1.0) * mag


def _outputs(gt, Nq=4, perfect=2, seed=1, good_score=BIG, bad_score=-BIG):
    """Query `perfect` reproduces gt (confident logits); the others are random wrong masks."""
    N, H, W = gt.shape
    g = torch.Generator().manual_seed(seed)
    masks = _to_logits((torch.rand(N, Nq, H, W, generator=g) > 0.5).float())
    masks[:, perfect] = _to_logits(gt)
    nonempty = gt.flatten(1).sum(-1) > 0
    scores = torch.full((N, Nq), bad_score)
    scores[:, perfect] = torch.where(nonempty, torch.tensor(good_score), torch.tensor(bad_score))
    return {"pred_masks": masks, "pred_scores": scores}


# ---------------------------------------------------------------- matching
def test_matched_query_is_the_perfect_one():
    B, T, Nq = 3, 5, 4
    gt = _gt(B * T)
    for perfect in range(Nq):
        out = _outputs(gt, Nq=Nq, perfect=perfect)
        res = AutrCriterion(clip_len=T)(out, gt)
        assert res["matched"].dtype == torch.long
        assert res["matched"].shape == (B,)
        assert res["matched"].tolist() == [perfect] * B


def test_matching_differs_per_clip():
    B, T, Nq = 2, 3, 4
    gt = _gt(B * T)
    out0 = _outputs(gt[:T], Nq=Nq, perfect=2)
    out1 = _outputs(gt[T:], Nq=Nq, perfect=0, seed=5)
    out = {k: torch.cat([out0[k], out1[k]]) for k in out0}
    assert AutrCriterion(clip_len=T)(out, gt)["matched"].tolist() == [2, 0]


def test_matching_is_by_clip_not_by_frame():
    # query 1 is perfect on 3 of 4 frames, query 0 only on one: the clip picks query 1 for all frames
    T, Nq = 4, 2
    gt = _gt(T)
    masks = torch.stack([_to_logits(1 - gt), _to_logits(gt)], 1)
    masks[0, 0] = _to_logits(gt[0])
    masks[0, 1] = _to_logits(1 - gt[0])
    out = {"pred_masks": masks, "pred_scores": torch.zeros(T, Nq)}
    assert AutrCriterion(clip_len=T)(out, gt)["matched"].tolist() == [1]


def test_sound_cost_can_flip_the_choice():
    T, Nq = 2, 3
    gt = _gt(T)
    masks = torch.full((T, Nq, 8, 8), -BIG)
    masks[:, 2] = _to_logits(gt)                     # query 2: perfect mask, but silent score
    almost = gt.clone()
    almost[:, 0, 0] = 0.0                            # query 1: one pixel off, confident sounding score
    masks[:, 1] = _to_logits(almost, mag=3.0)
    scores = torch.tensor([[-BIG, 10.0, -10.0]]).repeat(T, 1)
    out = {"pred_masks": masks, "pred_scores": scores}
    assert AutrCriterion(1, 1, 1e-4, clip_len=T)(out, gt)["matched"].tolist() == [2]
    assert AutrCriterion(1, 1, 100.0, clip_len=T)(out, gt)["matched"].tolist() == [1]
    # default weights: the sound term (target 1 vs logit -10) outweighs a one-pixel error
    assert AutrCriterion(clip_len=T)(out, gt)["matched"].tolist() == [1]


# ---------------------------------------------------------------- loss values
def test_losses_finite_nonnegative_and_keys():
    B, T = 2, 5
    gt = _gt(B * T, empty=(3,))
    torch.manual_seed(0)
    out = {"pred_masks": torch.randn(B * T, 5, 4, 4) * 3, "pred_scores": torch.randn(B * T, 5)}
    res = AutrCriterion(clip_len=T)(out, gt)
    assert set(res) == {"loss_dice", "loss_focal", "loss_sound", "loss", "matched"}
    for k in ("loss_dice", "loss_focal", "loss_sound", "loss"):
        assert res[k].dim() == 0 and torch.isfinite(res[k]) and res[k] >= 0, k
    c = AutrCriterion(clip_len=T)
    expect = c.lambda_dice * res["loss_dice"] + c.lambda_focal * res["loss_focal"] \
        + c.lambda_sound * res["loss_sound"]
    assert torch.allclose(res["loss"], expect)


def test_perfect_near_zero_inverted_large():
    B, T = 2, 3
    gt = _gt(B * T, empty=(1, 4))
    out = _outputs(gt)
    res = AutrCriterion(clip_len=T)(out, gt)
    assert res["loss"] < 1e-3, res
    inv = {"pred_masks": -out["pred_masks"], "pred_scores": -out["pred_scores"]}
    res_inv = AutrCriterion(clip_len=T)(inv, gt)
    assert res_inv["loss_dice"] > 0.5
    assert res_inv["loss_focal"] > 1.0
    assert res_inv["loss_sound"] > 5.0
    assert res_inv["loss"] > 1000 * res["loss"] + 10


def test_hand_computed_tiny_case():
    # one frame, one query, 1x2 mask. logits [0, ln 3] -> p = [0.5, 0.75]; gt [1, 0]; score 0.
    masks = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    gt = torch.tensor([[[1.0, 0.0]]])
    out = {"pred_masks": masks, "pred_scores": torch.zeros(1, 1)}
    res = AutrCriterion(lambda_dice=5, lambda_focal=2, lambda_sound=2, clip_len=1)(out, gt)
    # dice: 1 - (2*0.5 + 1) / (0.5 + 0.75 + 1 + 1) = 1 - 2/3.25
    dice = 1.0 - 2.0 / 3.25
    # focal (alpha .25, gamma 2): pixel 1: .25 * (1-.5)^2 * ln 2;  pixel 2: .75 * .75^2 * ln 4
    focal = (0.25 * 0.25 * math.log(2.0) + 0.75 * 0.5625 * math.log(4.0)) / 2.0
    sound = math.log(2.0)  # BCE(0, 1)
    assert res["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert res["loss_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert res["loss_sound"].item() == pytest.approx(sound, rel=1e-5)
    assert res["loss"].item() == pytest.approx(5 * dice + 2 * focal + 2 * sound, rel=1e-5)


def test_helper_functions():
    assert dice_loss(torch.full((1, 4), -50.0), torch.zeros(1, 4)).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.full((1, 4), 50.0), torch.zeros(1, 4)).item() == pytest.approx(0.8, abs=1e-6)
    x = torch.tensor([0.0])
    assert sigmoid_focal_loss(x, torch.tensor([1.0]), alpha=-1, gamma=0).item() == \
        pytest.approx(math.log(2.0), rel=1e-6)


def test_predictions_are_upsampled_to_gt_size():
    # the documented rule: bilinear (align_corners=False) upsampling of predictions, GT untouched
    B, T, Nq = 1, 2, 3
    torch.manual_seed(3)
    low = torch.randn(B * T, Nq, 4, 4) * 4
    scores = torch.randn(B * T, Nq)
    gt = _gt(B * T, H=16, W=16)
    crit = AutrCriterion(clip_len=T)
    res_low = crit({"pred_masks": low, "pred_scores": scores}, gt)
    up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)
    res_up = crit({"pred_masks": up, "pred_scores": scores}, gt)
    assert res_low["matched"].tolist() == res_up["matched"].tolist()
    for k in ("loss_dice", "loss_focal", "loss_sound", "loss"):
        assert torch.allclose(res_low[k], res_up[k], atol=1e-6), k


def test_matching_at_quarter_resolution():
    B, T, Nq = 2, 5, 4
    gt_low = _gt(B * T, H=6, W=6)
    gt = gt_low.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 24x24 GT, 6x6 predictions
    out = _outputs(gt_low, Nq=Nq, perfect=1)
    res = AutrCriterion(clip_len=T)(out, gt)
    assert res["matched"].tolist() == [1, 1]
    assert torch.isfinite(res["loss"])


# ---------------------------------------------------------------- gradients
def test_gradients_only_into_matched_masks_but_all_scores():
    B, T, Nq = 2, 3, 4
    gt = _gt(B * T, empty=(2,))
    torch.manual_seed(0)
    masks = (torch.randn(B * T, Nq, 4, 4)).requires_grad_()
    scores = torch.randn(B * T, Nq).requires_grad_()
    res = AutrCriterion(clip_len=T)({"pred_masks": masks, "pred_scores": scores}, gt)
    res["loss"].backward()
    matched = res["matched"].repeat_interleave(T)
    for n in range(B * T):
        for q in range(Nq):
            gq = masks.grad[n, q]
            if q == matched[n]:
                assert gq.abs().sum() > 0, (n, q)
            else:
                assert torch.all(gq == 0), (n, q)
    assert torch.all(scores.grad != 0)
    assert res["matched"].requires_grad is False


# ---------------------------------------------------------------- empty GT
def test_empty_gt_all_score_targets_zero():
    # silent clip; query 0 has the perfect (empty) mask, so it is matched despite its positive score.
    # Its score target must still be 0: the loss is large and the gradient pushes the score down.
    T, Nq = 2, 3
    gt = torch.zeros(T, 8, 8)
    masks = torch.full((T, Nq, 8, 8), BIG)
    masks[:, 0] = -BIG
    scores = torch.full((T, Nq), -BIG)
    scores[:, 0] = 5.0
    scores.requires_grad_()
    crit = AutrCriterion(clip_len=T)
    res = crit({"pred_masks": masks, "pred_scores": scores}, gt)
    assert res["matched"].tolist() == [0]
    expected = F.binary_cross_entropy_with_logits(torch.tensor(5.0), torch.tensor(0.0)).item() / Nq
    assert res["loss_sound"].item() == pytest.approx(expected, rel=1e-4)
    res["loss"].backward()
    assert torch.all(scores.grad[:, 0] > 0)
    # all-silent scores are (near) loss-free, and the empty masks cost nothing either
    quiet = scores.detach().clone()
    quiet[:, 0] = -BIG
    res_q = crit({"pred_masks": masks, "pred_scores": quiet}, gt)
    assert res_q["loss"] < 1e-3


def test_empty_gt_mask_loss_pushes_to_empty():
    gt = torch.zeros(1, 4, 4)
    crit = AutrCriterion(clip_len=1)
    empty = crit({"pred_masks": torch.full((1, 1, 4, 4), -BIG), "pred_scores": torch.full((1, 1), -BIG)}, gt)
    full = crit({"pred_masks": torch.full((1, 1, 4, 4), BIG), "pred_scores": torch.full((1, 1), -BIG)}, gt)
    assert empty["loss_dice"] < 1e-6 and empty["loss_focal"] < 1e-6
    assert full["loss_dice"].item() == pytest.approx(1 - 1 / 17, rel=1e-4)  # 1 - 1/(sum p + 1)
    assert full["loss_focal"] > 5


# ---------------------------------------------------------------- valid mask
def test_invalid_frames_do_not_change_loss():
    B, T, Nq = 2, 5, 4
    gt = _gt(B * T)
    valid = torch.zeros(B * T, dtype=torch.bool)
    valid[::T] = True  # S4 train: only the first frame of each clip
    torch.manual_seed(0)
    out = {"pred_masks": torch.randn(B * T, Nq, 4, 4), "pred_scores": torch.randn(B * T, Nq)}
    crit = AutrCriterion(clip_len=T)
    ref = crit(out, gt, valid)
    out2 = {k: v.clone() for k, v in out.items()}
    out2["pred_masks"][~valid] = torch.randn_like(out2["pred_masks"][~valid]) * 50
    out2["pred_scores"][~valid] = torch.randn_like(out2["pred_scores"][~valid]) * 50
    gt2 = gt.clone()
    gt2[~valid] = 1 - gt2[~valid]
    got = crit(out2, gt2, valid)
    assert got["matched"].tolist() == ref["matched"].tolist()
    for k in ("loss_dice", "loss_focal", "loss_sound", "loss"):
        assert torch.equal(got[k], ref[k]), k
    # ... but it does when all frames are valid
    assert not torch.equal(crit(out2, gt2)["loss"], crit(out, gt)["loss"])
    # invalid frames receive exactly zero gradient
    m = out["pred_masks"].clone().requires_grad_()
    s = out["pred_scores"].clone().requires_grad_()
    crit({"pred_masks": m, "pred_scores": s}, gt, valid)["loss"].backward()
    assert torch.all(m.grad[~valid] == 0) and torch.all(s.grad[~valid] == 0)
    assert m.grad[valid].abs().sum() > 0


def test_valid_first_frame_equals_single_frame_clips():
    B, T, Nq = 3, 5, 4
    gt = _gt(B * T)
    torch.manual_seed(1)
    out = {"pred_masks": torch.randn(B * T, Nq, 4, 4), "pred_scores": torch.randn(B * T, Nq)}
    valid = torch.zeros(B * T, dtype=torch.bool)
    valid[::T] = True
    res = AutrCriterion(clip_len=T)(out, gt, valid)
    single = AutrCriterion(clip_len=1)({k: v[::T] for k, v in out.items()}, gt[::T])
    assert res["matched"].tolist() == single["matched"].tolist()
    assert torch.allclose(res["loss"], single["loss"])


def test_no_valid_frames_gives_zero_loss_in_graph():
    masks = torch.randn(4, 2, 4, 4, requires_grad=True)
    scores = torch.randn(4, 2, requires_grad=True)
    res = AutrCriterion(clip_len=2)({"pred_masks": masks, "pred_scores": scores}, _gt(4),
                                     torch.zeros(4, dtype=torch.bool))
    assert res["loss"].item() == 0.0
    res["loss"].backward()
    assert torch.all(masks.grad == 0)


def test_clip_len_override():
    gt = _gt(6)
    out = _outputs(gt, perfect=3)
    res = AutrCriterion(clip_len=5)(out, gt, clip_len=3)
    assert res["matched"].tolist() == [3, 3]


# ---------------------------------------------------------------- shape errors
@pytest.mark.parametrize("case, pattern", [
    ("not_divisible", r"not divisible by clip_len"),
    ("masks_3d", r"pred_masks must be 4-D \[N, Nq, h, w\]"),
    ("scores_shape", r"pred_scores must be \[N, Nq\]"),
    ("gt_N", r"gt must be \[N, H, W\] with N = 10"),
    ("gt_4d", r"gt must be \[N, H, W\]"),
    ("valid_shape", r"valid must be \[N\]"),
    ("missing_key", r"pred_scores"),
])
def test_bad_shapes_raise(case, pattern):
    N, Nq = 10, 3
    masks, scores, gt, valid, T = torch.zeros(N, Nq, 4, 4), torch.zeros(N, Nq), torch.zeros(N, 16, 16), None, 5
    if case == "not_divisible":
        T = 3
    elif case == "masks_3d":
        masks = torch.zeros(N, 4, 4)
    elif case == "scores_shape":
        scores = torch.zeros(N, Nq + 1)
    elif case == "gt_N":
        gt = torch.zeros(N - 1, 16, 16)
    elif case == "gt_4d":
        gt = torch.zeros(N, 1, 16, 16)
    elif case == "valid_shape":
        valid = torch.ones(N - 1, dtype=torch.bool)
    out = {"pred_masks": masks, "pred_scores": scores}
    if case == "missing_key":
        out = {"pred_masks": masks}
    with pytest.raises(ValueError, match=pattern):
        AutrCriterion(clip_len=T)(out, gt, valid)


def test_bad_constructor_args():
    with pytest.raises(ValueError):
        AutrCriterion(clip_len=0)
    with pytest.raises(ValueError):
        AutrCriterion(lambda_dice=-1)
