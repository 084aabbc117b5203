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

ARCHS = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"}


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
    assert plugin_build.parse_archs(None) == ("80", "86", "89", "90", "100", "120")
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
    assert "compute_120" in found  # PTX for GPUs newer than sm_120
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
    _check_triton_style_load(cxx, include, cuda_include, lib, tmp_path)


def _check_triton_style_load(cxx, include, cuda_include, lib, tmp_path):
    """Triton's TensorRT backend dlopens `plugins=LIB` (RTLD_LOCAL, after its own TensorRT) and never calls
    getCreators: with AUTR_TRT_REGISTER=1 the library registers its creator with that TensorRT while it loads;
    without the variable it leaves registration to IPluginRegistry::loadLibrary (which refuses duplicates)."""
    source = str(plugin_build.TRT_DIR / "triton_load_check.cpp")
    flags = ["-std=c++17", "-O1", "-isystem", include, "-isystem", str(cuda_include)]
    fake = tmp_path / "fake" / "libnvinfer.so.10"
    fake.parent.mkdir()
    subprocess.run([cxx, *flags, "-DAUTR_FAKE_NVINFER", "-fPIC", "-shared", "-Wl,-soname,libnvinfer.so.10", source,
                    "-o", str(fake)], check=True, capture_output=True, text=True)
    host = tmp_path / "triton_load_check"
    subprocess.run([cxx, *flags, source, "-ldl", "-o", str(host)], check=True, capture_output=True, text=True)

    def load(**env):
        run = subprocess.run([str(host), str(fake), str(lib)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})
        assert run.returncode == 0, run.stdout + run.stderr
        return run

    run = load(AUTR_TRT_REGISTER="1")
    assert 'registered AutrMSDeformAttn v1 namespace ""' in run.stdout and "1 creator(s)" in run.stdout
    assert "1 creator(s)" not in load(AUTR_TRT_REGISTER="0").stdout
    env = {k: v for k, v in os.environ.items() if k != "AUTR_TRT_REGISTER"}
    quiet = subprocess.run([str(host), str(fake), str(lib)], capture_output=True, text=True, timeout=60, env=env)
    assert "0 creator(s) registered" in quiet.stdout and quiet.stderr == ""


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
    c_int = ctypes.c_int
    lib.autr_msda_emu_forward.argtypes = [c_int, c_int, *[i64] * 7, *[ptr] * 6, ctypes.c_int32, c_int, c_int]
    lib.autr_msda_emu_backward.argtypes = [c_int, *[i64] * 7, *[ptr] * 9, ctypes.c_int32, c_int]
    lib.autr_msda_emu_baseline.argtypes = [c_int, *[i64] * 7, *[ptr] * 6, ctypes.c_int32, c_int]
    lib.autr_msda_emu_is_specialised.argtypes = [i64, i64]
    return lib


def _np(array, dtype):
    import numpy as np

    return np.ascontiguousarray(array.detach().cpu().numpy().astype(dtype))


def _dims(value, locations):
    n, s, m, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    return n, s, m, d, levels, points, lq


_EMU_TYPES = {0: "float32", 1: "float16", 2: "float64", 3: "bfloat16"}
# dtype code -> (vector widths, tolerance vs the reference on the same rounded inputs)
_EMU_CASES = {0: ((1, 2, 4), 1e-5), 1: ((1, 2, 8), 1e-2), 2: ((1,), 1e-12), 3: ((1, 2, 8), 2e-2)}


def _emu_arrays(torch, code, tensors):
    """numpy arrays of `tensors` in dtype `code` (bfloat16 as its uint16 bit pattern) and the float64 tensors
    they hold (the reference then sees the same rounded inputs)."""
    import numpy as np

    if code == 3:
        bf = [t.to(torch.bfloat16).contiguous() for t in tensors]
        return [b.view(torch.int16).numpy().copy() for b in bf], [b.double() for b in bf]
    npdt = getattr(np, _EMU_TYPES[code])
    arrays = [_np(t, npdt) for t in tensors]
    return arrays, [torch.from_numpy(a.astype(np.float64)) for a in arrays]


