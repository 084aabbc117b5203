"""TPAVI: the AVSBench baseline (Zhou et al., "Audio-Visual Segmentation", ECCV 2022) as a second architecture.

    frames [T,3,H,W] ─ timm backbone ─ four stages, strides 4, 8, 16, 32
    each stage ─ neck: four parallel 3x3 convs (dilations 3, 6, 12, 18), summed ─ C channels (C = d_model)
    log_mel [T,1,96,64] ─ VGGish ─ 128-d per frame ─ (in each TPAVI block) linear ─ C
    each stage ─ TPAVI block: non-local attention of every pixel of every frame of the clip (T x H x W) to the
                 audio of every frame, residual, LayerNorm
    stage 4 ─ fusion block ─ (+ stage 3) fusion block ─ (+ stage 2) ─ (+ stage 1) ─ stride 2, C channels
    mask head: 3x3 conv ─ x2 bilinear ─ 3x3 conv ─ ReLU ─ 1x1 conv ─ one mask logit per pixel, input size

Where each choice comes from. "AVSBench code" is the public repository github.com/OpenNLPLab/AVSBench
(avs_scripts/avs_s4 and avs_scripts/avs_ms3: model/ResNet_AVSModel.py, model/PVT_AVSModel.py, model/TPAVI.py,
loss.py, train.py, train.sh), read for its facts only; nothing here is copied from it.

- Encoders: ResNet-50 or PVT-v2-b5 (paper; code: ResNet_AVSModel, PVT_AVSModel with pvt_v2_b5) and VGGish 128-d
  embeddings without the PCA post-processing (code). Here the shared `autr.encoders` (`VisualBackbone`, `VGGish`),
  the same modules and preprocessing as AuTR, so the two compare on equal inputs. Freezing follows the house
  (`freeze_visual` / `freeze_audio`, set for an encoder loaded from a pretrained file); the AVSBench code keeps
  VGGish frozen and trains the visual backbone.
- Neck (the paper's ASPP): per stage, four parallel 3x3 convolutions with dilations 3, 6, 12 and 18 (padding
  equal to the dilation), summed, no normalisation or activation, weights drawn from N(0, 0.01) (code:
  Classifier_Module). Width C = 256 (code: `channel=256`); `d_model` here.
- TPAVI on all four stages, audio-visual form only (code: train.sh for S4 and MS3 pass `--tpavi_stages 0 1 2 3
  --tpavi_va_flag`; the video-video variant is not used there and not built here).
- The TPAVI block (code: TPAVI.py, mode "dot"): the 128-d audio of each frame is mapped to C by a linear layer of
  the block's own and broadcast over that frame's H x W positions; theta (video), phi (audio) and g (video) are
  1x1 projections to C/2 channels; the affinity of position i to position j over all T x H x W positions of the
  clip is theta_i . phi_j divided by the number of positions N = T*H*W (no softmax); y = affinity @ g goes
  through a 1x1 projection back to C and batch norm whose weight and bias start at 0 (so the block starts as the
  identity), is added to the input, and a LayerNorm over the channels ends the block.
  Computed exactly, not as the N x N matrix: phi_j is the same for every position of frame t, so
  sum_j (theta_i . phi_j) g_j / N = theta_i @ M with M = (1/T) sum_t phi_t (mean over H x W of g in frame t)^T, a
  C/2 x C/2 matrix per clip. That is O(T*H*W*C^2) instead of O((T*H*W)^2*C), and the graph exports with T
  dynamic; `TpaviBlock.dense` is the N x N form the tests compare it with. Every frame's output depends on every
  frame of its clip (through M), which is why TPAVI runs whole clips (`frames_independent = False`).
- Decoder (code: four FeatureFusionBlocks, path4 .. path1; the paper names a Panoptic-FPN-style decoder, the
  code's blocks are refinement blocks, which this follows): the deepest stage goes through a residual conv unit
  and x2 bilinear upsampling (align_corners=True); each shallower block adds a residual conv unit of its skip
  stage first. A residual conv unit is relu -> 3x3 conv -> relu -> 3x3 conv plus its input; the code's ReLU
  works in place, so the input it adds back is rectified, which is reproduced here without the in-place trick.
- Mask head (code: output_conv): 3x3 conv C -> 128, x2 bilinear (align_corners=False), 3x3 conv 128 -> 32, ReLU,
  1x1 conv 32 -> 1, so the logits come at the input size. The 128 / 32 widths are C/2 and C/8 here (equal at
  C = 256), so the small presets scale them down too.
- Loss (`TpaviCriterion`): BCE of the mask logits on the frames with ground truth (code: S4 trains on the first
  frame's mask, MS3 on all five); in MS3 plus 0.5 x the audio-visual matching term AVM (code: avs_ms3/train.sh
  `--masked_av_flag --masked_av_stages 0 1 2 3 --lambda_1 0.5 --kl_flag`; S4's train.sh has no such term): per
  stage, the mask logits average-pooled to the stage's size, sigmoid, multiply the stage's (TPAVI output, rectified
  as the decoder's first unit leaves it in the code) feature map, mean over H x W -> masked visual feature [C]; the
  KL divergence KL(softmax(audio_c) || softmax(masked_visual)) with the block's C-dim audio, summed over channels
  and over the frames of the batch (the code's reduction="sum"), not normalised (the code does not pass its
  feature-normalisation flag), averaged over the stages. The sum over frames makes the term grow with the batch:
  the code's batch is 4 clips (20 frames), `autr train`'s default 8.
- Training runs with the house's settings (`autr train`: AdamW 1e-4, weight decay 5e-4, batch 8), as AuTR, so a
  comparison varies only the model; the AVSBench code uses Adam 1e-4, batch 4, 15 (S4) / 30 (MS3) epochs.

Model contract (DESIGN.md): eval mode returns `masks` [T, H, W] logits at the input size and `scores` [T].
TPAVI has no sounding score: `scores` is each frame's largest mask logit, positive exactly when some pixel is
predicted sounding, so the runtime's sounding state (sigmoid(score) >= 0.5 by default) means "the mask is not
empty" (it ranks nothing beyond that: no query competes with it). Training mode returns
`pred_masks` [N, 1, H, W] logits (N = B*T, every frame of every clip), `avm_visual` (per stage [N, C, h, w]) and
`avm_audio` (per stage [N, C]) for the criterion.

Config fields read: `presets.TPAVI_FIELDS` (backbone, d_model = C, audio_dim, vggish_width, vggish_fc,
image_size, max_frames, freeze_visual, freeze_audio). Note the clip is the unit: the same frame gives different
masks in clips of different lengths or content (T = 1 in the live runtime has no temporal context).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autr.encoders import EncoderModel, VGGish, VisualBackbone
from autr.model import AuTR
from autr.presets import AutrConfig

DILATIONS = (3, 6, 12, 18)  # the neck's parallel 3x3 convolutions (AVSBench code: Classifier_Module)
N_STAGES = 4
AVM_WEIGHT = {"s4": 0.0, "ms3": 0.5}  # lambda of the AVM term per setting (AVSBench code: train.sh of each)


class DilatedNeck(nn.Module):
    """Sum of four parallel 3x3 convolutions with dilations 3, 6, 12, 18: a stage's channels -> C."""

    def __init__(self, c_in: int, d: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(c_in, d, 3, padding=r, dilation=r) for r in DILATIONS)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class TpaviBlock(nn.Module):
    """Temporal pixel-wise audio-visual interaction (dot-product non-local block with audio keys); see the module
    docstring. `forward(x [N,C,h,w], audio [N,audio_dim], t)`, clips of t consecutive frames, returns the new map
    [N,C,h,w] and the block's C-dim audio [N,C]."""

    def __init__(self, d: int, audio_dim: int):
        super().__init__()
        self.inter = max(1, d // 2)
        self.align = nn.Linear(audio_dim, d)
        self.theta = nn.Conv2d(d, self.inter, 1)
        self.phi = nn.Linear(d, self.inter)
        self.g = nn.Conv2d(d, self.inter, 1)
        self.out = nn.Sequential(nn.Conv2d(self.inter, d, 1), nn.BatchNorm2d(d))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        self.norm = nn.LayerNorm(d)

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.out(y) + x
        return self.norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, t: int):
        n, _, h, w = x.shape
        ci = self.inter
        a = self.align(audio)                                              # [N, C]
        phi = self.phi(a).view(-1, t, ci)                                  # [B, T, C']
        g = self.g(x).mean((-2, -1)).view(-1, t, ci)                       # [B, T, C']: per-frame mean of g
        m = phi.transpose(1, 2) @ g / t                                    # [B, C', C']
        theta = self.theta(x).flatten(2).transpose(1, 2).reshape(-1, t * h * w, ci)  # [B, T*h*w, C']
        y = (theta @ m).reshape(n, h * w, ci).transpose(1, 2).reshape(n, ci, h, w)
        return self._finish(x, y), a

    def dense(self, x: torch.Tensor, audio: torch.Tensor, t: int):
        """The same function in its textbook form: the [T*h*w, T*h*w] affinity over the clip (for the tests)."""
        n, c, h, w = x.shape
        ci = self.inter
        a = self.align(audio)
        keys = self.phi(a)[:, :, None].expand(n, ci, h * w)                # audio broadcast over each frame
        keys = keys.reshape(-1, t, ci, h * w).permute(0, 2, 1, 3).reshape(-1, ci, t * h * w)   # [B, C', N]
        theta = self.theta(x).view(-1, t, ci, h * w).permute(0, 1, 3, 2).reshape(-1, t * h * w, ci)
        g = self.g(x).view(-1, t, ci, h * w).permute(0, 1, 3, 2).reshape(-1, t * h * w, ci)
        affinity = theta @ keys / (t * h * w)                              # [B, N, N]
        y = (affinity @ g).reshape(n, h * w, ci).transpose(1, 2).reshape(n, ci, h, w)
        return self._finish(x, y), a


