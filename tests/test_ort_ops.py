"""autr.plugins' ONNX Runtime custom-op library: the CPU kernel against the pure-PyTorch reference, through
one-node graphs and through a whole exported plugin graph, its error messages, the builder and the loader's
one-line fallback reasons.

The library is built once per session from the working tree's sources (`python -m autr.plugins build --ort`
into a temporary directory); the tests skip only where no C++ compiler or no ONNX Runtime headers exist
(`make install` provides both, so `make test` runs them).
"""
import ctypes.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from autr.benchmarks.msda_bench import MsdaCase, msda_onnx_model  # noqa: E402
from autr.ops import ms_deform_attn_reference  # noqa: E402
from autr.plugins import __main__ as plugins_cli  # noqa: E402
from autr.plugins import build as plugin_build  # noqa: E402
from autr.plugins import ort_ops  # noqa: E402
from autr.plugins.errors import BuildError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _toolchain_or_skip():
    try:
        plugin_build.find_cxx()
    except BuildError as exc:
        pytest.skip(f"no C++ compiler to build the ONNX Runtime library: {exc}")
    if plugin_build.find_ort_include() is None:
        pytest.skip("ONNX Runtime C API headers not found: run `make ort-headers` (or set $AUTR_ORT_INCLUDE)")


@pytest.fixture(scope="session")
def ort_lib(tmp_path_factory):
    """libautr_ort_ops.so built from the working tree through the CLI, into a temporary directory."""
    _toolchain_or_skip()
    out = tmp_path_factory.mktemp("ort_ops")
    rc = plugins_cli.main(["build", "--ort", "--no-cuda", "--out", str(out)])
    assert rc == 0
    lib = out / plugin_build.ORT_LIBRARY_NAME
    assert lib.is_file()
    return lib


