"""Training criterion of AuTR: best-query matching per clip, mask losses on the matched query,
sounding-score BCE on all queries.

Inputs (training-mode model output, B clips of T frames folded as N = B*T, frames of a clip consecutive)
--------------------------------------------------------------------------------------------------------
- ``outputs["pred_masks"]``  float logits ``[N, Nq, h, w]`` (h = H/4, w = W/4 for the model; any size works)
- ``outputs["pred_scores"]`` float logits ``[N, Nq]`` (sounding score per query)
- ``gt``     ``[N, H, W]`` ground-truth masks in {0, 1}; binarised with ``gt > 0.5`` (so 0/255 masks need
  dividing first; soft masks are thresholded). H, W may equal h, w.
- ``valid``  ``[N]`` bool (default all True). Frames with ``valid == False`` take no part in matching or in
  any loss (AVSBench S4 train supervises only the first frame of each clip). A float tensor is accepted
  as per-frame weights (weight 0 == invalid); bool is the usual case.

Resolution rule
---------------
Predictions are upsampled to the GT size with ``F.interpolate(mode="bilinear", align_corners=False)``
(the same rule the model uses at inference); GT is never resampled. Losses and costs are therefore
measured at GT resolution. When GT already has size h x w no interpolation happens.

The rule (per clip b with frames F_b, valid weights v_t, GT g_t, "g_t non-empty" := any pixel of g_t is 1)
--------------------------------------------------------------------------------------------------
1. cost_t(q) = l_dice * dice(m_tq, g_t) + l_focal * focal(m_tq, g_t) + l_sound * BCE(s_tq, [g_t non-empty]).
2. cost_b(q) = sum_t v_t cost_t(q) / sum_t v_t  over t in F_b;  q*_b = argmin_q cost_b(q) (no_grad, one
   query for the whole clip; ties go to the lowest index; a clip with no valid frame gets q* = 0, unused).
3. Mask losses on q*_b for EVERY valid frame, empty GT included: focal (mean over pixels) pushes an empty
   frame's mask to all-background; dice is the smooth dice 1 - (2 sum(p g) + 1) / (sum p + sum g + 1),
   which for an empty GT is 1 - 1 / (sum p + 1): 0 for an empty prediction, growing with predicted area.
4. Sound BCE on ALL queries of valid frames: target 1 for q*_b on frames whose GT is non-empty, 0 for every
   other query and for every query of an empty-GT frame (nothing sounds -> no query should claim it).
5. Each loss is a per-frame value (focal: pixel mean; dice: per frame; sound: mean over Nq) averaged over
   valid frames with weights v_t; loss = l_dice * loss_dice + l_focal * loss_focal + l_sound * loss_sound.
   With no valid frame at all every loss is an exact 0 that stays attached to the graph.
6. Auxiliary outputs (``outputs["aux_outputs"]``: a list of dicts like ``outputs``, one per earlier decoder
   layer, from a model with ``aux_loss``): each is matched and scored by steps 1-5 on its own, as DETR and
   ReferFormer do; their weighted totals add up to ``loss_aux``, which is added to ``loss``.

Default weights
---------------
``lambda_dice = 5``, ``lambda_focal = 2``, ``lambda_sound = 2``, focal alpha 0.25, gamma 2. The AuTR paper
(Liu et al. 2023, arXiv 2307.13236) writes the matching cost and loss as l_dice*dice + l_focal*focal +
l_sound*sound but the values could not be confirmed from a primary source here; the defaults are those of
ReferFormer (``--dice_loss_coef 5 --mask_loss_coef 2 --cls_loss_coef 2 --focal_alpha 0.25``, also used for
its matching cost), whose query-based video segmentation design (dynamic-conv mask head, per-query score,
one query per clip) AuTR follows, with the sounding score in the place of ReferFormer's class score.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ["AutrCriterion", "build_criterion", "sigmoid_focal_loss", "dice_loss", "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = {"lambda_dice": 5.0, "lambda_focal": 2.0, "lambda_sound": 2.0}


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise sigmoid focal loss (no reduction), same shape as ``logits``.

    ``FL = alpha_t * (1 - p_t) ** gamma * BCE(logits, targets)`` with p = sigmoid(logits),
    p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t); alpha < 0 disables alpha weighting.
    """
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smooth dice loss per leading index: ``logits``/``targets`` ``[..., P]`` (flattened pixels) -> ``[...]``.

    ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)``; 0 for empty-vs-empty, broadcasting allowed.
    """
    p = logits.sigmoid()
    num = 2.0 * (p * targets).sum(-1) + 1.0
    den = p.sum(-1) + targets.sum(-1) + 1.0
    return 1.0 - num / den


def _upsample(masks: torch.Tensor, size) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of ``[N, C, h, w]`` to ``size``; identity when sizes agree."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)


class AutrCriterion(torch.nn.Module):
    """Best-query matching per clip + dice/focal mask losses + sounding-score BCE (see module docstring).

    ``forward(outputs, gt, valid=None, clip_len=None)`` returns a dict with scalar tensors ``loss_dice``,
    ``loss_focal``, ``loss_sound``, ``loss`` (weighted total) and ``matched`` (LongTensor ``[B]``, detached);
    with ``aux_outputs`` also ``loss_aux`` (already part of ``loss``). The dice / focal / sound terms and
    ``matched`` are the last layer's.
    """

    def __init__(self, lambda_dice: float = DEFAULT_WEIGHTS["lambda_dice"],
                 lambda_focal: float = DEFAULT_WEIGHTS["lambda_focal"],
                 lambda_sound: float = DEFAULT_WEIGHTS["lambda_sound"],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, clip_len: int = 5):
        super().__init__()
        for name, v in (("lambda_dice", lambda_dice), ("lambda_focal", lambda_focal),
                        ("lambda_sound", lambda_sound)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if int(clip_len) < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)
        self.lambda_sound = float(lambda_sound)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.clip_len = int(clip_len)

    def extra_repr(self) -> str:
        return (f"lambda_dice={self.lambda_dice}, lambda_focal={self.lambda_focal}, "
                f"lambda_sound={self.lambda_sound}, focal_alpha={self.focal_alpha}, "
                f"focal_gamma={self.focal_gamma}, clip_len={self.clip_len}")

    # ------------------------------------------------------------------ checks
    def _check(self, outputs, gt, valid, T):
        if not isinstance(outputs, dict) or "pred_masks" not in outputs or "pred_scores" not in outputs:
            raise ValueError('outputs must be a dict with "pred_masks" [N, Nq, h, w] and '
                             '"pred_scores" [N, Nq]')
        masks, scores = outputs["pred_masks"], outputs["pred_scores"]
        if masks.dim() != 4:
            raise ValueError(f"pred_masks must be 4-D [N, Nq, h, w] (N = B*T frames), got shape "
                             f"{tuple(masks.shape)}")
        N, Nq = masks.shape[:2]
        if N == 0 or Nq == 0:
            raise ValueError(f"pred_masks [N, Nq, h, w] needs N >= 1 and Nq >= 1, got {tuple(masks.shape)}")
        if scores.shape != (N, Nq):
            raise ValueError(f"pred_scores must be [N, Nq] = [{N}, {Nq}] to match pred_masks "
                             f"{tuple(masks.shape)}, got {tuple(scores.shape)}")
        if gt.dim() != 3 or gt.shape[0] != N:
            raise ValueError(f"gt must be [N, H, W] with N = {N} (frames of pred_masks), got shape "
                             f"{tuple(gt.shape)}")
        if T < 1 or N % T != 0:
            raise ValueError(f"N = {N} frames is not divisible by clip_len T = {T}; expected N = B*T with "
                             f"the frames of each clip consecutive")
        if valid is not None and tuple(valid.shape) != (N,):
            raise ValueError(f"valid must be [N] = [{N}] (one flag per frame), got shape "
                             f"{tuple(valid.shape)}")

    # ------------------------------------------------------------------ matching
    @torch.no_grad()
    def frame_costs(self, masks_up: torch.Tensor, scores: torch.Tensor, gt_flat: torch.Tensor,
                    nonempty: torch.Tensor) -> torch.Tensor:
        """Per-frame matching cost ``[V, Nq]`` (rule step 1).

        ``masks_up`` ``[V, Nq, P]`` logits at GT resolution (P = H*W), ``scores`` ``[V, Nq]``,
        ``gt_flat`` ``[V, P]`` in {0, 1}, ``nonempty`` ``[V]`` float in {0, 1}.
        """
        V, Nq, _ = masks_up.shape
        tgt = gt_flat[:, None, :]
        cost = torch.zeros(V, Nq, device=masks_up.device, dtype=torch.float32)
        if self.lambda_dice:
            cost += self.lambda_dice * dice_loss(masks_up, tgt)
        if self.lambda_focal:
            cost += self.lambda_focal * sigmoid_focal_loss(
                masks_up, tgt.expand_as(masks_up), self.focal_alpha, self.focal_gamma).mean(-1)
        if self.lambda_sound:
            cost += self.lambda_sound * F.binary_cross_entropy_with_logits(
                scores, nonempty[:, None].expand_as(scores), reduction="none")
        return cost

    # ------------------------------------------------------------------ forward
    def forward(self, outputs: Dict[str, torch.Tensor], gt: torch.Tensor,
                valid: Optional[torch.Tensor] = None, clip_len: Optional[int] = None) -> Dict[str, torch.Tensor]:
        losses = self.layer_losses(outputs, gt, valid, clip_len)
        aux = outputs.get("aux_outputs") if isinstance(outputs, dict) else None
        if aux:
            losses["loss_aux"] = sum(self.layer_losses(a, gt, valid, clip_len)["loss"] for a in aux)
            losses["loss"] = losses["loss"] + losses["loss_aux"]
        return losses

    def layer_losses(self, outputs: Dict[str, torch.Tensor], gt: torch.Tensor,
                     valid: Optional[torch.Tensor] = None, clip_len: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Rule steps 1-5 on one layer's ``pred_masks`` / ``pred_scores``."""
        T = int(self.clip_len if clip_len is None else clip_len)
        self._check(outputs, gt, valid, T)
        masks = outputs["pred_masks"].float()
        scores = outputs["pred_scores"].float()
        N, Nq = masks.shape[:2]
        B = N // T
        H, W = gt.shape[-2:]
        device = masks.device

        if valid is None:
            w = torch.ones(N, device=device)
        else:
            w = valid.to(device=device).float().clamp_min(0.0)        # bool -> {0, 1}; floats = weights
        sel = (w > 0).nonzero(as_tuple=True)[0]                       # valid frame indices [V]
        if sel.numel() == 0:
            zero = masks.sum() * 0.0 + scores.sum() * 0.0             # exact 0, still in the graph
            return {"loss_dice": zero, "loss_focal": zero, "loss_sound": zero, "loss": zero,
                    "matched": torch.zeros(B, dtype=torch.long, device=device)}
        w_v = w[sel]
        denom = w_v.sum()

        # only valid frames are touched from here on: invalid frames get exactly zero gradient
        gt_flat = (gt.to(device)[sel] > 0.5).float().flatten(1)       # [V, P]
        nonempty = (gt_flat.sum(-1) > 0).float()                      # [V]
        masks_v, scores_v = masks[sel], scores[sel]                   # [V, Nq, h, w], [V, Nq]

        # 1-2. matching (no_grad), predictions upsampled to GT resolution, weighted mean per clip
        with torch.no_grad():
            cost_v = self.frame_costs(_upsample(masks_v.detach(), (H, W)).flatten(2),
                                      scores_v.detach(), gt_flat, nonempty)          # [V, Nq]
            cost = torch.zeros(N, Nq, device=device)
            cost[sel] = cost_v * w_v[:, None]
            wc = torch.zeros(N, device=device)
            wc[sel] = w_v
            clip_cost = cost.view(B, T, Nq).sum(1) / wc.view(B, T).sum(1, keepdim=True).clamp_min(1e-12)
            matched = clip_cost.argmin(dim=1)                         # [B]
        q_v = matched.repeat_interleave(T)[sel]                       # matched query per valid frame
        rows = torch.arange(sel.numel(), device=device)

        # 3. mask losses on the matched query only (gather first, then upsample: grads reach only it)
        m = _upsample(masks_v[rows, q_v][:, None], (H, W)).flatten(1)  # [V, P]
        focal_f = sigmoid_focal_loss(m, gt_flat, self.focal_alpha, self.focal_gamma).mean(-1)  # [V]
        dice_f = dice_loss(m, gt_flat)                                # [V]

        # 4. sounding-score targets on all queries: matched query <- [GT non-empty], others 0
        s_tgt = torch.zeros_like(scores_v)
        s_tgt[rows, q_v] = nonempty
        sound_f = F.binary_cross_entropy_with_logits(scores_v, s_tgt, reduction="none").mean(-1)  # [V]

        # 5. valid-weighted means over frames
        loss_focal = (focal_f * w_v).sum() / denom
        loss_dice = (dice_f * w_v).sum() / denom
        loss_sound = (sound_f * w_v).sum() / denom
        loss = (self.lambda_dice * loss_dice + self.lambda_focal * loss_focal
                + self.lambda_sound * loss_sound)
        return {"loss_dice": loss_dice, "loss_focal": loss_focal, "loss_sound": loss_sound,
                "loss": loss, "matched": matched.detach().long()}


def build_criterion(cfg, mode: str = "s4") -> torch.nn.Module:
    """The training criterion of a model config and an AVSBench setting (`mode` "s4" or "ms3"): `AutrCriterion`
    for AuTR (the same in both settings); for TPAVI (`cfg.arch == "tpavi"`), `autr.tpavi.TpaviCriterion` with the
    audio-visual matching term where the AVSBench code uses it (MS3, weight 0.5; S4: BCE only)."""
    if mode not in ("s4", "ms3"):
        raise ValueError(f"mode must be s4 or ms3, got {mode!r}")
    if getattr(cfg, "arch", "autr") == "tpavi":
        from autr.tpavi import AVM_WEIGHT, TpaviCriterion

        return TpaviCriterion(lambda_avm=AVM_WEIGHT[mode])
    return AutrCriterion()
