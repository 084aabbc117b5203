"""Tests of autr.metrics against hand-computed values and a literal loop re-implementation of the
AVSBench formulas (OpenNLPLab/AVSBench, avs_scripts/avs_s4/utils/utility.py)."""

import math

import numpy as np
import pytest
import torch

from autr.metrics import (
    AVSBenchAccumulator,
    dataset_miou,
    f_score,
    fmeasure_curve,
    iou_counts,
    mask_iou,
)

BIG = 10.0  # a logit that is clearly foreground (sigmoid ~ 0.99995)


def logits_from_mask(mask):
    """Logits that predict exactly ``mask`` (+BIG inside, -BIG outside)."""
    mask = torch.as_tensor(mask, dtype=torch.float32)
    return torch.where(mask > 0, torch.tensor(BIG), torch.tensor(-BIG))


def logit(p):
    return math.log(p / (1.0 - p))


# --------------------------------------------------------------------------------------------
# Literal re-implementation, pixel by pixel
# --------------------------------------------------------------------------------------------


def literal_mask_iou(logits, gt, eps=1e-7):
    probs = torch.sigmoid(logits.float()).tolist()
    gts = gt.tolist()
    n_frames = len(probs)
    total = 0.0
    for frame_p, frame_g in zip(probs, gts):
        inter = union = true_neg = gt_sum = n_pix = 0
        for row_p, row_g in zip(frame_p, frame_g):
            for p, g in zip(row_p, row_g):
                pred = 1 if p > 0.5 else 0
                inter += pred * g
                union += max(pred, g)
                true_neg += (1 - pred) * (1 - g)
                gt_sum += g
                n_pix += 1
        if gt_sum == 0:
            total += true_neg / (n_pix + eps)
        else:
            total += inter / (union + eps)
    return total / n_frames


def literal_f_score(logits, gt, num=255, beta2=0.3):
    probs = torch.sigmoid(logits.float()).tolist()
    gts = gt.tolist()
    thresholds = [float(t) for t in np.linspace(0.0, 1.0 - 1e-10, num).astype(np.float32)]
    curve_sum = [0.0] * num
    n_used = 0
    for frame_p, frame_g in zip(probs, gts):
        pixels = [(p, g) for row_p, row_g in zip(frame_p, frame_g) for p, g in zip(row_p, row_g)]
        gt_sum = sum(g for _, g in pixels)
        if gt_sum == 0:
            continue
        for i, t in enumerate(thresholds):
            tp = n_pred = 0
            for p, g in pixels:
                if p >= t:
                    n_pred += 1
                    tp += g
            precision = tp / (n_pred + 1e-20)
            recall = tp / (gt_sum + 1e-20)
            denom = beta2 * precision + recall
            curve_sum[i] += (1 + beta2) * precision * recall / denom if denom > 0 else 0.0
        n_used += 1
    if n_used == 0:
        return 0.0
    return max(c / n_used for c in curve_sum)


def random_case(seed, n=5, h=7, w=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, h, w, generator=g) * 4
    # Exact boundary and saturated values: logit 0 (sigmoid 0.5) and huge logits (sigmoid 1.0).
    logits[0, 0, :3] = 0.0
    logits[1, 1, :2] = 40.0
    logits[1, 2, :2] = -40.0
    gt = (torch.rand(n, h, w, generator=g) > 0.55).float()
    gt[2] = 0  # one frame with empty ground truth
    return logits, gt


