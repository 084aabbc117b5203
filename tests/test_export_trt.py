"""`autr export trt`: profile validation, the engine cache, the one-line refusals, and the build wiring.

TensorRT and a GPU are not needed: the build path runs against a fake ``tensorrt`` + ``pycuda.driver``
(injected into ``sys.modules``) that records every call, so the wiring is checked against the real API
names. The one test that builds a real engine is marked ``trt`` and skips where TensorRT is missing.
"""
from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
from click.testing import CliRunner

from autr.export import trt as et
from autr.export.cli import export as export_group
from autr.export.errors import ExportError
from trt_fakes import FakePluginRegistry

SIZE = 64
T_MAX = 2
FAKE_GPU = "Fake GPU 80GB"
FAKE_CC = (8, 9)
FAKE_PLAN = b"fake serialized plan \x00\x01\x02" * 8
FAKE_TIMING = b"fake timing cache"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny `autr export onnx` (64x64, T 1..2, no parity check) shared by the tests (read-only)."""
    from autr.export import export_onnx

    out = tmp_path_factory.mktemp("trt") / "tiny"
    export_onnx(out, preset="tiny", size=SIZE, frames=T_MAX, check=False)
    return out


@pytest.fixture()
def work_dir(export_dir, tmp_path):
    """A private copy of the export (engines get written into it)."""
    d = tmp_path / "exp"
    d.mkdir()
    for name in ("model.json", "model.plugin.onnx"):
        shutil.copy(export_dir / name, d / name)
    return d


# ----------------------------------------------------------------------------------------- fakes
def fake_tensorrt(calls: list, version: str = "10.9.0", strongly_typed_flag: bool = True, parse_ok: bool = True,
                  build_ok: bool = True):
    """A stand-in for the tensorrt module (TensorRT 10/11 Python API names) that records its calls."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.Logger = type("Logger", (ILogger,), {"WARNING": Severity.WARNING})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", **({"FP16": "FP16"} if version.startswith("10") else {}))
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed_flag else {}))

    def init_plugins(logger, namespace):
        calls.append(("init_libnvinfer_plugins", namespace))
        return True

    trt.init_libnvinfer_plugins = init_plugins

    registry = FakePluginRegistry(calls)  # one per process, with the real registry's refusals
    trt.get_plugin_registry = lambda: registry

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        num_inputs = 2

        def get_input(self, i):
            return Tensor(("frames", "log_mel")[i])

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return FAKE_TIMING

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return 0

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            self.logger = logger
            calls.append(("Builder",))

        def get_plugin_registry(self):
            return registry

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            if not build_ok:
                self.logger.log(Severity.ERROR, "out of\nmemory in tactic selection")
                return None
            return FAKE_PLAN

    class ParserError:
        def __str__(self):
            return "In node 7 (parseGraph): UNSUPPORTED_NODE: no importer for op AutrMSDeformAttn"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            if parse_ok:
                return True
            self.num_errors = 1
            return False

        def get_error(self, i):
            return ParserError()

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


def fake_pycuda(name: str = FAKE_GPU, cc=FAKE_CC):
    cuda = types.ModuleType("pycuda.driver")
    cuda.init = lambda: None
    cuda.Device = lambda i: types.SimpleNamespace(name=lambda: name, compute_capability=lambda: cc)
    pkg = types.ModuleType("pycuda")
    pkg.driver = cuda
    return pkg, cuda


@pytest.fixture()
def fake_env(monkeypatch, tmp_path):
    """Install fake tensorrt + pycuda and a fake plugin library; returns (calls, install, plugin path)."""
    calls = []
    lib = tmp_path / "libautr_trt_plugin.so"
    lib.write_bytes(b"fake plugin library")
    monkeypatch.setenv("AUTR_TRT_PLUGIN", str(lib))

    def install(**kwargs):
        calls.clear()
        gpu = {k: kwargs.pop(k) for k in ("name", "cc") if k in kwargs}
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls, **kwargs))
        pkg, cuda = fake_pycuda(**gpu)
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)

    install()
    return calls, install, lib


def _names(calls):
    return [c[0] for c in calls]


