"""AuTR: the audio-aware query-enhanced transformer (Liu et al. 2023, Fig. 2), assembled.

    frames [T,3,H,W] ─ timm backbone ─ strides 4, 8, 16, 32
    log_mel [T,1,96,64] ─ VGGish ─ 128-d ─ MLP ─ audio a_t (C_av)
    strides 8/16/32 ─ 1x1 conv ─ AVEF (visual queries, audio keys/values) ─ deformable encoder
    a_t + query position embeddings ─ audio-aware decoder (deformable cross-attention) ─ Nq queries
    encoder memory + stride 4 ─ FPN pixel decoder with audio attention ─ mask features (stride 4)
    queries ─ dynamic conv over the mask features ─ Nq masks;  queries ─ linear ─ Nq sounding scores

Training mode returns every query: `pred_masks` [N, Nq, H/4, W/4] and `pred_scores` [N, Nq]
(N = frames of all clips), and with `cfg.aux_loss` the same for every earlier decoder layer in
`aux_outputs`. Eval mode returns one query's mask per frame, upsampled to the input size: `masks` [T, H, W]
logits and `scores` [T] logits. Which query is `cfg.query_select`: "clip" (default) takes, for the whole
clip, the query whose sounding probability is highest on average over its frames (ReferFormer's rule, the
one query per clip that training matches); "frame" takes each frame's highest-scoring query. At T = 1, as in
the live runtime (one window at a time), both rules pick the same query.

Frozen encoders (`cfg.freeze_visual`, `cfg.freeze_audio`) take no gradient and stay in eval mode, so their
batch-norm statistics never move, even under `model.train()`.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from autr.encoders import EncoderModel, VGGish, VisualBackbone
from autr.ops import can_read_values
from autr.heads import DotProductMaskHead, DynamicMaskHead, PixelDecoder
from autr.presets import AutrConfig, get_config
from autr.transformer import (AudioAwareDecoder, AudioCrossAttention, DeformableEncoder, mlp,
                              sine_position_encoding)

N_LEVELS = 3  # the paper's three scales: strides 8, 16, 32
LOG_MEL_SHAPE = (1, 96, 64)


class AuTR(EncoderModel):
    def __init__(self, cfg: AutrConfig):
        super().__init__()
        self._levels = {}  # (level shapes, device) -> level tensors, CUDA only (see level_tensors)
        self.cfg = cfg
        d = cfg.d_model
        self.visual = VisualBackbone(cfg.backbone, cfg.feature_indices)
        self.audio = VGGish(cfg.vggish_width, cfg.vggish_fc, cfg.audio_dim)
        self.audio_proj = mlp([cfg.audio_dim, d, d])
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(min(32, d // 4), d))
            for c in self.visual.channels[1:]
        )
        self.avef = nn.ModuleList(AudioCrossAttention(d, cfg.n_heads, cfg.dropout) for _ in range(N_LEVELS))
        self.level_embed = nn.Parameter(torch.empty(N_LEVELS, d).normal_())
        self.encoder = DeformableEncoder(cfg.enc_layers, d, N_LEVELS, cfg.n_heads, cfg.n_points,
                                         cfg.ffn_dim, cfg.dropout)
        self.decoder = AudioAwareDecoder(cfg.dec_layers, d, N_LEVELS, cfg.n_heads, cfg.n_points,
                                         cfg.ffn_dim, cfg.dropout, cfg.n_queries, cfg.audio_queries,
                                         cfg.dynamic_reference)
        self.pixel_decoder = PixelDecoder(d, self.visual.channels[0], cfg.mask_dim, cfg.n_heads, cfg.pixel_pool)
        if cfg.dynamic_conv:
            self.mask_head = DynamicMaskHead(d, cfg.mask_dim, cfg.dyn_channels, cfg.dyn_layers)
        else:
            self.mask_head = DotProductMaskHead(d, cfg.mask_dim)
        self.score_head = nn.Linear(d, 1)
        self.freeze_encoders()

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, frames: torch.Tensor, log_mel: torch.Tensor):
        """Validate a clip [T,3,H,W] (or a batch of clips [B,T,3,H,W]); raise ValueError with the expected shapes."""
        cfg = self.cfg
        expect = f"frames [T, 3, H, W] (or [B, T, 3, H, W]) with T <= {cfg.max_frames} and H, W multiples of 32"
        if not isinstance(frames, torch.Tensor) or not isinstance(log_mel, torch.Tensor):
            raise ValueError(f"frames and log_mel must be torch tensors; expected {expect}")
        if frames.dim() not in (4, 5) or frames.shape[-3] != 3:
            raise ValueError(f"expected {expect}, got frames of shape {tuple(frames.shape)}")
        lead = tuple(frames.shape[:-3])
        if tuple(log_mel.shape) != lead + LOG_MEL_SHAPE:
            raise ValueError(
                f"log_mel must be {list(lead) + list(LOG_MEL_SHAPE)} (one VGGish example per frame), "
                f"got {tuple(log_mel.shape)}"
            )
        h, w = frames.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"frame size {h}x{w} is not a multiple of 32; expected {expect}")
        if lead[-1] > cfg.max_frames:
            raise ValueError(f"got T={lead[-1]} frames but preset {cfg.name!r} allows at most "
                             f"T={cfg.max_frames} (max_frames)")
        if not frames.is_floating_point() or not log_mel.is_floating_point():
            raise ValueError(f"frames and log_mel must be floating point, got {frames.dtype} / {log_mel.dtype}")
        if can_read_values(frames):
            if not torch.isfinite(frames).all():
                raise ValueError("frames contain NaN or Inf values")
            if not torch.isfinite(log_mel).all():
                raise ValueError("log_mel contains NaN or Inf values")

    def level_tensors(self, shapes, device):
        """(spatial_shapes [L,2], level_start_index [L]) as long tensors on `device`. On CUDA they are kept per
        input size, so that a CUDA graph captured after one eager call makes no host-to-device copy."""
        key = (tuple(shapes), str(device))
        if key in self._levels:
            return self._levels[key]
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"run the model once on {device} at this input size before capturing a CUDA graph")
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        tensors = (torch.as_tensor(shapes, dtype=torch.long, device=device),
                   torch.as_tensor(starts, dtype=torch.long, device=device))
        if device.type == "cuda":
            self._levels[key] = tensors
        return tensors

    # ------------------------------------------------------------------ forward
    def forward(self, frames: torch.Tensor, log_mel: torch.Tensor) -> dict:
        self.check_inputs(frames, log_mel)
        lead = frames.shape[:-3]
        frames, log_mel = frames.flatten(0, -4), log_mel.flatten(0, -4)
        if self.training:
            layers = self.forward_layers(frames, log_mel)
            out = {"pred_masks": layers[-1][0], "pred_scores": layers[-1][1]}
            if self.cfg.aux_loss:
                out["aux_outputs"] = [{"pred_masks": m, "pred_scores": sc} for m, sc in layers[:-1]]
            return out
        masks, scores = self.forward_queries(frames, log_mel)
        clip_len = lead[-1] if self.cfg.query_select == "clip" else None
        best_mask, best_score = select_best_query(masks, scores, frames.shape[-2:], clip_len)
        return {"masks": best_mask.view(*lead, *frames.shape[-2:]), "scores": best_score.view(lead)}

    def forward_queries(self, frames: torch.Tensor, log_mel: torch.Tensor):
        """frames [N,3,H,W], log_mel [N,1,96,64] -> all queries' mask logits [N,Nq,H/4,W/4], scores [N,Nq]."""
        return self.forward_layers(frames, log_mel, all_layers=False)[-1]

    def forward_layers(self, frames: torch.Tensor, log_mel: torch.Tensor, all_layers: bool = True):
        """[(mask logits [N,Nq,H/4,W/4], scores [N,Nq])] for every decoder layer (or only the last one)."""
        feats = self.visual(frames)
        audio = self.audio_proj(self.audio(log_mel))  # [N, C]
        srcs, poss, shapes = [], [], []
        for lvl, feat in enumerate(feats[1:]):
            x = self.input_proj[lvl](feat)
            n, c, h, w = x.shape
            pos = sine_position_encoding(n, h, w, c, x.device, x.dtype)
            tokens = self.avef[lvl](x.flatten(2).transpose(1, 2), audio, pos)
            srcs.append(tokens)
            poss.append(pos + self.level_embed[lvl])
            shapes.append((h, w))
        src, pos = torch.cat(srcs, 1), torch.cat(poss, 1)
        spatial_shapes, level_start_index = self.level_tensors(shapes, src.device)

        memory = self.encoder(src, pos, shapes, spatial_shapes, level_start_index)
        queries, references = self.decoder(audio, memory, spatial_shapes, level_start_index)

        maps = [m.transpose(1, 2).reshape(m.shape[0], -1, h, w)
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], 1), shapes)]
        mask_features = self.pixel_decoder(maps, feats[0], audio)
        pairs = list(zip(queries, references)) if all_layers else [(queries[-1], references[-1])]
        return [(self.mask_head(q, ref, mask_features), self.score_head(q).squeeze(-1)) for q, ref in pairs]