@pytest.mark.parametrize("seed", range(6))
def test_mask_iou_matches_literal(seed):
    logits, gt = random_case(seed)
    assert mask_iou(logits, gt) == pytest.approx(literal_mask_iou(logits, gt), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_f_score_matches_literal(seed):
    logits, gt = random_case(seed)
    assert f_score(logits, gt) == pytest.approx(literal_f_score(logits, gt), abs=1e-6)


def test_f_score_matches_literal_on_float64_logits():
    logits, gt = random_case(11)
    assert f_score(logits.double(), gt) == pytest.approx(literal_f_score(logits, gt), abs=1e-6)


# --------------------------------------------------------------------------------------------
# mask_iou, hand-computed
# --------------------------------------------------------------------------------------------


def test_mask_iou_perfect_prediction_is_one():
    gt = torch.zeros(2, 4, 4)
    gt[:, 1:3, 1:3] = 1
    assert mask_iou(logits_from_mask(gt), gt) == pytest.approx(1.0, abs=1e-6)


def test_mask_iou_disjoint_is_zero():
    gt = torch.zeros(1, 4, 4)
    gt[0, :2] = 1
    pred = 1 - gt
    assert mask_iou(logits_from_mask(pred), gt) == 0.0


def test_mask_iou_half_overlap():
    gt = torch.zeros(1, 4, 4)
    gt[0, 0, :] = 1  # 4 pixels
    pred = torch.zeros(1, 4, 4)
    pred[0, 0, :2] = 1  # 2 of them, nothing else
    assert mask_iou(logits_from_mask(pred), gt) == pytest.approx(0.5, abs=1e-6)
    pred[0, 3, :2] = 1  # plus 2 false positives: inter 2, union 6
    assert mask_iou(logits_from_mask(pred), gt) == pytest.approx(1 / 3, abs=1e-6)


def test_mask_iou_empty_gt_empty_prediction_is_one():
    gt = torch.zeros(3, 5, 5)
    assert mask_iou(logits_from_mask(gt), gt) == pytest.approx(1.0, abs=1e-6)


def test_mask_iou_empty_gt_scores_true_negative_fraction():
    gt = torch.zeros(1, 4, 4)
    pred = torch.zeros(1, 4, 4)
    pred[0, 0, :3] = 1  # 3 false positives, 13 true negatives of 16
    assert mask_iou(logits_from_mask(pred), gt) == pytest.approx(13 / 16, abs=1e-6)


def test_mask_iou_threshold_is_strict():
    # logit 0 -> sigmoid 0.5 -> background.
    gt_full = torch.ones(1, 3, 3)
    assert mask_iou(torch.zeros(1, 3, 3), gt_full) == 0.0
    assert mask_iou(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)) == pytest.approx(1.0, abs=1e-6)
    assert mask_iou(torch.full((1, 3, 3), 1e-3), gt_full) == pytest.approx(1.0, abs=1e-6)


def test_mask_iou_is_mean_over_frames():
    gt = torch.zeros(2, 4, 4)
    gt[:, 0, :] = 1
    pred = gt.clone()
    pred[1, 0, 2:] = 0  # frame 0: IoU 1, frame 1: IoU 0.5
    assert mask_iou(logits_from_mask(pred), gt) == pytest.approx(0.75, abs=1e-6)


def test_mask_iou_accepts_bool_and_integer_gt():
    logits, gt = random_case(3)
    expected = mask_iou(logits, gt)
    assert mask_iou(logits, gt.bool()) == expected
    assert mask_iou(logits, gt.to(torch.uint8)) == expected
    assert mask_iou(logits.numpy(), gt.numpy()) == expected


# --------------------------------------------------------------------------------------------
# F-score, hand-computed
# --------------------------------------------------------------------------------------------

PROBS = [0.9, 0.6, 0.3, 0.1]


def tiny_frame(gt_values):
    logits = torch.tensor([[logit(p) for p in PROBS[:2]], [logit(p) for p in PROBS[2:]]])
    gt = torch.tensor(gt_values, dtype=torch.float32).reshape(2, 2)
    return logits[None], gt[None]


def f_beta(p, r, beta2=0.3):
    return (1 + beta2) * p * r / (beta2 * p + r) if p + r > 0 else 0.0


# thresholds are linspace(0, 1, 255) in float32: index i is ~ i / 254
AT = {"<=0.1": 10, "(0.1,0.3]": 50, "(0.3,0.6]": 100, "(0.6,0.9]": 200, ">0.9": 240}


def test_fmeasure_curve_tiny_example():
    # probabilities [0.9, 0.6, 0.3, 0.1], ground truth on the 0.9 and 0.3 pixels
    logits, gt = tiny_frame([1, 0, 1, 0])
    curve, n = fmeasure_curve(logits, gt)
    assert n == 1 and curve.shape == (255,)
    expected = {
        "<=0.1": f_beta(2 / 4, 1.0),  # 4 predicted, 2 hits
        "(0.1,0.3]": f_beta(2 / 3, 1.0),  # 3 predicted, 2 hits
        "(0.3,0.6]": f_beta(1 / 2, 1 / 2),  # 2 predicted, 1 hit
        "(0.6,0.9]": f_beta(1.0, 1 / 2),  # 1 predicted, 1 hit
        ">0.9": 0.0,  # nothing predicted: P = R = 0, NaN -> 0
    }
    for key, index in AT.items():
        assert float(curve[index]) == pytest.approx(expected[key], abs=1e-6), key
    assert f_score(logits, gt) == pytest.approx(0.8125, abs=1e-6)


