"""AVSBench evaluation metrics: mIoU (Jaccard) and F-score, as the official scripts compute them.

The official code is ``mask_iou``, ``Eval_Fmeasure`` and ``_eval_pr`` in
``avs_scripts/avs_s4/utils/utility.py`` of OpenNLPLab/AVSBench (the MS3 scripts use the same
functions), driven by ``avs_scripts/avs_s4/test.py``. Semantics reproduced here:

* Both metrics take mask **logits** ``[N, H, W]`` and binary ground truth ``[N, H, W]`` (AVSBench
  loads masks as float32 {0, 1}); the official test loop calls them once per video (batch size
  1, ``N = T = 5`` frames) and reports the mean of the per-video values.
* ``mask_iou``: prediction ``sigmoid(logit) > 0.5`` (strict, so a logit of exactly 0 is
  background). Per frame ``IoU = inter / (union + 1e-7)``; for a frame whose ground truth is empty
  (sum 0) ``inter`` becomes the number of true-negative pixels and ``union`` the number of pixels
  ``H * W``, so an empty prediction scores 1 and a prediction covering ``k`` pixels scores
  ``(H*W - k) / (H*W)``. The result is the mean over the ``N`` frames.
* ``Eval_Fmeasure``: probabilities ``sigmoid(logit)``; 255 thresholds
  ``torch.linspace(0, 1 - 1e-10, 255)`` in float32 (where ``1 - 1e-10`` rounds to exactly 1.0);
  prediction ``prob >= threshold``; per threshold ``precision = tp / (n_pred + 1e-20)`` and
  ``recall = tp / (n_gt + 1e-20)``; ``F = 1.3 P R / (0.3 P + R)`` with NaN (P = R = 0) set to 0.
  Frames with empty ground truth are skipped; the F curves of the remaining frames are averaged
  and the maximum over thresholds is returned. A call without any non-empty frame returns 0.
  The F-score of a video is thus the max of the frame-mean curve, not the mean of per-frame
  maxima.

Everything is computed in float32 on the logits' device, as the official code does, so the
per-video values agree with it to the last bit for float32 logits.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

__all__ = [
    "IOU_EPS",
    "FSCORE_BETA2",
    "FSCORE_NUM_THRESHOLDS",
    "mask_iou",
    "fmeasure_curve",
    "f_score",
    "iou_counts",
    "dataset_miou",
    "AVSBenchAccumulator",
]

#: ``eps`` added to the union in AVSBench's ``mask_iou``.
IOU_EPS = 1e-7
#: beta^2 of AVSBench's F-measure.
FSCORE_BETA2 = 0.3
#: Number of thresholds of AVSBench's F-measure (``pr_num``).
FSCORE_NUM_THRESHOLDS = 255
#: ``eps`` in the precision / recall denominators of ``_eval_pr``.
_PR_EPS = 1e-20


def _validate(logits, gt) -> Tuple[torch.Tensor, torch.Tensor]:
    """Check a (logits, gt) pair and return (float logits, float32 gt on the logits' device)."""
    logits = torch.as_tensor(logits)
    gt = torch.as_tensor(gt)
    if logits.dim() != 3 or gt.dim() != 3 or logits.shape != gt.shape:
        raise ValueError(
            "expected logits and gt of the same shape [N, H, W]; "
            f"got logits {tuple(logits.shape)} and gt {tuple(gt.shape)}"
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0 or logits.shape[2] == 0:
        raise ValueError(f"expected non-empty [N, H, W] tensors; got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor; got dtype {logits.dtype}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    gt = gt.to(device=logits.device)
    if gt.dtype == torch.bool:
        gt = gt.float()
    elif not bool(((gt == 0) | (gt == 1)).all()):
        raise ValueError("gt must be a binary mask with values in {0, 1}")
    return logits, gt.float()


def mask_iou(logits, gt, eps: float = IOU_EPS) -> float:
    """AVSBench mIoU of one batch (one video): mean over frames of the per-frame IoU.

    Args:
        logits: mask logits ``[N, H, W]`` (float tensor; half precision is evaluated in float32).
        gt: binary ground truth ``[N, H, W]`` (bool, integer or float {0, 1}).
        eps: added to the union, as AVSBench (``1e-7``).

    Returns:
        Python float. Frames with empty ground truth score ``true negatives / (H * W)``.
    """
    logits, target = _validate(logits, gt)
    return _mask_iou(logits, target, eps)


def _mask_iou(logits: torch.Tensor, target: torch.Tensor, eps: float = IOU_EPS) -> float:
    n, h, w = target.shape
    pred = (torch.sigmoid(logits) > 0.5).float()
    empty_gt = target.sum(dim=(1, 2)) == 0
    inter = (pred * target).sum(dim=(1, 2))
    union = torch.maximum(pred, target).sum(dim=(1, 2))
    true_neg = ((1 - target) * (1 - pred)).sum(dim=(1, 2))
    inter = torch.where(empty_gt, true_neg, inter)
    union = torch.where(empty_gt, torch.full_like(union, float(h * w)), union)
    return float(torch.sum(inter / (union + eps)) / n)


def _thresholds(device: torch.device) -> torch.Tensor:
    return torch.linspace(0, 1 - 1e-10, FSCORE_NUM_THRESHOLDS, dtype=torch.float32, device=device)


def _count_at_least(sorted_values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each threshold, how many of ``sorted_values`` are ``>= threshold`` (float32 counts)."""
    below = torch.searchsorted(sorted_values, thresholds.to(sorted_values.dtype), right=False)
    return (sorted_values.numel() - below).to(torch.float32)


def fmeasure_curve(logits, gt, beta2: float = FSCORE_BETA2) -> Tuple[torch.Tensor, int]:
    """The AVSBench F-measure curve of one batch, before the max over thresholds.

    Args:
        logits: mask logits ``[N, H, W]``.
        gt: binary ground truth ``[N, H, W]``.
        beta2: beta squared (0.3 in AVSBench).

    Returns:
        ``(curve, n_frames)``: float32 ``[255]`` mean F per threshold over the frames with
        non-empty ground truth (zeros when there are none) and the number of those frames.
        Threshold ``i`` is ``torch.linspace(0, 1 - 1e-10, 255)[i]``.
    """
    logits, target = _validate(logits, gt)
    return _fmeasure_curve(logits, target, beta2)


def _fmeasure_curve(logits: torch.Tensor, target: torch.Tensor, beta2: float) -> Tuple[torch.Tensor, int]:
    prob = torch.sigmoid(logits)
    thresholds = _thresholds(prob.device)
    f_sum = torch.zeros(FSCORE_NUM_THRESHOLDS, dtype=torch.float32, device=prob.device)
    n_valid = 0
    for i in range(target.shape[0]):
        y = target[i]
        n_gt = y.sum()
        if n_gt == 0:  # AVSBench: torch.mean(gt) == 0 -> skipped
            continue
        p = prob[i].reshape(-1)
        # Counts of pixels at or above each threshold, found by binary search in the sorted
        # probabilities. Counts are integers, so they equal AVSBench's per-threshold sums exactly.
        n_pred = _count_at_least(torch.sort(p).values, thresholds)
        tp = _count_at_least(torch.sort(p[y.reshape(-1) > 0]).values, thresholds)
        precision = tp / (n_pred + _PR_EPS)
        recall = tp / (n_gt + _PR_EPS)
        f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
        f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
        f_sum = f_sum + f
        n_valid += 1
    if n_valid == 0:
        return f_sum, 0
    return f_sum / n_valid, n_valid


def f_score(logits, gt, beta2: float = FSCORE_BETA2) -> float:
    """AVSBench F-score of one batch (one video): max over thresholds of the frame-mean F.

    Args:
        logits: mask logits ``[N, H, W]``.
        gt: binary ground truth ``[N, H, W]``.
        beta2: beta squared (0.3 in AVSBench).

    Returns:
        Python float; 0.0 when every frame's ground truth is empty.
    """
    logits, target = _validate(logits, gt)
    return _f_score(logits, target, beta2)


def _f_score(logits: torch.Tensor, target: torch.Tensor, beta2: float = FSCORE_BETA2) -> float:
    curve, n_valid = _fmeasure_curve(logits, target, beta2)
    if n_valid == 0:
        return 0.0
    return float(curve.max())


def iou_counts(logits, gt) -> Tuple[int, int]:
    """Plain intersection and union pixel counts summed over all frames.

    Prediction is ``sigmoid(logit) > 0.5``. Unlike :func:`mask_iou` there is no special rule for
    empty ground truth: such a frame adds its false positives to the union and nothing to the
    intersection.

    Returns:
        ``(intersection, union)`` as Python ints.
    """
    logits, target = _validate(logits, gt)
    return _iou_counts(logits, target)


def _iou_counts(logits: torch.Tensor, target: torch.Tensor) -> Tuple[int, int]:
    pred = torch.sigmoid(logits) > 0.5
    mask = target > 0
    return int((pred & mask).sum()), int((pred | mask).sum())


def dataset_miou(intersection: int, union: int) -> float:
    """Dataset-level IoU ``sum(I) / sum(U)`` from :func:`iou_counts` totals.

    This is *not* the AVSBench mIoU (a mean of per-frame IoUs); it weights frames by their area.
    Returns 1.0 when ``union`` is 0 (nothing to segment and nothing predicted).
    """
    if intersection < 0 or union < 0 or intersection > union:
        raise ValueError(f"need 0 <= intersection <= union; got intersection={intersection}, union={union}")
    if union == 0:
        return 1.0
    return intersection / union


class AVSBenchAccumulator:
    """Accumulates AVSBench metrics over a test set, one video per :meth:`update`.

    ``miou`` and ``fscore`` are the means over videos of :func:`mask_iou` and :func:`f_score`, as
    AVSBench's ``test.py`` averages its per-batch values with batch size 1. ``miou_dataset`` is
    :func:`dataset_miou` over all frames.

    Example::

        acc = AVSBenchAccumulator()
        for logits, gt in videos:           # [T, H, W] each
            acc.update(logits, gt)
        print(acc.compute())                # {"miou": ..., "fscore": ..., ...}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._miou: List[float] = []
        self._fscore: List[float] = []
        self._intersection = 0
        self._union = 0
        self._n_frames = 0

    @property
    def n_videos(self) -> int:
        return len(self._miou)

    def update(self, logits, gt) -> Dict[str, float]:
        """Add one video: ``logits`` and ``gt`` of shape ``[T, H, W]``.

        Returns the video's ``{"miou": ..., "fscore": ...}``.
        """
        logits, target = _validate(logits, gt)
        miou = _mask_iou(logits, target)
        fscore = _f_score(logits, target)
        inter, union = _iou_counts(logits, target)
        self._miou.append(miou)
        self._fscore.append(fscore)
        self._intersection += inter
        self._union += union
        self._n_frames += target.shape[0]
        return {"miou": miou, "fscore": fscore}

    def compute(self) -> Dict[str, float]:
        """Return ``{"miou", "fscore", "miou_dataset", "n_videos", "n_frames"}``.

        Raises:
            RuntimeError: when no video has been added.
        """
        if not self._miou:
            raise RuntimeError("AVSBenchAccumulator.compute() called before any update(): no video was "
                               "evaluated (is the split empty?)")
        n = len(self._miou)
        return {
            "miou": sum(self._miou) / n,
            "fscore": sum(self._fscore) / n,
            "miou_dataset": dataset_miou(self._intersection, self._union),
            "n_videos": n,
            "n_frames": self._n_frames,
        }