def _emu_result(torch, code, out):
    import numpy as np

    if code == 3:
        return torch.from_numpy(out).view(torch.bfloat16).double()
    return torch.from_numpy(out.astype(np.float64))


def _emu_forward(lib, torch, code, vec, value, shapes, starts, loc, attn, wide=False, specialise=True, baseline=False,
                 blocks=3):
    import numpy as np

    dims = _dims(value, loc)
    arrays, exact = _emu_arrays(torch, code, (value, loc, attn))
    idx = np.int64 if wide else np.int32
    ss, st = _np(shapes, idx), _np(starts, idx)
    shape = (dims[0], dims[6], dims[2] * dims[3])
    out = np.zeros(shape, np.int16 if code == 3 else getattr(np, _EMU_TYPES[code]))
    ptrs = (arrays[0].ctypes.data, ss.ctypes.data, st.ctypes.data, arrays[1].ctypes.data, arrays[2].ctypes.data,
            out.ctypes.data)
    if baseline:
        rc = lib.autr_msda_emu_baseline(code, *dims, *ptrs, blocks, int(wide))
    else:  # 3 blocks: exercises the grid-stride loop
        rc = lib.autr_msda_emu_forward(code, vec, *dims, *ptrs, blocks, int(wide), int(specialise))
    assert rc == 0
    return _emu_result(torch, code, out), exact


@pytest.mark.parametrize("d", [8, 6, 3, 40])
def test_emulated_forward_matches_reference(emulated_kernel, d):
    torch = pytest.importorskip("torch")
    pytest.importorskip("numpy")
    value, shapes, starts, loc, attn = _problem(torch, d=d)  # L = 3, P = 4: AuTR's specialisation
    assert emulated_kernel.autr_msda_emu_is_specialised(3, 4) == 1
    for code, (vecs, tol) in _EMU_CASES.items():
        for vec in vecs:
            if d % vec:
                continue
            for wide, specialise in ((False, True), (True, True), (False, False)):
                out, exact = _emu_forward(emulated_kernel, torch, code, vec, value, shapes, starts, loc, attn,
                                          wide=wide, specialise=specialise)
                err = _rel_err(out, msda_reference(exact[0], shapes, starts, *exact[1:]))
                assert err <= tol, (_EMU_TYPES[code], vec, wide, specialise, err)


@pytest.mark.parametrize("levels,points", [((3, 2)), ((4, 4)), ((2, 3)), ((1, 1))])
def test_emulated_specialisations_match_reference(emulated_kernel, levels, points):
    """Every compiled (L, P) (AuTR 3x4 above, tiny 3x2, Deformable-DETR 4x4) and the generic kernel for
    others, at every vector width, against the reference."""
    torch = pytest.importorskip("torch")
    shapes = ((6, 5), (3, 4), (2, 2), (1, 3))[:levels]
    value, ss, st, loc, attn = _problem(torch, d=8, lq=5, points=points, shapes=shapes)
    expected = emulated_kernel.autr_msda_emu_is_specialised(levels, points)
    assert expected == int((levels, points) in ((3, 2), (4, 4)))
    for code, (vecs, tol) in _EMU_CASES.items():
        for vec in vecs:
            out, exact = _emu_forward(emulated_kernel, torch, code, vec, value, ss, st, loc, attn)
            assert _rel_err(out, msda_reference(exact[0], ss, st, *exact[1:])) <= tol, (_EMU_TYPES[code], vec)


@pytest.mark.parametrize("code", [0, 1, 3])
def test_emulated_detr_baseline_matches_reference(emulated_kernel, code):
    torch = pytest.importorskip("torch")
    value, shapes, starts, loc, attn = _problem(torch, d=6, lq=9)
    out, exact = _emu_forward(emulated_kernel, torch, code, 1, value, shapes, starts, loc, attn, baseline=True,
                              blocks=1)  # 1024 threads < N*Lq*M*D: the grid-stride loop runs
    assert _rel_err(out, msda_reference(exact[0], shapes, starts, *exact[1:])) <= _EMU_CASES[code][1]