class ResidualConvUnit(nn.Module):
    """relu -> 3x3 conv -> relu -> 3x3 conv, plus the rectified input (see the module docstring)."""

    def __init__(self, d: int):
        super().__init__()
        self.conv1 = nn.Conv2d(d, d, 3, padding=1)
        self.conv2 = nn.Conv2d(d, d, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return self.conv2(F.relu(self.conv1(r))) + r


class FusionBlock(nn.Module):
    """(x + unit(skip)) -> unit -> x2 bilinear (align_corners=True); the deepest block has no skip."""

    def __init__(self, d: int, skip: bool):
        super().__init__()
        self.skip = ResidualConvUnit(d) if skip else None
        self.unit = ResidualConvUnit(d)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.skip is not None:
            x = x + self.skip(skip)
        return F.interpolate(self.unit(x), scale_factor=2.0, mode="bilinear", align_corners=True)


class TPAVI(EncoderModel):
    """The AVSBench TPAVI baseline (see the module docstring); built by `autr.build_model("tpavi-...")`."""

    frames_independent = False  # the TPAVI block attends across the clip: train and evaluate on whole clips
    check_inputs = AuTR.check_inputs  # the same input contract (and checks) as AuTR

    def __init__(self, cfg: AutrConfig):
        super().__init__()
        if cfg.arch != "tpavi":
            raise ValueError(f"TPAVI needs a config with arch 'tpavi', got {cfg.arch!r} ({cfg.name!r})")
        self.cfg = cfg
        d = cfg.d_model
        self.visual = VisualBackbone(cfg.backbone, cfg.feature_indices)
        self.audio = VGGish(cfg.vggish_width, cfg.vggish_fc, cfg.audio_dim)
        self.neck = nn.ModuleList(DilatedNeck(c, d) for c in self.visual.channels)
        self.tpavi = nn.ModuleList(TpaviBlock(d, cfg.audio_dim) for _ in range(N_STAGES))
        self.decoder = nn.ModuleList(FusionBlock(d, skip=s < N_STAGES - 1) for s in range(N_STAGES))
        mid, low = max(1, d // 2), max(1, d // 8)
        self.mask_head = nn.Sequential(
            nn.Conv2d(d, mid, 3, padding=1), nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
            nn.Conv2d(mid, low, 3, padding=1), nn.ReLU(), nn.Conv2d(low, 1, 1))
        self.freeze_encoders()

    def forward(self, frames: torch.Tensor, log_mel: torch.Tensor) -> dict:
        self.check_inputs(frames, log_mel)
        lead = frames.shape[:-3]
        size = frames.shape[-2:]
        frames, log_mel = frames.flatten(0, -4), log_mel.flatten(0, -4)
        masks, maps, audio = self.forward_clips(frames, log_mel, lead[-1])
        if self.training:
            return {"pred_masks": masks, "avm_visual": [F.relu(m) for m in maps], "avm_audio": audio}
        logits = masks[:, 0]
        return {"masks": logits.view(*lead, *size), "scores": logits.flatten(1).amax(1).view(lead)}

    def forward_clips(self, frames: torch.Tensor, log_mel: torch.Tensor, t: int):
        """frames [N,3,H,W], log_mel [N,1,96,64] (clips of t consecutive frames) -> mask logits [N,1,H,W], the
        TPAVI output maps (per stage [N,C,h,w]) and the blocks' audio (per stage [N,C])."""
        feats = self.visual(frames)
        emb = self.audio(log_mel)
        maps, audio = [], []
        for neck, block, feat in zip(self.neck, self.tpavi, feats):
            x, a = block(neck(feat), emb, t)
            maps.append(x)
            audio.append(a)
        y = self.decoder[-1](maps[-1])
        for s in range(N_STAGES - 2, -1, -1):
            y = self.decoder[s](y, maps[s])
        return self.mask_head(y), maps, audio


def _upsample(masks: torch.Tensor, size) -> torch.Tensor:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)


class TpaviCriterion(nn.Module):
    """BCE on the frames with ground truth, plus `lambda_avm` x the audio-visual matching term (module docstring).

    `forward(outputs, gt [N,H,W], valid=None [N], clip_len=None)` with the training-mode outputs of `TPAVI`;
    returns scalar tensors `loss_bce`, `loss` and, with `lambda_avm` > 0, `loss_avm`. Predictions are resized
    bilinearly to the ground truth's size when they differ (as `AutrCriterion`); GT is binarised with `> 0.5`.
    Frames with `valid` False take no part in either term; float `valid` values weight the frames.
    """

    def __init__(self, lambda_avm: float = 0.0):
        super().__init__()
        if lambda_avm < 0:
            raise ValueError(f"lambda_avm must be >= 0, got {lambda_avm}")
        self.lambda_avm = float(lambda_avm)

    def extra_repr(self) -> str:
        return f"lambda_avm={self.lambda_avm}"

    def forward(self, outputs: Dict, gt: torch.Tensor, valid: Optional[torch.Tensor] = None,
                clip_len: Optional[int] = None) -> Dict[str, torch.Tensor]:
        if not isinstance(outputs, dict) or "pred_masks" not in outputs:
            raise ValueError('outputs must be a dict with "pred_masks" [N, 1, h, w] (TPAVI in training mode)')
        masks = outputs["pred_masks"].float()
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"pred_masks must be [N, 1, h, w], got {tuple(masks.shape)}")
        n = masks.shape[0]
        if gt.dim() != 3 or gt.shape[0] != n:
            raise ValueError(f"gt must be [N, H, W] with N = {n}, got {tuple(gt.shape)}")
        if valid is not None and tuple(valid.shape) != (n,):
            raise ValueError(f"valid must be [N] = [{n}], got {tuple(valid.shape)}")
        device = masks.device
        w = torch.ones(n, device=device) if valid is None else valid.to(device).float().clamp_min(0.0)
        sel = (w > 0).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            zero = masks.sum() * 0.0
            out = {"loss_bce": zero, "loss": zero}
            return {**out, "loss_avm": zero} if self.lambda_avm else out
        w_v = w[sel]
        target = (gt.to(device)[sel] > 0.5).float()
        logits = _upsample(masks[sel], target.shape[-2:])[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
        loss_bce = (bce * w_v).sum() / w_v.sum()
        losses = {"loss_bce": loss_bce, "loss": loss_bce}
        if self.lambda_avm:
            losses["loss_avm"] = self.avm(masks[sel], [v[sel] for v in outputs["avm_visual"]],
                                          [a[sel] for a in outputs["avm_audio"]], w_v)
            losses["loss"] = loss_bce + self.lambda_avm * losses["loss_avm"]
        return losses

    @staticmethod
    def avm(masks: torch.Tensor, visual: list, audio: list, weights: torch.Tensor) -> torch.Tensor:
        """The AVM term: mask logits [V,1,H,W], per stage visual maps [V,C,h,w] and audio [V,C], frame weights [V]."""
        total = masks.new_zeros(())
        for v, a in zip(visual, audio):
            v, a = v.float(), a.float()
            pooled = F.adaptive_avg_pool2d(masks, v.shape[-2:]).sigmoid()   # [V, 1, h, w]
            masked = (v * pooled).mean((-2, -1))                              # [V, C]
            kl = F.kl_div(masked.log_softmax(-1), a.softmax(-1), reduction="none").sum(-1)  # [V]
            total = total + (kl * weights).sum()
        return total / len(visual)
