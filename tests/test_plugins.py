"""autr.plugins: MSDA CUDA kernel, TensorRT plugin library, PyTorch extension.

CPU-only machines run: the import-is-light check, the nvcc compile check for sm_80/86/89/90, the
TensorRT plugin build + smoke test (when $AUTR_TRT_INCLUDE points at TensorRT headers), the kernel
logic through a host emulation of the very same kernel source (g++), the loader's error paths.
GPU machines additionally compare the compiled kernel with a grid_sample reference and gradcheck it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import autr.plugins as plugins
from autr.plugins import build as plugin_build
from autr.plugins.errors import BuildError, PluginLibraryNotFound, PluginUnavailable

ARCHS = {"sm_80", "sm_86", "sm_89", "sm_90"}


def _nvcc_or_skip() -> str:
    try:
        return plugin_build.find_nvcc()
    except BuildError as exc:
        pytest.skip(f"nvcc is not installed: {exc}")


def _cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autr.plugins", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def _cuda_include_dir() -> Path | None:
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    try:
        nvcc = plugin_build.find_nvcc()
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent / "include")
    except BuildError:
        pass
    candidates.append(Path("/usr/local/cuda/include"))
    for cand in candidates:
        if (cand / "cuda_fp16.h").is_file() and (cand / "cuda_runtime_api.h").is_file():
            return cand
    return None


# ----------------------------------------------------------------------------------------- reference


def msda_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Pure-PyTorch MSDA (grid_sample, align_corners=False, zeros padding), DESIGN.md semantics."""
    import torch.nn.functional as F

    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    out = 0
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        start = int(level_start_index[lvl])
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        grid = (2 * sampling_locations[:, :, :, lvl] - 1).permute(0, 2, 1, 3, 4).reshape(n * m, lq, points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, lvl].permute(0, 2, 1, 3).reshape(n * m, 1, lq, points)
        out = out + (sampled * weights).sum(-1)  # [N*M, D, Lq]
    return out.view(n, m, d, lq).permute(0, 3, 1, 2).reshape(n, lq, m * d)


