"""MSDA reference op against an independent per-sample loop (DESIGN.md semantics)."""
import math
import warnings

import pytest
import torch

from autr import ops
from autr.ops import ms_deform_attn, ms_deform_attn_reference

SHAPES = [(6, 5), (3, 4), (2, 1)]


def slow_msda(value, shapes, locations, weights):
    """Bilinear at (x*W - 0.5, y*H - 0.5), zero outside the map, one sample at a time."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, p, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    for pt in range(p):
                        x = locations[b, q, head, lvl, pt, 0].item() * w - 0.5
                        y = locations[b, q, head, lvl, pt, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = torch.zeros(d, dtype=value.dtype)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                wgt = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                acc += wgt * value[b, starts[lvl] + yy * w + xx, head]
                        out[b, q, head] += weights[b, q, head, lvl, pt].item() * acc
    return out.flatten(2)


def random_inputs(seed=0, n=2, lq=7, m=2, d=3, p=3, spread=1.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    # locations spread beyond [0, 1] so that many corners fall outside the maps
    loc = (torch.rand(n, lq, m, len(SHAPES), p, 2, generator=g, dtype=dtype) - 0.5) * spread + 0.5
    attn = torch.rand(n, lq, m, len(SHAPES), p, generator=g, dtype=dtype)
    shapes = torch.tensor(SHAPES, dtype=torch.long)
    starts = torch.tensor([0, 30, 42], dtype=torch.long)
    return value, shapes, starts, loc, attn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_matches_slow_loop_including_outside_points(seed):
    value, shapes, starts, loc, attn = random_inputs(seed)
    outside = ((loc < 0) | (loc > 1)).any(-1)
    assert outside.any() and (~outside).any()
    got = ms_deform_attn_reference(value, shapes, starts, loc, attn)
    want = slow_msda(value, SHAPES, loc, attn)
    assert got.shape == (2, 7, 2 * 3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_points_far_outside_give_zero_and_pixel_centres_are_exact():
    value, shapes, starts, loc, attn = random_inputs(3, lq=2, p=1)
    loc[:, 0] = 5.0  # every corner outside every map
    # second query: the exact centre of pixel (row 1, col 2) of level 0 on every level
    loc[:, 1, :, :, :, 0] = (2 + 0.5) / 5
    loc[:, 1, :, :, :, 1] = (1 + 0.5) / 6
    attn[:, 1] = 0
    attn[:, 1, :, 0] = 1
    out = ms_deform_attn(value, shapes, starts, loc, attn).view(2, 2, 2, 3)
    assert torch.all(out[:, 0] == 0)
    torch.testing.assert_close(out[:, 1], value[:, 1 * 5 + 2])


def test_gradients_match_slow_loop():
    value, shapes, starts, loc, attn = random_inputs(4, lq=3, spread=1.2)
    for t in (value, loc, attn):
        t.requires_grad_(True)
    torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn_reference(v, shapes, starts, l, a),
                             (value, loc, attn), eps=1e-6, atol=1e-5)


def test_bad_shapes_name_the_expected_shape():
    value, shapes, starts, loc, attn = random_inputs()
    with pytest.raises(ValueError, match=r"\[N, S, M, D\]"):
        ms_deform_attn(value[0], shapes, starts, loc, attn)
    with pytest.raises(ValueError, match=r"attention_weights must be \[N, Lq, M, L, P\]"):
        ms_deform_attn(value, shapes, starts, loc, attn[..., :2])
    with pytest.raises(ValueError, match="spatial_shapes sum to"):
        ms_deform_attn(value[:, :40], shapes, starts, loc, attn)
    with pytest.raises(ValueError, match=r"\[L, 2\]"):
        ms_deform_attn(value, shapes[:, :1], starts, loc, attn)


def test_cpu_tensors_use_the_reference_without_warning():
    value, shapes, starts, loc, attn = random_inputs(dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ms_deform_attn(value, shapes, starts, loc, attn)
    torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, starts, loc, attn))


def test_backend_switch_rejects_unknown_names():
    with pytest.raises(ValueError, match="'auto' or 'reference'"):
        ops.set_backend("triton")


def test_cuda_dispatch_falls_back_with_one_warning(monkeypatch):
    """Where the CUDA extension cannot load (here: no GPU), MSDA warns once and uses the reference."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the extension may load")
    monkeypatch.setattr(ops, "_cuda_op", None)
    with pytest.warns(RuntimeWarning, match="python -m autr.plugins build --torch") as record:
        assert ops._load_cuda_op() is None
        assert ops._load_cuda_op() is None
    assert len(record) == 1


def test_cuda_dispatch_uses_the_extension_when_it_loads(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("autr.plugins.torch_op")
    fake.ms_deform_attn_cuda = lambda *args: "kernel"
    monkeypatch.setitem(sys.modules, "autr.plugins.torch_op", fake)
    monkeypatch.setattr(ops, "_cuda_op", None)
    assert ops._load_cuda_op()() == "kernel"
    monkeypatch.setattr(ops, "_BACKEND", "reference")
    value, shapes, starts, loc, attn = random_inputs(dtype=torch.float32)
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn),
                               ms_deform_attn_reference(value, shapes, starts, loc, attn))


def test_cuda_dispatch_fallback_is_one_line_on_stderr(monkeypatch, capsys):
    """The reason the extension did not load (a multi-line compiler error, an nvcc / torch CUDA mismatch) is
    one line on stderr as well as the warning, so it is seen even where warnings are filtered."""
    import sys
    import types

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("nvcc is CUDA 13.0 but this PyTorch is built for CUDA 12.8:\n  refuses\n  to mix")

    monkeypatch.setitem(sys.modules, "autr.plugins.torch_op", Broken("autr.plugins.torch_op"))
    monkeypatch.setattr(ops, "_cuda_op", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ops._load_cuda_op() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autr: MSDA CUDA extension unavailable (nvcc is CUDA 13.0 but this PyTorch is built for CUDA "
                   "12.8: refuses to mix); using the grid_sample reference (`python -m autr.plugins build --torch` "
                   "builds it)"]