def test_emulated_kernel_skips_levels_that_do_not_fit(emulated_kernel):
    """Index values that do not fit S (as TensorRT's synthetic timing inputs may be) are never read through:
    such a level contributes zero, the others stay exact."""
    torch = pytest.importorskip("torch")
    value, shapes, starts, loc, attn = _problem(torch, d=4, lq=6)
    s = value.shape[1]
    keep = msda_reference(value, shapes[:1], starts[:1], loc[:, :, :, :1], attn[:, :, :, :1])
    for bad_shapes, bad_starts in (([[6, 5], [3, 4], [1, 10 ** 6]], [0, 30, 42]),  # level 2 too large
                                   ([[6, 5], [3, 4], [1, 2]], [0, -7, s - 1]),       # negative / overrunning start
                                   ([[6, 5], [0, 4], [-1, 2]], [0, 30, 42]),         # empty / negative size
                                   ([[6, 5], [2 ** 31 - 1, 2 ** 31 - 1], [1, 2]], [0, 30, 2 ** 40])):
        bs, bt = torch.tensor(bad_shapes), torch.tensor(bad_starts)
        for wide in (True, False):
            if not wide and int(bt.abs().max()) >= 2 ** 31:
                continue
            valid = [l for l in range(3) if 0 < bs[l, 0] and 0 < bs[l, 1] and 0 <= bt[l]
                     and int(bt[l]) + int(bs[l, 0]) * int(bs[l, 1]) <= s]
            want = sum(msda_reference(value, shapes[l:l + 1], starts[l:l + 1], loc[:, :, :, l:l + 1],
                                      attn[:, :, :, l:l + 1]) for l in valid) if valid else torch.zeros_like(keep)
            if valid == [0]:
                torch.testing.assert_close(want, keep)
            for vec, specialise in ((1, False), (4, True)):
                out, _ = _emu_forward(emulated_kernel, torch, 2 if vec == 1 else 0, vec, value, bs, bt, loc, attn,
                                      wide=wide, specialise=specialise)
                assert _rel_err(out, want) <= 1e-5, (bad_shapes, bad_starts, wide, vec)


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
        go.ctypes.data, *(g.ctypes.data for g in grads), 1, 0,  # one block of 8 warps: grid-stride over warps
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


# ----------------------------------------------------------------------------------------- toolkit checks