@contextlib.contextmanager
def deploy_form(model: nn.Module):
    """Within the block, `model` (in eval mode) computes the same function in the form an export wants: exact
    rewrites that trace to fewer and cheaper graph nodes (today: the audio cross-attention over its two keys
    in closed form, `AudioCrossAttention.two_key_attention`). Training and the research baseline keep the
    textbook form; the exporter traces in this one (as YOLO's `fuse()` folds batch norm only for deployment)."""
    layers = [mod for mod in model.modules() if isinstance(mod, AudioCrossAttention)]
    try:
        for mod in layers:
            mod.closed_form = True
        yield model
    finally:
        for mod in layers:
            mod.closed_form = False


def select_best_query(masks: torch.Tensor, scores: torch.Tensor, size,
                      clip_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One query's mask per frame, upsampled to `size`, and its score: [N, *size], [N].

    `clip_len` None: each frame's highest-scoring query. `clip_len` T (N = B*T, clips consecutive): for each
    clip the query with the highest mean sounding probability (sigmoid of the score) over its T frames, shown
    on every frame of the clip (ReferFormer's inference rule).
    """
    n, nq, h, w = masks.shape
    if clip_len is None:
        best = scores.argmax(dim=1, keepdim=True)  # [N, 1]
    else:  # the sum over the clip ranks queries as the mean does (and exports as ReduceSum, alike in every opset)
        clip_best = scores.sigmoid().view(-1, clip_len, nq).sum(1).argmax(dim=1)  # [B]
        best = clip_best[:, None].expand(-1, clip_len).reshape(n, 1)
    mask = masks.gather(1, best[:, :, None, None].expand(n, 1, h, w))
    mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return mask, scores.gather(1, best)[:, 0]


def model_class(cfg: AutrConfig) -> type:
    """The module class of a config's architecture: AuTR, or TPAVI for `arch="tpavi"` (autr/tpavi.py)."""
    if cfg.arch == "tpavi":
        from autr.tpavi import TPAVI

        return TPAVI
    return AuTR


def build_model(preset: "str | AutrConfig" = "small", *, backbone_weights=None, vggish_weights=None,
                seed: int | None = None, **overrides) -> nn.Module:
    """Build a model from a preset name (see `autr presets`) or a config: AuTR, or TPAVI for the `tpavi-*`
    presets (`cfg.arch`).

    `overrides` replace config fields (e.g. `dynamic_conv=False`). `backbone_weights` /
    `vggish_weights` are local files (see `autr.weights`); nothing is ever downloaded. An encoder loaded
    from such a file is frozen (`freeze_visual` / `freeze_audio` set), as in the paper, unless the override
    names its flag (`freeze_visual=False` fine-tunes a loaded backbone). `seed` makes the random
    initialisation repeatable without touching the global RNG.
    """
    if backbone_weights is not None:
        overrides.setdefault("freeze_visual", True)
    if vggish_weights is not None:
        overrides.setdefault("freeze_audio", True)
    cfg = get_config(preset, **overrides)
    cls = model_class(cfg)
    if seed is None:
        model = cls(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(cfg)
    if backbone_weights is not None or vggish_weights is not None:
        from autr.weights import load_backbone_weights, load_vggish_weights

        if backbone_weights is not None:
            load_backbone_weights(model, backbone_weights)
        if vggish_weights is not None:
            load_vggish_weights(model, vggish_weights)
    return model