# ------------------------------------------------------------------------------------- pure parts
def test_parse_profile_defaults_and_refusals():
    assert et.parse_profile(None, (1, 5)) == (1, 1, 5)
    assert et.parse_profile("1,2,4", (1, 5)) == (1, 2, 4)
    assert et.parse_profile(" 2, 2 ,2", (1, 5)) == (2, 2, 2)
    assert et.parse_profile([1, 3, 5], (1, 5)) == (1, 3, 5)
    for bad, msg in (("abc", "three integers"), ("1,2", "three integers"), ("1,2,3,4", "three integers"),
                     ("3,2,4", "min <= opt <= max"), ("1,1,6", "outside the export's T range 1..5"),
                     ("0,1,2", "outside")):
        with pytest.raises(ExportError, match=msg) as info:
            et.parse_profile(bad, (1, 5))
        assert "\n" not in str(info.value)


def test_shape_profile_covers_both_inputs():
    shapes = et.shape_profile((1, 2, 4), (64, 96))
    assert shapes == {"frames": {"min": [1, 3, 64, 96], "opt": [2, 3, 64, 96], "max": [4, 3, 64, 96]},
                      "log_mel": {"min": [1, 1, 96, 64], "opt": [2, 1, 96, 64], "max": [4, 1, 96, 64]}}


def _key(**over):
    base = dict(onnx_sha256="a" * 64, precision="fp32", profile=(1, 1, 5), input_size=(64, 64),
                tensorrt_version="10.9.0", gpu_name=FAKE_GPU, compute_capability=(8, 9),
                plugin_library_hash="b" * 64, toolkit_version="0.1.0")
    base.update(over)
    return et.cache_key(**base)


def test_cache_key_staleness_names_every_difference(tmp_path):
    key = _key()
    assert set(key) == set(et.CACHE_KEYS) and key["compute_capability"] == "8.9" and key["profile"] == [1, 1, 5]
    assert et.stale_reasons(tmp_path, key) == ["no engine yet (model.engine)"]
    et.write_engine(tmp_path, b"plan", {"format": et.FORMAT, "format_version": et.FORMAT_VERSION, "cache_key": key})
    assert et.stale_reasons(tmp_path, key) == []  # identical keys: reuse
    assert et.stale_reasons(tmp_path, _key()) == []  # recomputed, not the same object
    changes = {"onnx_sha256": "c" * 64, "precision": "fp16", "profile": (1, 2, 5), "input_size": (96, 96),
               "tensorrt_version": "10.10.0", "gpu_name": "Other GPU", "compute_capability": "9.0",
               "plugin_library_hash": "d" * 64, "toolkit_version": "0.2.0"}
    assert set(changes) == set(et.CACHE_KEYS)
    for field, value in changes.items():
        reasons = et.stale_reasons(tmp_path, _key(**{field: value}))
        assert len(reasons) == 1 and reasons[0].startswith(et.CACHE_KEYS[field] + " changed"), (field, reasons)
    assert "aaaaaaaaaaaa... -> cccccccccccc..." in et.stale_reasons(tmp_path, _key(onnx_sha256="c" * 64))[0]
    two = et.stale_reasons(tmp_path, _key(gpu_name="X", tensorrt_version="11.1.0"))
    assert len(two) == 2
    # the engine file must be the one its sidecar describes
    (tmp_path / "model.engine").write_bytes(b"PLAN")
    assert "not the engine its sidecar describes" in et.stale_reasons(tmp_path, key)[0]
    (tmp_path / "model.engine.json").write_text("{broken")
    assert "no readable engine sidecar" in et.stale_reasons(tmp_path, key)[0]
    (tmp_path / "model.engine.json").write_text(json.dumps({"cache_key": key}))
    assert "not written by" in et.stale_reasons(tmp_path, key)[0]
    (tmp_path / "model.engine.json").unlink()
    assert "no readable engine sidecar" in et.stale_reasons(tmp_path, key)[0]


def test_write_engine_is_atomic_pair(tmp_path):
    engine, side, data = et.write_engine(tmp_path, b"one", {"format": et.FORMAT, "n": 1})
    assert engine.read_bytes() == b"one" and json.loads(side.read_text())["n"] == 1
    assert data["engine_bytes"] == 3 and len(data["engine_sha256"]) == 64
    et.write_engine(tmp_path, b"two!", {"format": et.FORMAT, "n": 2})
    assert engine.read_bytes() == b"two!" and json.loads(side.read_text())["engine_bytes"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]  # no temp files left
    from autr.runtime.backends.sidecar import find_sidecar

    assert find_sidecar(engine) == side  # the runtime finds this sidecar, not model.json