def _fake_nvcc(tmp_path, release: str, archs=("75", "80", "86", "89", "90")) -> Path:
    """An nvcc that answers --version and --list-gpu-arch as an older toolkit does (this machine has one nvcc)."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True, exist_ok=True)
    listing = "\\n".join(f"compute_{a}" for a in archs)
    nvcc.write_text(f"#!/bin/sh\ncase \"$1\" in\n  --version) echo 'Cuda compilation tools, release {release}, "
                    f"V{release}.1';;\n  --list-gpu-arch) printf '{listing}\\n';;\n  *) exit 1;;\nesac\n")
    nvcc.chmod(0o755)
    return nvcc


def test_default_archs_include_blackwell_and_old_nvcc_leaves_them_out(tmp_path):
    assert plugin_build.DEFAULT_ARCHS[-2:] == ("100", "120")
    old = str(_fake_nvcc(tmp_path, "12.4"))
    archs, notes = plugin_build.supported_archs(old, None, explicit=False)
    assert archs == ("80", "86", "89", "90") and len(notes) == 1 and "sm_100, sm_120" in notes[0]
    with pytest.raises(BuildError, match=r"nvcc 12.4 .* cannot build sm_120 .*newer CUDA toolkit") as info:
        plugin_build.supported_archs(old, "90,120", explicit=True)
    assert "\n" not in str(info.value)


def test_toolkit_mismatches_are_one_line():
    from autr.plugins import toolkit

    line = toolkit.driver_problem("13.0", "libautr_trt_plugin.so", driver=(12, 4))
    assert "CUDA 13.0 runtime" in line and "r580+" in line and "supports CUDA 12.4" in line and "\n" not in line
    assert toolkit.driver_problem("13.0", "x", driver=(13, 1)) is None
    line = toolkit.tensorrt_problem("13.0", "libautr_trt_plugin.so", trt_major=12)
    assert "TensorRT is built for CUDA 12" in line and "tensorrt-cu13" in line and "\n" not in line
    assert toolkit.tensorrt_problem("13.0", "x", trt_major=13) is None
    line = toolkit.torch_problem("12.8", "13.0")
    assert "PyTorch is built for CUDA 12.8" in line and "refuses" in line and "\n" not in line
    assert toolkit.torch_problem("13.0", "13.0") is None and toolkit.torch_problem(None, "13.0") is None


def test_plugin_loader_refuses_a_library_the_driver_cannot_run(tmp_path, monkeypatch):
    from autr.plugins import toolkit
    from autr.plugins.trt_loader import load_plugin_library

    sys.path.insert(0, str(Path(__file__).parent))
    from trt_fakes import FakePluginRegistry

    lib = tmp_path / plugin_build.LIBRARY_NAME
    lib.write_bytes(b"plugin")
    plugin_build.write_build_info(lib, str(_fake_nvcc(tmp_path, "13.0")), "90", "11.1.0")
    assert toolkit.read_build_info(lib)["cuda_major"] == 13
    monkeypatch.setattr(toolkit, "driver_cuda_version", lambda: (12, 8))
    monkeypatch.setattr(toolkit, "tensorrt_cuda_major", lambda: None)
    registry = FakePluginRegistry()
    with pytest.raises(plugins.PluginError, match="needs an NVIDIA driver r580\\+") as info:
        load_plugin_library(None, lib, registry=registry)
    assert "\n" not in str(info.value) and ("load_library", str(lib.resolve())) not in registry.calls
    monkeypatch.setattr(toolkit, "driver_cuda_version", lambda: (13, 0))
    monkeypatch.setattr(toolkit, "tensorrt_cuda_major", lambda: 12)
    with pytest.raises(plugins.PluginError, match="installed TensorRT is built for CUDA 12"):
        load_plugin_library(None, lib, registry=registry)
    monkeypatch.setattr(toolkit, "tensorrt_cuda_major", lambda: 13)
    handle = load_plugin_library(None, lib, registry=registry)
    assert handle is not None and load_plugin_library(None, lib, registry=registry) is handle
    copy = tmp_path / "copy.so"  # the same build under another name: already registered, fine
    copy.write_bytes(lib.read_bytes())
    assert load_plugin_library(None, copy, registry=registry) is handle
    assert [c[0] for c in registry.calls].count("load_library") == 1
    from autr.plugins import trt_loader

    monkeypatch.setattr(trt_loader, "_loaded", {})  # a new process ...
    fresh = FakePluginRegistry()  # ... where someone else registered it (trtexec --dynamicPlugins): nothing to load
    fresh.load_library(str(copy))
    assert load_plugin_library(None, lib, registry=fresh) is None
    missing = FakePluginRegistry()
    with pytest.raises(plugins.PluginError, match="could not load the plugin library .*: no such file"):
        load_plugin_library(None, tmp_path / "gone.so", registry=missing, errors=lambda: ["no such file"])


def test_torch_extension_refuses_an_nvcc_of_another_cuda_major(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("CPU-only PyTorch: the extension is refused before nvcc is looked at")
    from torch.utils import cpp_extension

    from autr.plugins import torch_op

    other = "12.4" if not torch.version.cuda.startswith("12") else "13.0"
    nvcc = _fake_nvcc(tmp_path / "cuda", other)
    (tmp_path / "cuda" / "include").mkdir()
    (tmp_path / "cuda" / "include" / "cuda_runtime_api.h").write_text("")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(nvcc.parent.parent))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    with pytest.raises(PluginUnavailable, match=f"nvcc is CUDA {other} but this PyTorch is built for CUDA") as info:
        torch_op._check_toolchain()
    assert "\n" not in str(info.value)