def test_f_score_is_max_of_frame_mean_and_skips_empty_frames():
    logits_a, gt_a = tiny_frame([1, 0, 1, 0])  # curve peaks 0.8125 at (0.6, 0.9]
    logits_b, gt_b = tiny_frame([1, 1, 0, 0])  # curve peaks 1.0 at (0.3, 0.6]
    logits_e, gt_e = tiny_frame([0, 0, 0, 0])  # empty ground truth: ignored
    logits = torch.cat([logits_a, logits_e, logits_b])
    gt = torch.cat([gt_a, gt_e, gt_b])
    # frame means per band; the max is not the mean of the two per-frame maxima (0.90625)
    mean_per_band = [
        (f_beta(2 / 4, 1.0) + f_beta(2 / 4, 1.0)) / 2,
        (f_beta(2 / 3, 1.0) + f_beta(2 / 3, 1.0)) / 2,
        (f_beta(1 / 2, 1 / 2) + 1.0) / 2,
        (f_beta(1.0, 1 / 2) + f_beta(1.0, 1 / 2)) / 2,
        0.0,
    ]
    assert f_score(logits, gt) == pytest.approx(max(mean_per_band), abs=1e-6)
    assert max(mean_per_band) == pytest.approx(0.8125)


def test_f_score_all_empty_gt_is_zero():
    logits = torch.randn(5, 4, 4)
    assert f_score(logits, torch.zeros(5, 4, 4)) == 0.0
    curve, n = fmeasure_curve(logits, torch.zeros(5, 4, 4))
    assert n == 0 and float(curve.abs().sum()) == 0.0


def test_f_score_last_threshold_is_exactly_one():
    # 1 - 1e-10 rounds to 1.0 in float32: only saturated probabilities pass the last threshold.
    gt = torch.ones(1, 1, 2)
    curve, _ = fmeasure_curve(torch.tensor([[[40.0, 5.0]]]), gt)
    assert float(curve[-1]) == pytest.approx(f_beta(1.0, 0.5), abs=1e-6)


def test_f_score_perfect_prediction_is_one():
    gt = torch.zeros(2, 4, 4)
    gt[:, 1:3, 1:3] = 1
    assert f_score(logits_from_mask(gt), gt) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Dataset-level IoU and the accumulator
# --------------------------------------------------------------------------------------------


def test_iou_counts_and_dataset_miou():
    gt = torch.zeros(3, 4, 4)
    pred = torch.zeros(3, 4, 4)
    gt[0, 0, :4] = 1
    pred[0, 0, :2] = 1  # I = 2, U = 4
    gt[1, 1, :2] = 1
    pred[1, 1, 1:3] = 1  # I = 1, U = 3
    pred[2, 3, :1] = 1  # empty gt, one false positive: I = 0, U = 1
    inter, union = iou_counts(logits_from_mask(pred), gt)
    assert (inter, union) == (3, 8)
    assert dataset_miou(inter, union) == pytest.approx(3 / 8)
    assert dataset_miou(0, 0) == 1.0
    with pytest.raises(ValueError):
        dataset_miou(5, 4)


def test_accumulator_equals_mean_of_per_video_values():
    videos = [random_case(21), random_case(22, h=5, w=9)]
    acc = AVSBenchAccumulator()
    per_video = [acc.update(logits, gt) for logits, gt in videos]
    result = acc.compute()
    ious = [mask_iou(l, g) for l, g in videos]
    fs = [f_score(l, g) for l, g in videos]
    assert [v["miou"] for v in per_video] == ious
    assert [v["fscore"] for v in per_video] == fs
    assert result["miou"] == pytest.approx(sum(ious) / 2, abs=1e-12)
    assert result["fscore"] == pytest.approx(sum(fs) / 2, abs=1e-12)
    counts = [iou_counts(l, g) for l, g in videos]
    total_i = sum(c[0] for c in counts)
    total_u = sum(c[1] for c in counts)
    assert result["miou_dataset"] == pytest.approx(total_i / total_u)
    assert result["n_videos"] == 2
    assert result["n_frames"] == 10

    acc.reset()
    assert acc.n_videos == 0
    with pytest.raises(RuntimeError):
        acc.compute()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [mask_iou, f_score, iou_counts])
def test_shape_validation(fn):
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        fn(torch.zeros(5, 4, 4), torch.zeros(5, 4, 3))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        fn(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        fn(torch.zeros(5, 1, 4, 4), torch.zeros(5, 1, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        fn(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4))


@pytest.mark.parametrize("fn", [mask_iou, f_score, iou_counts])
def test_value_validation(fn):
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        fn(torch.zeros(2, 3, 3), torch.full((2, 3, 3), 0.5))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        fn(torch.zeros(2, 3, 3), torch.full((2, 3, 3), 255.0))
    with pytest.raises(ValueError, match="floating"):
        fn(torch.zeros(2, 3, 3, dtype=torch.int64), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.full((2, 3, 3), float("nan")), torch.zeros(2, 3, 3))


def test_accumulator_validates():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        AVSBenchAccumulator().update(torch.zeros(5, 4, 4), torch.zeros(4, 4, 4))


def test_half_precision_logits_are_evaluated_in_float32():
    logits, gt = random_case(5)
    half = logits.half()
    assert mask_iou(half, gt) == mask_iou(half.float(), gt)
    assert f_score(half, gt) == f_score(half.float(), gt)
