"""Pixel decoder (FPN with audio attention) and the mask heads (dynamic convolution or dot product)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autr.transformer import AudioCrossAttention, mlp, upsample_like


def conv_gn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.GroupNorm(min(32, cout // 4), cout), nn.ReLU(inplace=True))


class PixelDecoder(nn.Module):
    """Top-down FPN over the encoder memory (strides 32 -> 16 -> 8) and the backbone's stride-4 map.

    After each merge the map cross-attends to the frame's audio, so the mask features already know
    which sound is playing. With `pool` each stage then adds a global context: the map's spatial mean
    through a 1x1 conv, broadcast back over the map (the image-level pooling of ParseNet / DeepLabv3; the
    paper's pixel decoder aggregates "with cross-attention and pooling" without saying which pooling). The
    convs start at zero, so the option starts from the plain decoder. Output: mask features
    [N, mask_dim, H/4, W/4].
    """

    def __init__(self, dim: int, c4: int, mask_dim: int, n_heads: int, pool: bool = False):
        super().__init__()
        self.smooth = nn.ModuleList(conv_gn_relu(dim, dim) for _ in range(2))  # strides 16, 8
        self.lateral4 = nn.Sequential(nn.Conv2d(c4, dim, 1, bias=False), nn.GroupNorm(min(32, dim // 4), dim))
        self.smooth4 = conv_gn_relu(dim, dim)
        self.audio_attn = nn.ModuleList(AudioCrossAttention(dim, n_heads) for _ in range(3))
        self.pool = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in range(3)) if pool else None
        if pool:
            for conv in self.pool:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.out = nn.Conv2d(dim, mask_dim, 1)

    def stage_out(self, i: int, y: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The end of stage i: audio cross-attention, then (with `pool`) the pooled global context."""
        y = self.audio_attn[i].forward_map(y, audio)
        if self.pool is not None:
            # the spatial mean as a sum (ONNX ReduceSum, alike in every opset >= 13; ReduceMean changed at 18)
            y = y + self.pool[i](y.sum(dim=(2, 3), keepdim=True) / (y.shape[-2] * y.shape[-1]))
        return y

    def forward(self, memory_maps: list[torch.Tensor], feat4: torch.Tensor, audio: torch.Tensor):
        """memory_maps: [N, C, H/8, W/8], [N, C, H/16, W/16], [N, C, H/32, W/32]."""
        y = memory_maps[2]
        for i, lateral in enumerate((memory_maps[1], memory_maps[0])):
            y = self.smooth[i](lateral + upsample_like(y, lateral))
            y = self.stage_out(i, y, audio)
        lat4 = self.lateral4(feat4)
        y = self.smooth4(lat4 + upsample_like(y, lat4))
        y = self.stage_out(2, y, audio)
        return self.out(y)


class DynamicMaskHead(nn.Module):
    """CondInst-style masks: each query output becomes the weights of a small 1x1 conv stack.

    The stack reads the mask features plus two relative-coordinate channels (pixel position minus
    the query's reference point), so the same features give a different mask for every query. A
    two-layer MLP maps the query output to the flat parameter vector of the stack.
    """

    def __init__(self, dim: int, mask_dim: int, channels: int, n_layers: int):
        super().__init__()
        cin = mask_dim + 2
        self.shapes = []  # (out, in) per layer
        for i in range(n_layers):
            cout = 1 if i == n_layers - 1 else channels
            self.shapes.append((cout, cin))
            cin = cout
        self.n_params = sum(o * i + o for o, i in self.shapes)
        self.controller = mlp([dim, dim, self.n_params])

    def forward(self, queries, reference, mask_features):
        """queries [N, Nq, C], reference [N, Nq, 2] (x, y), mask_features [N, Cm, h, w] -> [N, Nq, h, w]."""
        n, nq, _ = queries.shape
        _, _, h, w = mask_features.shape
        ys = (torch.arange(h, device=queries.device, dtype=queries.dtype) + 0.5) / h
        xs = (torch.arange(w, device=queries.device, dtype=queries.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0).flatten(1)  # [2, h*w] (x, y)
        rel = grid[None, None] - reference[..., None]  # [N, Nq, 2, h*w]
        feats = mask_features.flatten(2)[:, None].expand(n, nq, -1, -1)
        x = torch.cat((feats, rel), dim=2)  # [N, Nq, Cm + 2, h*w]
        params = self.controller(queries)
        offset = 0
        for i, (o, c) in enumerate(self.shapes):
            weight = params[..., offset:offset + o * c].reshape(n, nq, o, c)
            offset += o * c
            bias = params[..., offset:offset + o].reshape(n, nq, o, 1)
            offset += o
            x = torch.matmul(weight, x) + bias
            if i < len(self.shapes) - 1:
                x = F.relu(x)
        return x.view(n, nq, h, w)


class DotProductMaskHead(nn.Module):
    """Ablation (paper Table IV): mask = <MLP(query), mask feature> at each pixel."""

    def __init__(self, dim: int, mask_dim: int):
        super().__init__()
        self.embed = mlp([dim, dim, mask_dim])

    def forward(self, queries, reference, mask_features):
        return torch.einsum("nqc,nchw->nqhw", self.embed(queries), mask_features)