def _problem(torch, n=2, m=3, d=8, lq=7, points=4, shapes=((6, 5), (3, 4), (1, 2)), dtype=None, device="cpu", seed=0):
    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s = int(areas.sum())
    levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=torch.float64)
    # 20 % margin on each side: some samples fall partly or entirely outside the maps
    locations = torch.rand(n, lq, m, levels, points, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, levels, points, generator=gen, dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return (
        cast(value),
        spatial_shapes.to(device),
        level_start_index.to(device),
        cast(locations),
        cast(weights),
    )


def _rel_err(actual, expected) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------- packaging


def test_import_does_not_pull_torch():
    code = textwrap.dedent(
        """
        import sys
        import autr.plugins, autr.plugins.torch_op, autr.plugins.build, autr.plugins.errors
        assert autr.plugins.PLUGIN_NAME == "AutrMSDeformAttn" and autr.plugins.PLUGIN_VERSION == "1"
        heavy = sorted(m for m in ("torch", "numpy", "tensorrt") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_library_lookup_and_hash(tmp_path, monkeypatch):
    monkeypatch.delenv(plugin_build.PLUGIN_ENV, raising=False)
    monkeypatch.setenv(plugin_build.PLUGIN_DIR_ENV, str(tmp_path))
    if (plugin_build.PACKAGE_DIR / "lib" / plugin_build.LIBRARY_NAME).is_file():
        pytest.skip("a plugin library is shipped inside the package; the not-found path cannot be tested")
    with pytest.raises(PluginLibraryNotFound, match="python -m autr.plugins build"):
        plugins.library_path()
    assert plugins.default_build_dir() == tmp_path

    lib = tmp_path / plugin_build.LIBRARY_NAME
    lib.write_bytes(b"not really a library")
    assert plugins.library_path() == lib.resolve()
    assert plugins.find_plugin_library() == lib.resolve()
    assert plugins.library_hash(lib) == hashlib.sha256(b"not really a library").hexdigest()
    assert plugins.library_hash() == plugins.library_hash(lib)

    monkeypatch.setenv(plugin_build.PLUGIN_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(PluginLibraryNotFound, match=plugin_build.PLUGIN_ENV):
        plugins.library_path()
    monkeypatch.setenv(plugin_build.PLUGIN_ENV, str(lib))
    assert plugins.library_path() == lib.resolve()


def test_trt_version_parsing(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "NvInferVersion.h").write_text(
        "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n#define TRT_PATCH_ENTERPRISE 0\n"
        "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n"
        "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n"
    )
    old = tmp_path / "old"
    old.mkdir()
    (old / "NvInferVersion.h").write_text(
        "#define NV_TENSORRT_MAJOR 10 //!< TensorRT major version.\n#define NV_TENSORRT_MINOR 0\n"
        "#define NV_TENSORRT_PATCH 1\n"
    )
    assert plugins.trt_version(new) == "11.1.0"
    assert plugins.trt_version(old) == "10.0.1"


def test_arch_parsing_and_gencode():
    assert plugin_build.parse_archs("8.0, sm_86;89") == ("80", "86", "89")
    assert plugin_build.parse_archs(None) == ("80", "86", "89", "90")
    flags = plugin_build.gencode_flags(("80", "90"))
    assert flags == ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
    with pytest.raises(BuildError):
        plugin_build.parse_archs("ampere")


def test_fatbin_archs_of_non_cuda_file(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\x7fELF" + b"\0" * 200)
    assert plugins.fatbin_archs(junk) == set()


def test_build_reports_missing_nvcc(tmp_path):
    with pytest.raises(BuildError, match="nvcc not found"):
        plugin_build.find_nvcc(tmp_path / "no-nvcc-here")
    proc = _cli("build", "--kernel-only", "--out", str(tmp_path), "--nvcc", str(tmp_path / "no-nvcc-here"))
    assert proc.returncode == 1
    assert "error: nvcc not found" in proc.stderr


# ----------------------------------------------------------------------------------------- compile checks


def test_kernel_compiles_for_all_archs(tmp_path):
    _nvcc_or_skip()
    proc = _cli("build", "--kernel-only", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    obj = tmp_path / plugin_build.KERNEL_OBJECT_NAME
    assert obj.is_file() and obj.stat().st_size > 0
    assert "kernel object" in proc.stdout
    found = plugins.fatbin_archs(obj)
    assert ARCHS <= found, found
    assert "compute_90" in found  # PTX for GPUs newer than sm_90
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # cross-check the fatbin parser when the tool exists
        listing = subprocess.run([cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True).stdout
        for arch in ARCHS:
            assert arch in listing, listing


def test_trt_plugin_builds_and_registers(tmp_path):
    include = os.environ.get(plugin_build.TRT_INCLUDE_ENV)
    if not include:
        pytest.skip(f"set ${plugin_build.TRT_INCLUDE_ENV} to a TensorRT include directory to build the plugin")
    _nvcc_or_skip()
    proc = _cli("build", "--trt-include", include, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lib = tmp_path / plugin_build.LIBRARY_NAME
    assert lib.is_file()
    version = plugins.trt_version(include)
    assert f"TensorRT {version}" in proc.stdout
    assert ARCHS <= plugins.fatbin_archs(lib)

    # The plugin-library entry points TensorRT looks for (IPluginRegistry::loadLibrary / trtexec).
    handle = ctypes.CDLL(str(lib))
    handle.getCreators.restype = ctypes.c_void_p
    count = ctypes.c_int32(-1)
    assert handle.getCreators(ctypes.byref(count))
    assert count.value == 1
    assert hasattr(handle, "setLoggerFinder")

    # Drive the creator and the plugin's build-phase interface from C++ (no GPU, no libnvinfer).
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda_include = _cuda_include_dir()
    if cxx is None or cuda_include is None:
        pytest.skip("g++ or the CUDA headers are missing: skipping the C++ smoke test")
    smoke = tmp_path / "plugin_smoke"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-isystem", include, "-isystem", str(cuda_include),
         str(plugin_build.TRT_DIR / "plugin_smoke.cpp"), "-ldl", "-o", str(smoke)],
        check=True, capture_output=True, text=True,
    )
    run = subprocess.run([str(smoke), str(lib)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'AutrMSDeformAttn v1 namespace ""' in run.stdout


@pytest.mark.slow
def test_cmake_build(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    nvcc = _nvcc_or_skip()
    args = [cmake, "-S", str(plugin_build.PACKAGE_DIR), "-B", str(tmp_path), f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    include = os.environ.get(plugin_build.TRT_INCLUDE_ENV)
    if include:
        args.append(f"-DTENSORRT_INCLUDE_DIR={include}")
    subprocess.run(args, check=True, capture_output=True, text=True)
    proc = subprocess.run([cmake, "--build", str(tmp_path), "-j2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if include:
        lib = tmp_path / plugin_build.LIBRARY_NAME
        assert ARCHS <= plugins.fatbin_archs(lib)
        run = subprocess.run([str(tmp_path / "autr_plugin_smoke"), str(lib)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


# ----------------------------------------------------------------------------------------- kernel logic on CPU


@pytest.fixture(scope="module")
def emulated_kernel(tmp_path_factory):
    """The kernels of csrc/ms_deform_attn.cuh compiled by the host compiler (see emulation/)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda_include = _cuda_include_dir()
    if cxx is None or cuda_include is None:
        pytest.skip("g++ and the CUDA headers (cuda_fp16.h) are needed for the host emulation")
    source = plugin_build.CSRC_DIR / "emulation" / "msda_host_emulation.cpp"
    if not source.is_file():
        pytest.skip(f"{source} is not installed (package_data must include csrc/emulation/*)")
    out = tmp_path_factory.mktemp("emu") / "libmsda_emu.so"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
         "-isystem", str(cuda_include), str(source), "-o", str(out)],
        check=True, capture_output=True, text=True,
    )
    lib = ctypes.CDLL(str(out))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.autr_msda_emu_forward.argtypes = [ctypes.c_int, ctypes.c_int, *[i64] * 7, *[ptr] * 6, ctypes.c_int32]
    lib.autr_msda_emu_backward.argtypes = [ctypes.c_int, *[i64] * 7, *[ptr] * 9, ctypes.c_int32]
    return lib