def _session(model, lib, threads=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    assert ort_ops.register_msda(options, library=lib) is None
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _inputs(case, seed=0, lo=-0.3, hi=1.3):
    g = torch.Generator().manual_seed(seed)
    n, lq, m, d, lv, p = case.n, case.lq, case.m, case.d, case.levels, case.p
    value = torch.randn(n, case.s, m, d, generator=g)
    loc = torch.rand(n, lq, m, lv, p, 2, generator=g) * (hi - lo) + lo
    weights = torch.rand(n, lq, m, lv, p, generator=g)
    return value, loc, weights


def _reference(case, value, loc, weights):
    shapes = torch.tensor(case.shapes, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return ms_deform_attn_reference(value.double(), shapes, starts, loc.double(), weights.double())


def _run(session, value, loc, weights):
    feeds = {"value": value.numpy(), "sampling_locations": loc.numpy(), "attention_weights": weights.numpy()}
    return session.run(None, feeds)[0]


CASES = [
    # the small preset's encoder call at 128x128 (levels at strides 8/16/32) and its decoder call at 224x224
    MsdaCase("small@128 encoder", n=2, lq=336, m=8, d=16, p=4, shapes=[(16, 16), (8, 8), (4, 4)]),
    MsdaCase("small@224 decoder", n=5, lq=30, m=8, d=16, p=4, shapes=[(28, 28), (14, 14), (7, 7)]),
    MsdaCase("tiny heads, N=3", n=3, lq=21, m=4, d=16, p=2, shapes=[(8, 8), (4, 4), (2, 2)]),
    MsdaCase("single level", n=1, lq=17, m=2, d=8, p=3, shapes=[(5, 7)]),
    MsdaCase("D=12 (not a multiple of 8)", n=2, lq=9, m=3, d=12, p=2, shapes=[(6, 5), (3, 3)]),
    MsdaCase("D=3", n=1, lq=11, m=2, d=3, p=4, shapes=[(4, 9), (2, 5)]),
    MsdaCase("D=40", n=1, lq=13, m=2, d=40, p=2, shapes=[(7, 7), (3, 4)]),
    MsdaCase("D=72 (beyond the register path)", n=1, lq=7, m=2, d=72, p=2, shapes=[(5, 5), (2, 3)]),
    MsdaCase("M*L*P=576 (beyond the blocked path)", n=1, lq=5, m=16, d=8, p=9, shapes=[(4, 4), (3, 3), (2, 2), (1, 1)]),
    MsdaCase("1x1 levels", n=2, lq=6, m=1, d=8, p=5, shapes=[(1, 1), (1, 2), (2, 1)]),
]


@pytest.mark.parametrize("isa", ["native", "generic"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_matches_the_reference(ort_lib, monkeypatch, case, isa):
    if isa == "generic":  # the portable path (read when the kernel is created)
        monkeypatch.setenv("AUTR_MSDA_CPU_ISA", "generic")
    session = _session(msda_onnx_model(case), ort_lib)
    value, loc, weights = _inputs(case)
    assert ((loc < 0) | (loc > 1)).any()  # some samples fall (partly) outside the maps
    out = _run(session, value, loc, weights)
    assert out.shape == (case.n, case.lq, case.m * case.d) and out.dtype == np.float32
    ref = _reference(case, value, loc, weights).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * max(1.0, float(np.abs(ref).max())))


def test_both_cpu_paths_and_thread_counts_agree(ort_lib, monkeypatch):
    case = CASES[0]
    value, loc, weights = _inputs(case, seed=3)
    one = _run(_session(msda_onnx_model(case), ort_lib, threads=1), value, loc, weights)
    two = _run(_session(msda_onnx_model(case), ort_lib, threads=2), value, loc, weights)
    np.testing.assert_array_equal(one, two)  # rows are independent: threading never changes a result
    monkeypatch.setenv("AUTR_MSDA_CPU_ISA", "generic")
    generic = _run(_session(msda_onnx_model(case), ort_lib, threads=2), value, loc, weights)
    np.testing.assert_allclose(generic, one, rtol=0, atol=1e-5)


def test_exact_corners_borders_and_nan_locations(ort_lib):
    # x, y exactly at pixel centres, on the map borders (0 and 1), just outside, far outside, NaN
    case = MsdaCase("edges", n=1, lq=9, m=1, d=8, p=1, shapes=[(4, 8)])
    value = torch.randn(1, 32, 1, 8, generator=torch.Generator().manual_seed(1))
    xs = [0.5 / 8, 0.0, 1.0, -0.06, 1.06, 3.0, -2.0, 0.3, float("nan")]
    ys = [0.5 / 4, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, -0.12, 0.5]
    loc = torch.tensor([[x, y] for x, y in zip(xs, ys)], dtype=torch.float32).view(1, 9, 1, 1, 1, 2)
    weights = torch.ones(1, 9, 1, 1, 1)
    out = _run(_session(msda_onnx_model(case), ort_lib), value, loc, weights)
    ref = _reference(case, value, loc[:, :8], weights[:, :8]).numpy()
    np.testing.assert_allclose(out[:, :8], ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[0, 0], value[0, 0, 0].numpy())  # pixel centre: that pixel, exactly
    assert not out[0, 5].any() and not out[0, 6].any()  # entirely outside: zero
    assert not out[0, 8].any()  # a NaN location contributes nothing


def test_float16_graph_converts_exactly(ort_lib, monkeypatch):
    """fp16 tensors are converted to float32, computed, and the result rounded back to fp16 (round to nearest
    even): with one sample per output at a pixel centre, out = fp16(fp32(value) * fp32(weight)) bit for bit,
    for normal, subnormal and extreme fp16 values, on both CPU paths."""
    case = MsdaCase("fp16", n=1, lq=64, m=2, d=24, p=1, shapes=[(8, 8)])
    rng = np.random.default_rng(0)
    special = np.array([6.1e-5, 5.96e-8, 1e-7, 65504.0, -65504.0, 0.1, -3.0, 2.0 ** -24], np.float16)
    value = np.concatenate([special, rng.standard_normal(64 * 2 * 24 - special.size).astype(np.float16) * 7])
    value = value.astype(np.float16).reshape(1, 64, 2, 24)
    centres = np.stack(np.meshgrid((np.arange(8) + 0.5) / 8, (np.arange(8) + 0.5) / 8), -1).reshape(64, 2)
    loc = np.broadcast_to(centres[:, None, None, None, :], (64, 2, 1, 1, 2)).astype(np.float16)[None].copy()
    weights = rng.uniform(0.25, 1.5, (1, 64, 2, 1, 1)).astype(np.float16)
    weights[0, :4] = 1.0
    expected = value.astype(np.float32) * weights.astype(np.float32).reshape(1, 64, 2, 1)
    expected = expected.astype(np.float16).reshape(1, 64, 48)  # numpy: float32 -> float16 round to nearest even
    feeds = {"value": value, "sampling_locations": loc, "attention_weights": weights}
    for isa in ("native", "generic"):
        if isa == "generic":
            monkeypatch.setenv("AUTR_MSDA_CPU_ISA", "generic")
        out = _session(msda_onnx_model(case, "fp16"), ort_lib).run(None, feeds)[0]
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16), err_msg=isa)


def test_float16_random_inputs_match_the_reference(ort_lib):
    case = CASES[0]
    value, loc, weights = _inputs(case, seed=5)
    value, loc, weights = value.half(), loc.half(), weights.half()
    out = _run(_session(msda_onnx_model(case, "fp16"), ort_lib), value, loc, weights)
    ref = _reference(case, value.float(), loc.float(), weights.float()).numpy()
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))


