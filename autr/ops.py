"""Multi-scale deformable attention (MSDA), with DESIGN.md's semantics.

`ms_deform_attn` is the one entry point the model calls. On CPU tensors it runs the pure
PyTorch reference (`ms_deform_attn_reference`, built on `grid_sample`); on CUDA tensors it
dispatches to the CUDA kernel of `autr.plugins` when that extension can be built, and falls back
to the reference with one warning otherwise.

Shapes:
    value               [N, S, M, D]        S = sum of H_l * W_l
    spatial_shapes      [L, 2]  int64       (H_l, W_l) per level
    level_start_index   [L]     int64       offset of level l in S
    sampling_locations  [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1]
    attention_weights   [N, Lq, M, L, P]
    -> output           [N, Lq, M * D]

A location (x, y) samples the level's map bilinearly at pixel coordinates (x*W - 0.5, y*H - 0.5);
corners outside the map contribute zero (grid_sample, align_corners=False, zeros padding).
"""
from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F

# "auto": CUDA kernel on CUDA tensors when available; "reference": always the grid_sample path.
_BACKEND = "auto"
_cuda_op = None  # resolved CUDA implementation, or False once it failed to load


def set_backend(name: str) -> None:
    """Force the MSDA implementation: "auto" (default) or "reference"."""
    global _BACKEND
    if name not in ("auto", "reference"):
        raise ValueError(f"unknown MSDA backend {name!r}; choose 'auto' or 'reference'")
    _BACKEND = name


def _load_cuda_op():
    """The CUDA extension's autograd function, or None (warns once) when it cannot be built."""
    global _cuda_op
    if _cuda_op is None:
        try:
            from autr.plugins.torch_op import ms_deform_attn_cuda

            _cuda_op = ms_deform_attn_cuda
        except Exception as exc:  # build failures come in many types; all mean "use the reference"
            reason = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the exception
            message = (f"autr: MSDA CUDA extension unavailable ({reason}); using the grid_sample reference "
                       "(`python -m autr.plugins build --torch` builds it)")
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            print(message, file=sys.stderr, flush=True)  # not quiet even where warnings are filtered
            _cuda_op = False
    return _cuda_op or None


def can_read_values(t: torch.Tensor) -> bool:
    """Whether a check may read `t`'s values back to the host: not while tracing / compiling / exporting,
    nor while a CUDA graph is being captured (a host sync would break the capture)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Raise ValueError naming the expected shapes when the inputs do not fit together."""
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    n, s, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be [L, 2], got {tuple(spatial_shapes.shape)}")
    n_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (n_levels,):
        raise ValueError(f"level_start_index must be [L={n_levels}], got {tuple(level_start_index.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be [N, Lq, M, L, P, 2], got {tuple(sampling_locations.shape)}"
        )
    nq, lq, mq, lv, p, _ = sampling_locations.shape
    if (nq, mq, lv) != (n, m, n_levels):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
            f"[N={n}, S, M={m}, D] and L={n_levels} levels"
        )
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, p):
        raise ValueError(
            f"attention_weights must be [N, Lq, M, L, P] = {(n, lq, m, n_levels, p)}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if can_read_values(spatial_shapes):
        total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if total != s:
            raise ValueError(f"value has S={s} positions but spatial_shapes sum to {total}")


def ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights):
    """Pure PyTorch MSDA (grid_sample). The reference every other implementation is tested against."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [N, HW, M, D] -> [N*M, D, H, W]
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * p)
    out = (stacked * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """MSDA forward (differentiable). See the module docstring for shapes and semantics."""
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if value.is_cuda and _BACKEND == "auto":
        op = _load_cuda_op()
        if op is not None:
            return op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights)
