"""Transformer parts: position encoding, audio cross-attention (AVEF), the deformable encoder and
the audio-aware decoder. Frames are independent here: T is folded into the batch dimension N."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autr.ops import ms_deform_attn


def sine_position_encoding(n: int, h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """DETR's 2D sine encoding, normalised to [0, 2π]: [n, h*w, dim] (half y, half x)."""
    npf = dim // 2
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(npf, device=device, dtype=torch.float32) // 2) / npf)
    py = y[:, None] / dim_t  # [h, npf]
    px = x[:, None] / dim_t  # [w, npf]
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((py[:, None, :].expand(h, w, npf), px[None, :, :].expand(h, w, npf)), dim=2)
    return pos.flatten(0, 1).to(dtype)[None].expand(n, h * w, dim)


class AudioCrossAttention(nn.Module):
    """Visual tokens attend to the frame's audio (AVEF, and the pixel decoder's audio attention).

    Keys/values are the frame's projected audio embedding and a learnable "no audio" token, so each
    visual position decides how much of the sound to take in (a single key would make the softmax
    trivially 1). Residual + LayerNorm, post-norm as in Deformable-DETR.
    """

    closed_form = False  # set by `autr.model.deploy_form` for export: the same attention in fewer, cheaper ops

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.null, std=0.02)

    def forward(self, tokens: torch.Tensor, audio: torch.Tensor, pos: torch.Tensor | None = None):
        """tokens [N, S, C], audio [N, C], pos [N, S, C] or None -> [N, S, C]."""
        q = tokens if pos is None else tokens + pos
        if self.closed_form and not self.training:
            out = self.two_key_attention(q, audio)
        else:
            kv = torch.cat((audio[:, None, :], self.null.expand(audio.shape[0], 1, -1)), dim=1)
            out, _ = self.attn(q, kv, kv, need_weights=False)
        return self.norm(tokens + out)

    def two_key_attention(self, q: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """`self.attn(q, kv, kv)` in closed form for its two keys, the audio and the null token.

        A softmax over two logits is the sigmoid of their difference, and that difference is linear in
        the query, so per head h:  out = base + sum_h sigmoid(q . a_h + c_h) b_h,  where a_h, b_h [C] and c_h
        come from the audio key / value minus the null token's (per frame) and base is the null token's
        output (a constant). Per visual token that is two [C x M] products instead of the query and output
        projections ([C x C] each) plus the attention. Exact up to float rounding; eval mode only
        (attention dropout has no closed form)."""
        attn = self.attn
        n, c, m = q.shape[0], q.shape[-1], attn.num_heads
        d = c // m
        w_q, w_k, w_v = attn.in_proj_weight.split(c)
        b_q, b_k, b_v = attn.in_proj_bias.split(c)
        null = self.null.view(1, c)
        dk = F.linear(audio - null, w_k).view(n, m, 1, d) * (d ** -0.5)  # key difference per head
        dv = F.linear(audio - null, w_v).view(n, m, d, 1)  # value difference per head
        a = torch.matmul(dk, w_q.view(m, d, c)).view(n, m, c)  # logit difference = q . a_h + c_h
        bias = torch.matmul(dk, b_q.view(m, d, 1)).view(n, 1, m)
        b = torch.matmul(attn.out_proj.weight.view(c, m, d).transpose(0, 1), dv).view(n, m, c)
        base = F.linear(F.linear(null, w_v, b_v), attn.out_proj.weight, attn.out_proj.bias)  # [1, C]
        gate = torch.sigmoid(torch.matmul(q, a.transpose(1, 2)) + bias)  # [N, S, M]: weight of the audio key
        return torch.matmul(gate, b) + base

    def forward_map(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The same on a feature map [N, C, H, W]."""
        n, c, h, w = x.shape
        return self.forward(x.flatten(2).transpose(1, 2), audio).transpose(1, 2).reshape(n, c, h, w)


class MSDeformAttn(nn.Module):
    """Deformable-DETR's multi-scale deformable attention module around `autr.ops.ms_deform_attn`."""

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self):
        # Offsets start on a ring of directions, one per head, growing with the point index.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query, reference_points, value_in, spatial_shapes, level_start_index):
        """query [N, Lq, C], reference_points [N or 1, Lq, L, 2] in [0, 1], value_in [N, S, C]."""
        n, lq, c = query.shape
        m, lvl, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(n, value_in.shape[1], m, c // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lvl, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lvl * p).softmax(-1)
        weights = weights.view(n, lq, m, lvl, p)
        normalizer = spatial_shapes.flip(-1).to(query.dtype)  # (W, H) per level
        # an export folds both steps into the linear layer (autr.export.graph.fold_affine_into_linear)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.net(x))


class EncoderLayer(nn.Module):
    def __init__(self, dim, n_levels, n_heads, n_points, ffn_dim, dropout):
        super().__init__()
        self.attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index):
        out = self.attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        return self.ffn(self.norm(src + self.drop(out)))


def encoder_reference_points(shapes: list[tuple[int, int]], n_levels: int, device) -> torch.Tensor:
    """Pixel centres of every level, normalised to [0, 1]: [1, S, L, 2] (no padding: valid ratio 1)."""
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        refs.append(torch.stack((xs.flatten(), ys.flatten()), -1))
    return torch.cat(refs, 0)[None, :, None, :].expand(1, -1, n_levels, 2)


class DeformableEncoder(nn.Module):
    def __init__(self, n_layers, dim, n_levels, n_heads, n_points, ffn_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, n_levels, n_heads, n_points, ffn_dim, dropout) for _ in range(n_layers)
        )

    def forward(self, src, pos, shapes, spatial_shapes, level_start_index):
        # [1, S, L, 2]: the same for every frame (broadcast, so an export folds it to a constant)
        ref = encoder_reference_points(shapes, spatial_shapes.shape[0], src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start_index)
        return src