def _np(array, dtype):
    import numpy as np

    return np.ascontiguousarray(array.detach().cpu().numpy().astype(dtype))


def _dims(value, locations):
    n, s, m, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    return n, s, m, d, levels, points, lq


_EMU_TYPES = {0: "float32", 1: "float16", 2: "float64"}


@pytest.mark.parametrize("d", [8, 6, 3, 40])
def test_emulated_forward_matches_reference(emulated_kernel, d):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    value, shapes, starts, loc, attn = _problem(torch, d=d)
    expected = msda_reference(value, shapes, starts, loc, attn)
    dims = _dims(value, loc)
    for code, vecs, tol in ((0, (1, 2, 4), 1e-5), (1, (1, 2, 8), 1e-2), (2, (1,), 1e-12)):
        npdt = getattr(np, _EMU_TYPES[code])
        arrays = [_np(t, npdt) for t in (value, loc, attn)]
        ref = expected
        if code == 1:  # compare fp16 with the reference on the same (rounded) inputs
            ref = msda_reference(*(torch.from_numpy(a.astype(np.float64)) for a in arrays[:1]), shapes, starts,
                                 *(torch.from_numpy(a.astype(np.float64)) for a in arrays[1:]))
        ss, st = _np(shapes, np.int32), _np(starts, np.int32)
        for vec in vecs:
            if d % vec:
                continue
            out = np.zeros((dims[0], dims[6], dims[2] * d), npdt)
            rc = emulated_kernel.autr_msda_emu_forward(
                code, vec, *dims, arrays[0].ctypes.data, ss.ctypes.data, st.ctypes.data, arrays[1].ctypes.data,
                arrays[2].ctypes.data, out.ctypes.data, 3,  # 3 blocks: exercises the grid-stride loop
            )
            assert rc == 0
            err = _rel_err(torch.from_numpy(out.astype(np.float64)), ref)
            assert err <= tol, (_EMU_TYPES[code], vec, err)


@pytest.mark.parametrize("code,d", [(2, 6), (2, 40), (0, 8)])
def test_emulated_backward_matches_autograd(emulated_kernel, code, d):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    value, shapes, starts, loc, attn = _problem(torch, n=1, m=2, d=d, lq=5)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = msda_reference(leaves[0], shapes, starts, leaves[1], leaves[2])
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    npdt = getattr(np, _EMU_TYPES[code])
    v, sl, aw, go = (_np(t, npdt) for t in (value, loc, attn, grad_out))
    ss, st = _np(shapes, np.int32), _np(starts, np.int32)
    grads = [np.full(a.shape, 7, npdt) for a in (v, sl, aw)]  # garbage: the kernel must overwrite
    rc = emulated_kernel.autr_msda_emu_backward(
        code, *_dims(value, loc), v.ctypes.data, ss.ctypes.data, st.ctypes.data, sl.ctypes.data, aw.ctypes.data,
        go.ctypes.data, *(g.ctypes.data for g in grads), 1,  # one block of 8 warps: grid-stride over warps
    )
    assert rc == 0
    tol = 1e-12 if code == 2 else 1e-5
    for name, got, leaf in zip(("value", "locations", "weights"), grads, leaves):
        err = _rel_err(torch.from_numpy(got.astype(np.float64)), leaf.grad)
        assert err <= tol, (name, err)