def test_empty_query_batch(ort_lib):
    case = MsdaCase("no queries", n=2, lq=0, m=2, d=8, p=2, shapes=[(3, 3)])
    value, loc, weights = _inputs(case)
    out = _run(_session(msda_onnx_model(case), ort_lib), value, loc, weights)
    assert out.shape == (2, 0, 16)


def _node_model(plugin_version="1", shapes=((4, 4), (2, 2)), starts=(0, 16), s=20, with_attribute=True):
    from onnx import TensorProto, helper, numpy_helper

    attrs = {"plugin_version": plugin_version} if with_attribute else {}
    node = helper.make_node("AutrMSDeformAttn", ["value", "ss", "lsi", "loc", "w"], ["out"], domain="autr",
                            name="msda0", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("value", "loc", "w")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(shapes, np.int32), "ss"),
                     numpy_helper.from_array(np.asarray(starts, np.int32), "lsi")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("autr", 1)],
                             ir_version=9)


def _feeds(s=20, lv=2):
    rng = np.random.default_rng(0)
    return {"value": rng.standard_normal((1, s, 2, 8), dtype=np.float32),
            "loc": rng.random((1, 3, 2, lv, 2, 2), dtype=np.float32),
            "w": rng.random((1, 3, 2, lv, 2), dtype=np.float32)}


def test_plugin_version_is_checked(ort_lib):
    for kwargs, words in (({"plugin_version": "2"}, 'plugin_version="2" is not supported'),
                          ({"with_attribute": False}, "attribute plugin_version is missing")):
        with pytest.raises(Exception) as info:
            _session(_node_model(**kwargs), ort_lib).run(None, _feeds())
        message = str(info.value)
        assert words in message and "AutrMSDeformAttn node 'msda0'" in message, message
    _session(_node_model(), ort_lib).run(None, _feeds())  # "1" runs


@pytest.mark.parametrize("kwargs, feeds, words", [
    ({"starts": (0, 15)}, {}, "level_start_index[1] = 15 but the levels before it hold 16 positions"),
    ({"s": 21}, {"s": 21}, "value has S=21 positions but spatial_shapes sum to 20"),
    ({"shapes": ((4, 4), (0, 2)), "s": 16}, {"s": 16}, "every level needs H, W >= 1"),
])
def test_inconsistent_levels_are_refused_with_the_reason(ort_lib, kwargs, feeds, words):
    session = _session(_node_model(**kwargs), ort_lib)
    with pytest.raises(Exception, match=r"AutrMSDeformAttn node 'msda0': ") as info:
        session.run(None, _feeds(**feeds))
    assert words in str(info.value)


def test_mismatched_shapes_are_refused_with_the_expected_shapes(ort_lib):
    session = _session(_node_model(), ort_lib)
    feeds = _feeds()
    feeds["w"] = feeds["w"][:, :, :, :, :1].copy()
    with pytest.raises(Exception, match=r"attention_weights must be \[N, Lq, M, L, P\] = \[1, 3, 2, 2, 2\], got "
                                        r"\[1, 3, 2, 2, 1\]"):
        session.run(None, feeds)