class DecoderLayer(nn.Module):
    """Self-attention among the queries, deformable cross-attention to the memory, FFN."""

    def __init__(self, dim, n_levels, n_heads, n_points, ffn_dim, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index):
        q = tgt + query_pos
        out, _ = self.self_attn(q, q, tgt, need_weights=False)
        tgt = self.norm1(tgt + self.drop(out))
        out = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index)
        tgt = self.norm2(tgt + self.drop(out))
        return self.ffn(tgt)


class AudioAwareDecoder(nn.Module):
    """Nq queries that start from the frame's sound and look for the object that makes it.

    With `audio_queries` (the paper's design) the content of every query is the projected audio
    embedding and the queries differ by their learnable position embeddings; without it (ablation)
    the content is a learnable embedding too and the decoder never sees the audio directly.

    Each query's 2D reference point comes from its position embedding (Deformable-DETR, single stage), so
    by default it is a fixed spatial prior. With `dynamic_reference` every layer moves it by an offset
    predicted from its query outputs, `ref <- sigmoid(logit(ref) + MLP(query))` (Deformable-DETR's
    iterative refinement; ReferFormer's dynamic conv also reads predicted, input-dependent points): the next
    layer samples around the moved point, and the last one is the dynamic conv's coordinate origin. The
    MLPs' last layers start at zero, so an untrained model starts from the fixed priors.
    """

    def __init__(self, n_layers, dim, n_levels, n_heads, n_points, ffn_dim, dropout, n_queries,
                 audio_queries: bool, dynamic_reference: bool = False):
        super().__init__()
        self.audio_queries = audio_queries
        self.query_pos = nn.Embedding(n_queries, dim)
        self.query_content = None if audio_queries else nn.Embedding(n_queries, dim)
        self.reference = nn.Linear(dim, 2)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, n_levels, n_heads, n_points, ffn_dim, dropout) for _ in range(n_layers)
        )
        self.refine = None
        if dynamic_reference:
            self.refine = nn.ModuleList(mlp([dim, dim, 2]) for _ in range(n_layers))
            for head in self.refine:
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
        nn.init.xavier_uniform_(self.reference.weight)
        nn.init.zeros_(self.reference.bias)

    def forward(self, audio, memory, spatial_shapes, level_start_index):
        """audio [N, C] -> per layer: query outputs [N, Nq, C] and reference points [N, Nq, 2] (x, y), as
        two lists of n_layers entries (the last layer's come last)."""
        n = memory.shape[0]
        pos = self.query_pos.weight[None].expand(n, -1, -1)
        if self.audio_queries:
            tgt = audio[:, None, :].expand_as(pos)
        else:
            tgt = self.query_content.weight[None].expand(n, -1, -1)
        ref = self.reference(pos).sigmoid()
        outputs, refs = [], []
        for i, layer in enumerate(self.layers):
            ref_levels = ref[:, :, None, :].expand(-1, -1, spatial_shapes.shape[0], -1)
            tgt = layer(tgt, pos, ref_levels, memory, spatial_shapes, level_start_index)
            if self.refine is not None:
                ref = (inverse_sigmoid(ref) + self.refine[i](tgt)).sigmoid()
            outputs.append(tgt)
            refs.append(ref)
        return outputs, refs


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x), clamped away from 0 and 1 (Deformable-DETR's)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def mlp(dims: list[int]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