# ----------------------------------------------------------------------------------------- PyTorch extension


def test_load_extension_without_cuda_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from autr.plugins import torch_op

    with pytest.raises(PluginUnavailable, match="CUDA") as info:
        torch_op.load_extension()
    assert "grid_sample" in str(info.value) or "torch.cuda.is_available()" in str(info.value)
    assert torch_op.is_available() is False
    assert plugins.is_available() is False
    with pytest.raises(PluginUnavailable):
        from autr.plugins.torch_op import ms_deform_attn_cuda  # noqa: F401


@pytest.mark.slow
def test_torch_extension_compiles_without_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("CPU-only PyTorch build cannot compile CUDA extensions")
    from autr.plugins import torch_op

    try:
        torch_op._check_toolchain()
    except PluginUnavailable as exc:
        pytest.skip(str(exc))
    code = textwrap.dedent(
        """
        import torch
        from autr.plugins.torch_op import build_extension
        ext = build_extension(arch_list="8.0")
        try:
            ext.forward(torch.zeros(1, 4, 1, 2), torch.tensor([[2, 2]]), torch.tensor([0]),
                        torch.zeros(1, 1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 1, 1))
        except RuntimeError as exc:
            assert "CUDA tensor" in str(exc), exc
        else:
            raise AssertionError("CPU tensors were accepted")
        print("OK")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
        env={**os.environ, plugin_build.PLUGIN_DIR_ENV: str(tmp_path)},
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def _cuda_op_or_skip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from autr.plugins.torch_op import load_extension

    load_extension()  # a build failure on a GPU machine is a test failure, not a skip
    from autr.plugins.torch_op import ms_deform_attn_cuda

    return torch, ms_deform_attn_cuda


@pytest.mark.gpu
@pytest.mark.parametrize("d", [32, 6, 3])
@pytest.mark.parametrize("dtype_name,tol", [("float32", 1e-5), ("float16", 1e-2)])
def test_gpu_forward_matches_reference(d, dtype_name, tol):
    torch, op = _cuda_op_or_skip()
    dtype = getattr(torch, dtype_name)
    value, shapes, starts, loc, attn = _problem(torch, d=d, m=4, lq=33, device="cuda", dtype=dtype)
    out = op(value, shapes, starts, loc, attn)
    assert out.shape == (2, 33, 4 * d) and out.dtype == dtype
    expected = msda_reference(value.double(), shapes, starts, loc.double(), attn.double())
    assert _rel_err(out, expected) <= tol


@pytest.mark.gpu
def test_gpu_forward_int32_indices_and_noncontiguous():
    torch, op = _cuda_op_or_skip()
    value, shapes, starts, loc, attn = _problem(torch, d=16, device="cuda", dtype=torch.float32)
    expected = msda_reference(value, shapes, starts, loc, attn)
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    out = op(value_nc, shapes.int().cpu(), starts.int().cpu(), loc, attn)
    assert _rel_err(out, expected) <= 1e-5


@pytest.mark.gpu
def test_gpu_gradcheck_float64():
    torch, op = _cuda_op_or_skip()
    value, shapes, starts, loc, attn = _problem(torch, n=1, m=2, d=5, lq=3, points=2, device="cuda")
    # random locations: the chance that eps=1e-6 straddles a pixel-grid kink (where the bilinear
    # interpolation is not differentiable) is negligible
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name,tol", [("float32", 1e-4), ("float16", 2e-2)])
def test_gpu_backward_matches_reference(dtype_name, tol):
    torch, op = _cuda_op_or_skip()
    dtype = getattr(torch, dtype_name)
    value, shapes, starts, loc, attn = _problem(torch, d=32, m=4, lq=20, device="cuda", dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = op(leaves[0], shapes, starts, leaves[1], leaves[2])
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in (value, loc, attn)]
    msda_reference(ref_leaves[0], shapes, starts, ref_leaves[1], ref_leaves[2]).backward(grad_out.double())
    for got, ref in zip(leaves, ref_leaves):
        assert got.grad.dtype == dtype
        assert _rel_err(got.grad, ref.grad) <= tol