# ------------------------------------------------------------------------------------------- whole graph
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """One export of the untrained tiny preset at 64x64, float32 and float16 graphs."""
    from autr.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("ort_export") / "tiny"
    export_onnx(out, preset="tiny", size=64, fp16=True, check=False)
    return out


def _graph_feeds(t=2):
    rng = np.random.default_rng(1)
    return {"frames": rng.standard_normal((t, 3, 64, 64)).astype(np.float32),
            "log_mel": rng.standard_normal((t, 1, 96, 64)).astype(np.float32)}


@pytest.mark.parametrize("suffix, atol", [("", 1e-4), (".fp16", 2e-3)])
def test_plugin_graph_with_the_library_equals_the_portable_graph(ort_lib, tiny_export, suffix, atol):
    plugin = onnx.load(str(tiny_export / f"model.plugin{suffix}.onnx"))
    assert any(n.op_type == "AutrMSDeformAttn" for n in plugin.graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    assert ort_ops.register_msda(options, library=ort_lib) is None
    fused = ort.InferenceSession(str(tiny_export / f"model.plugin{suffix}.onnx"), options,
                                 providers=["CPUExecutionProvider"])
    portable = ort.InferenceSession(str(tiny_export / f"model.portable{suffix}.onnx"),
                                    providers=["CPUExecutionProvider"])
    for t in (1, 2):
        feeds = _graph_feeds(t)
        got = fused.run(["masks", "scores"], feeds)
        want = portable.run(["masks", "scores"], feeds)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.shape[0] == t
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=atol)


def test_plugin_graph_without_the_library_is_refused_by_onnxruntime(tiny_export):
    with pytest.raises(Exception, match="AutrMSDeformAttn"):
        ort.InferenceSession(str(tiny_export / "model.plugin.onnx"), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------- loader
def test_register_msda_finds_the_library_through_the_env_var(ort_lib, monkeypatch):
    monkeypatch.setenv(plugin_build.ORT_OPS_ENV, str(ort_lib))
    assert plugin_build.ort_library_path() == ort_lib.resolve()
    assert ort_ops.select_ort_library() == ort_lib.resolve()
    assert ort_ops.register_msda(ort.SessionOptions()) is None
    facts = ort_ops.library_facts(ort_lib)
    assert facts["api_version"] == plugin_build.ort_api_version(plugin_build.find_ort_include())
    assert facts["cuda"] is False and facts["cpu_isa"] in ("avx2", "generic")
    assert plugin_build.ort_library_hash() == plugin_build.library_hash(ort_lib)


def _assert_one_line(reason, *words):
    assert isinstance(reason, str) and reason and "\n" not in reason, reason
    for word in words:
        assert word in reason, reason


def test_register_msda_reasons_are_one_line(tmp_path, monkeypatch):
    if any((plugin_build.PACKAGE_DIR / "lib" / n).is_file()
           for n in (plugin_build.ORT_LIBRARY_NAME, plugin_build.ORT_CUDA_LIBRARY_NAME)):
        pytest.skip("a library is shipped inside the package; the not-found path cannot be tested")
    monkeypatch.delenv(plugin_build.ORT_OPS_ENV, raising=False)
    monkeypatch.setenv(plugin_build.PLUGIN_DIR_ENV, str(tmp_path / "empty"))
    build_cmd = "python -m autr.plugins build --ort"
    # not built
    _assert_one_line(ort_ops.register_msda(ort.SessionOptions()), "libautr_ort_ops.so not found", build_cmd)
    # the env var points nowhere
    monkeypatch.setenv(plugin_build.ORT_OPS_ENV, str(tmp_path / "nowhere.so"))
    _assert_one_line(ort_ops.register_msda(ort.SessionOptions()), "$AUTR_ORT_OPS=", "does not exist", build_cmd)
    # a file that is not a shared library
    bogus = tmp_path / "libautr_ort_ops.so"
    bogus.write_bytes(b"this is not an ELF file\n" * 10)
    monkeypatch.setenv(plugin_build.ORT_OPS_ENV, str(bogus))
    _assert_one_line(ort_ops.register_msda(ort.SessionOptions()), "cannot load", str(bogus), build_cmd)
    _assert_one_line(ort_ops.register_msda(ort.SessionOptions(), library=tmp_path / "missing.so"), "does not exist")
    # a real shared library that is not ours
    libm = ctypes.util.find_library("m")
    if libm:
        path = next((Path(d) / libm for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
                                               "/usr/lib64", "/lib", "/usr/lib") if (Path(d) / libm).is_file()), None)
        if path is not None:
            _assert_one_line(ort_ops.register_msda(ort.SessionOptions(), library=path),
                             "not an AuTR ONNX Runtime custom-op library")