def test_export_dir_refusals(tmp_path, export_dir):
    with pytest.raises(ExportError, match="not an `autr export onnx` directory"):
        et.build_engine(tmp_path)
    with pytest.raises(ExportError, match=r"model.plugin.fp16.onnx not found; re-export with `autr export onnx --fp16"):
        et.build_engine(export_dir, fp16=True)
    with pytest.raises(ExportError, match="--workspace must be a positive"):
        et.build_engine(export_dir, workspace_gb=0)
    assert et.read_export(export_dir)[2:] == ((SIZE, SIZE), (1, T_MAX))


# ------------------------------------------------------------------------------ missing TensorRT / GPU
def _one_line_failure(result):
    text = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(text.splitlines()) == 1, result.output
    return text


def test_cli_without_tensorrt_says_how_to_install(monkeypatch, export_dir):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails deterministically
    result = CliRunner().invoke(export_group, ["trt", str(export_dir)])
    text = _one_line_failure(result)
    from autr.runtime.backends.trt import INSTALL_HINT

    assert "needs TensorRT, which is not installed here" in text and INSTALL_HINT in text
    with pytest.raises(et.TrtUnavailable):
        et.build_engine(export_dir)


def test_trt_command_stays_light_without_tensorrt(export_dir):
    """The refusal comes fast: no torch / onnx / onnxruntime is imported on the way to it."""
    import subprocess

    code = ("import sys; sys.modules['tensorrt'] = None; from click.testing import CliRunner; "
            "from autr.export.cli import export; "
            f"r = CliRunner().invoke(export, ['trt', {str(export_dir)!r}]); assert r.exit_code == 2, r.output; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'timm') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_without_pycuda_or_gpu_says_so(monkeypatch, fake_env, export_dir):
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    text = _one_line_failure(CliRunner().invoke(export_group, ["trt", str(export_dir)]))
    assert "`autr export trt` needs pycuda, which is not installed here" in text and "pip install" in text
    pkg, cuda = fake_pycuda()

    def no_driver():
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    cuda.init = no_driver
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    text = _one_line_failure(CliRunner().invoke(export_group, ["trt", str(export_dir)]))
    assert "needs an NVIDIA GPU with its driver" in text and "no CUDA-capable device" in text and "pip install" in text


def test_cli_refuses_bad_profile_in_one_line(fake_env, export_dir):
    text = _one_line_failure(CliRunner().invoke(export_group, ["trt", str(export_dir), "--profile", "1,1,9"]))
    assert "outside the export's T range 1..2" in text


def test_cli_without_plugin_library(monkeypatch, fake_env, export_dir, tmp_path):
    monkeypatch.setenv("AUTR_TRT_PLUGIN", str(tmp_path / "missing.so"))
    text = _one_line_failure(CliRunner().invoke(export_group, ["trt", str(export_dir)]))
    assert "plugin is not built" in text and "python -m autr.plugins build" in text


# ----------------------------------------------------------------------------- build with a fake TRT
def test_build_wiring_cache_and_runtime_sidecar(fake_env, work_dir, tmp_path):
    calls, install, lib = fake_env
    cache_file = tmp_path / "tc" / "timing.cache"
    logs = []
    info = et.build_engine(work_dir, workspace_gb=0.5, timing_cache=cache_file, profile="1,2,2", log=logs.append)
    assert info["status"] == "built" and info["reasons"] == ["no engine yet (model.engine)"]
    # the calls, in the order the real API needs them: plugin before parsing, profile before building
    order = _names(calls)
    assert order.index("load_library") < order.index("parse_from_file") < order.index("build_serialized_network")
    assert ("load_library", str(lib.resolve())) in calls
    assert ("create_network", 1 << 1) in calls  # 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("parse_from_file", str(work_dir / "model.plugin.onnx")) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 2 ** 29) in calls
    assert ("set_shape", "frames", (1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)) in calls
    assert ("set_shape", "log_mel", (1, 1, 96, 64), (2, 1, 96, 64), (2, 1, 96, 64)) in calls
    assert ("create_timing_cache", b"") in calls and ("set_timing_cache", b"", False) in calls
    assert not any(c[0] == "set_flag" for c in calls)  # strongly typed: no FP16 builder flag
    assert cache_file.read_bytes() == FAKE_TIMING
    engine, side_path = work_dir / "model.engine", work_dir / "model.engine.json"
    assert engine.read_bytes() == FAKE_PLAN
    side = json.loads(side_path.read_text())
    assert side["gpu_name"] == FAKE_GPU and side["compute_capability"] == "8.9" and side["tensorrt_version"] == "10.9.0"
    assert side["precision"] == "fp32" and side["input_size"] == [SIZE, SIZE] and side["t_profile"]["opt"] == 2
    assert side["plugin_library_hash"] == et._sha256(lib)
    assert side["onnx_sha256"] == et._sha256(work_dir / "model.plugin.onnx")
    assert side["timing_cache"]["state"] == "created" and side["toolkit_version"] and side["built"]
    assert side["preprocessing"] == json.loads((work_dir / "model.json").read_text())["preprocessing"]
    assert any("building model.engine" in m for m in logs)

    # the runtime's trt backend reads this sidecar: same machine accepted, another GPU / TensorRT refused
    from autr.runtime.backends.sidecar import find_sidecar
    from autr.runtime.backends.sidecar import parse_spec
    from autr.runtime.backends.trt import check_engine_sidecar
    from autr.runtime.errors import SidecarError

    assert find_sidecar(engine) == side_path
    spec = parse_spec(side, "sidecar")
    assert (spec.input_size, spec.t_min, spec.t_max) == ((SIZE, SIZE), 1, 2)
    check_engine_sidecar(side, "10.9.0", FAKE_GPU, FAKE_CC, et._sha256(lib))
    with pytest.raises(SidecarError, match="GPU 'Fake GPU 80GB'"):
        check_engine_sidecar(side, "10.9.0", "NVIDIA H100", (9, 0), et._sha256(lib))
    with pytest.raises(SidecarError, match="TensorRT 10.9.0"):
        check_engine_sidecar(side, "10.10.0", FAKE_GPU, FAKE_CC, et._sha256(lib))

    # fresh: reused without building; the timing cache is not a key
    calls.clear()
    again = et.build_engine(work_dir, profile="1,2,2", log=logs.append)
    assert again["status"] == "up to date" and again["engine_sha256"] == side["engine_sha256"]
    assert "Builder" not in _names(calls) and logs[-1].endswith("is up to date")
    assert et.build_engine(work_dir, profile="1,2,2", force=True)["reasons"] == ["--force"]

    # stale: another profile, another TensorRT, another GPU, another ONNX -> rebuilt, with the reason
    assert et.build_engine(work_dir)["reasons"] == ["T profile (min, opt, max) changed: [1, 2, 2] -> [1, 1, 2]"]
    install(version="10.10.0")
    assert et.build_engine(work_dir)["reasons"] == ["TensorRT version changed: 10.9.0 -> 10.10.0"]
    install(version="10.10.0", name="NVIDIA H100", cc=(9, 0))
    reasons = et.build_engine(work_dir)["reasons"]
    assert reasons == ["GPU changed: Fake GPU 80GB -> NVIDIA H100", "compute capability changed: 8.9 -> 9.0"]
    (work_dir / "model.plugin.onnx").write_bytes((work_dir / "model.plugin.onnx").read_bytes() + b" ")
    assert et.build_engine(work_dir)["reasons"][0].startswith("ONNX graph changed")
    lib.write_bytes(b"rebuilt plugin")
    assert et.build_engine(work_dir)["reasons"][0].startswith("plugin library changed")
    # timing cache read back on the next build
    calls.clear()
    et.build_engine(work_dir, timing_cache=cache_file, force=True)
    assert ("create_timing_cache", FAKE_TIMING) in calls


def test_build_fp16_and_tensorrt_11(fake_env, work_dir):
    calls, install, _ = fake_env
    shutil.copy(work_dir / "model.plugin.onnx", work_dir / "model.plugin.fp16.onnx")
    et.build_engine(work_dir)
    info = et.build_engine(work_dir, fp16=True)  # a second build in this process: the plugin is not reloaded
    assert _names(calls).count("load_library") == 1
    assert info["reasons"] == ["precision changed: fp32 -> fp16"]  # the same bytes here: precision alone
    assert ("parse_from_file", str(work_dir / "model.plugin.fp16.onnx")) in calls
    assert not any(c[0] == "set_flag" for c in calls)
    assert json.loads((work_dir / "model.engine.json").read_text())["precision"] == "fp16"
    # TensorRT 11 without the (deprecated) STRONGLY_TYPED flag: networks are strongly typed anyway
    install(version="11.1.0", strongly_typed_flag=False)
    info = et.build_engine(work_dir, fp16=True)
    assert ("create_network", 0) in calls and info["tensorrt_version"] == "11.1.0"
    assert not any(c[0] == "set_flag" for c in calls)


def test_build_failures_are_one_line(fake_env, work_dir):
    calls, install, _ = fake_env
    install(parse_ok=False)
    with pytest.raises(ExportError, match="could not parse model.plugin.onnx: In node 7") as info:
        et.build_engine(work_dir)
    assert "\n" not in str(info.value)
    install(build_ok=False)
    with pytest.raises(ExportError, match="could not build an engine.*out of memory in tactic") as info:
        et.build_engine(work_dir)
    assert "\n" not in str(info.value) and not (work_dir / "model.engine").exists()
    install(version="8.6.1")
    with pytest.raises(et.TrtUnavailable, match="too old"):
        et.build_engine(work_dir)


def test_cli_build_then_up_to_date(fake_env, work_dir):
    runner = CliRunner()
    first = runner.invoke(export_group, ["trt", str(work_dir), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "built" in first.output and "Fake GPU 80GB (sm 8.9)" in first.output and "T 1/1/2" in first.output
    second = runner.invoke(export_group, ["trt", str(work_dir), "--quiet"])
    assert second.exit_code == 0 and second.output.startswith("up to date:"), second.output


# ----------------------------------------------------------------------------------- real TensorRT
@pytest.mark.trt
def test_real_tensorrt_engine_build(export_dir, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("needs TensorRT (pip install 'tensorrt>=10' on a machine with an NVIDIA GPU)")
    try:
        et.gpu_info(et.import_tensorrt()[1], 0)
    except et.TrtUnavailable as exc:
        pytest.skip(f"needs an NVIDIA GPU: {exc}")
    import autr.plugins as plugins

    try:
        plugins.library_path()
    except plugins.PluginLibraryNotFound as exc:
        pytest.skip(f"needs the MSDA plugin library: {exc}")
    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    info = et.build_engine(d, workspace_gb=1, timing_cache=tmp_path / "timing.cache")
    assert info["status"] == "built" and (d / "model.engine").stat().st_size > 0
    assert et.build_engine(d)["status"] == "up to date"
    from autr.runtime.backends.trt import TrtBackend

    pytest.importorskip("pycuda.driver", reason="running the engine needs pycuda")
    import numpy as np

    be = TrtBackend(d / "model.engine")
    masks, scores = be.infer(np.zeros((1, 3, SIZE, SIZE), np.float32), np.zeros((1, 1, 96, 64), np.float32))
    assert masks.shape == (1, SIZE, SIZE) and scores.shape == (1,) and np.isfinite(masks).all()
    be.close()



def test_two_builds_and_a_run_in_one_process_load_the_plugin_once(fake_env, work_dir, tmp_path):
    """TensorRT refuses to register a library twice: build, rebuild and open the engine in one process."""
    import sys as _sys

    from autr.plugins.trt_loader import load_plugin_library

    calls, install, lib = fake_env
    registry = _sys.modules["tensorrt"].get_plugin_registry()
    et.build_engine(work_dir)
    et.build_engine(work_dir, force=True)
    assert _names(calls).count("load_library") == 1 and _names(calls).count("build_serialized_network") == 2
    assert registry.load_library(str(lib.resolve())) is None  # what a second raw load would have got
    handle = load_plugin_library(_sys.modules["tensorrt"], lib)  # the runtime's path: no new load either
    assert handle is not None and _names(calls).count("load_library") == 2
    other = tmp_path / "other" / "libautr_trt_plugin.so"
    other.parent.mkdir()
    other.write_bytes(b"another build of the plugin")
    with pytest.raises(ExportError, match="already registered in this process.*one plugin library per process"):
        et.build_engine(work_dir, force=True, plugin_library=other)