def test_library_built_for_a_newer_onnxruntime_fails_cleanly(tmp_path):
    """Headers claiming C API 99: the loader refuses before loading (one line naming the versions), and the
    library's own RegisterCustomOps refuses with a status instead of crashing when ONNX Runtime is asked."""
    _toolchain_or_skip()
    headers = tmp_path / "include"
    shutil.copytree(plugin_build.find_ort_include(), headers)
    api = headers / "onnxruntime_c_api.h"
    text = api.read_text()
    api.write_text(text.replace(f"#define ORT_API_VERSION {plugin_build.ort_api_version(headers)}",
                                "#define ORT_API_VERSION 99", 1))
    assert plugin_build.ort_api_version(headers) == 99
    result = plugin_build.build_ort_ops(ort_include=headers, out_dir=tmp_path / "out", cuda=False)
    reason = ort_ops.register_msda(ort.SessionOptions(), library=result.library)
    _assert_one_line(reason, "C API 99", f"onnxruntime {ort.__version__} is installed", "--ort-include")
    with pytest.raises(Exception, match=r"needs ONNX Runtime C API 99 \(onnxruntime >= 1\.99\) but this ONNX "
                                        rf"Runtime is {ort.__version__}"):
        ort.SessionOptions().register_custom_ops_library(str(result.library))


def test_onnxruntime_api_version_parsing():
    assert ort_ops.onnxruntime_api_version("1.32.0") == 32
    assert ort_ops.onnxruntime_api_version("1.21.1+cu12") == 21
    assert ort_ops.onnxruntime_api_version("2.0.0") is None and ort_ops.onnxruntime_api_version("") is None


# ------------------------------------------------------------------------------------------- builder
def test_library_exports_only_its_entry_points(ort_lib):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", str(ort_lib)], capture_output=True, text=True, check=True).stdout
    names = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert names == sorted(plugin_build.ORT_EXPORTS)
    script = plugin_build.ORT_EXPORTS_MAP.read_text()
    assert all(f"    {name};" in script for name in plugin_build.ORT_EXPORTS) and "local: *;" in script
    undefined = subprocess.run([nm, "-D", "--undefined-only", str(ort_lib)], capture_output=True, text=True).stdout
    assert "Ort" not in undefined  # ONNX Runtime arrives through OrtApiBase, nothing is linked


def test_header_lookup_and_errors(tmp_path, monkeypatch):
    with pytest.raises(BuildError, match="does not contain onnxruntime_c_api.h"):
        plugin_build.find_ort_include(tmp_path)
    (tmp_path / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 17\n")
    monkeypatch.setenv(plugin_build.ORT_INCLUDE_ENV, str(tmp_path))
    assert plugin_build.find_ort_include() == tmp_path.resolve()
    assert plugin_build.ort_api_version(tmp_path) == 17
    monkeypatch.setenv(plugin_build.ORT_INCLUDE_ENV, str(tmp_path / "nothing"))
    monkeypatch.setenv(plugin_build.PLUGIN_DIR_ENV, str(tmp_path / "cache"))
    found = plugin_build.find_ort_include()
    assert found is None or found in (Path("/usr/include/onnxruntime").resolve(),
                                      Path("/usr/local/include/onnxruntime").resolve())
    if found is None:
        with pytest.raises(BuildError, match="make ort-headers"):
            plugin_build.build_ort_ops(out_dir=tmp_path / "out")
    with pytest.raises(BuildError, match="C\\+\\+ compiler not found"):
        plugin_build.find_cxx(str(tmp_path / "no-such-g++"))


def test_info_describes_the_ort_library(ort_lib, monkeypatch, capsys):
    monkeypatch.setenv(plugin_build.ORT_OPS_ENV, str(ort_lib))
    assert plugins_cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"ORT library   : {ort_lib.resolve()} (C API " in out
    assert f"sha256        : {plugin_build.library_hash(ort_lib)}" in out
    assert f"onnxruntime   : {ort.__version__}" in out


def test_cli_refuses_ort_with_trt_options(capsys):
    assert plugins_cli.main(["build", "--ort", "--kernel-only"]) == 2
    assert "separate" in capsys.readouterr().err


def test_cuda_library_builds_with_nvcc(tmp_path):
    """libautr_ort_ops_cuda.so: compiled and linked here (no GPU runs it); it loads, says it has the CUDA
    kernels, carries sm_80 code, and its CPU kernels still serve ONNX Runtime's CPU execution provider."""
    _toolchain_or_skip()
    try:
        plugin_build.find_nvcc()
    except BuildError as exc:
        pytest.skip(f"nvcc is not installed: {exc}")
    result = plugin_build.build_ort_ops(out_dir=tmp_path, cuda=True, archs="80")
    assert result.cuda_library == tmp_path / plugin_build.ORT_CUDA_LIBRARY_NAME and result.cuda_library.is_file()
    assert "sm_80" in plugin_build.fatbin_archs(result.cuda_library)
    assert ort_ops.library_facts(result.cuda_library)["cuda"] is True
    case = CASES[2]
    value, loc, weights = _inputs(case)
    out = _run(_session(msda_onnx_model(case), result.cuda_library), value, loc, weights)
    np.testing.assert_allclose(out, _reference(case, value, loc, weights).numpy(), rtol=0, atol=1e-5)
    assert "ORT CUDA lib  :" in result.summary()


def test_importing_the_loader_stays_light():
    code = ("import sys, autr.plugins as p; p.register_msda; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


# ------------------------------------------------------------------------------------------- benchmark
def test_bench_msda_times_the_ort_kernel_beside_the_reference(ort_lib, monkeypatch):
    from autr.benchmarks.msda_bench import format_msda, run_msda_bench

    monkeypatch.setenv(plugin_build.ORT_OPS_ENV, str(ort_lib))
    threads = torch.get_num_threads()
    try:
        result = run_msda_bench(presets=["tiny"], size=64, frames=2, cases=["model"], impls=["reference", "ort"],
                                dtypes=["fp32", "fp16"], device="cpu", warmup=1, iters=2, threads=1)
    finally:
        torch.set_num_threads(threads)
    rows = {(r["case"], r["impl"], r["dtype"]): r for r in result["rows"]}
    for case in ("tiny@64 encoder", "tiny@64 decoder"):
        row = rows[(case, "ort", "fp32")]
        assert row["status"] == "ok", row
        assert row["rel_error_vs_fp64"] < 1e-5 and row["speedup_vs_reference"] > 0
        assert rows[(case, "ort", "fp16")]["status"] == "ok"
        assert rows[(case, "ort", "fp16")]["rel_error_vs_fp64"] < 5e-3
    assert "tiny@64 encoder" in format_msda(result) and " ort " in format_msda(result)


def test_bench_msda_ort_row_says_why_it_cannot_run(tmp_path, monkeypatch):
    from autr.benchmarks.msda_bench import run_msda_bench

    monkeypatch.setenv(plugin_build.ORT_OPS_ENV, str(tmp_path / "missing.so"))
    result = run_msda_bench(presets=["tiny"], size=64, frames=1, cases=["model"], impls=["ort"], dtypes=["fp32"],
                            device="cpu", warmup=1, iters=1)
    reasons = {r["reason"] for r in result["rows"]}
    assert len(reasons) == 1 and "python -m autr.plugins build --ort" in reasons.pop()
