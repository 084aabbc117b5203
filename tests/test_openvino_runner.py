"""autr.benchmarks.openvino_runner: OpenVINO on the portable graph, against ONNX Runtime.

Fast tests use a small hand-built graph that follows the model contract (frames, log_mel -> masks, scores;
T dynamic; a GridSample as in the portable graph) with a sidecar, so the runner's mechanics are checked
without torch. The parity test on a real export of the `tiny` preset is `slow` (the export traces the model).
Without openvino installed, only the "unavailable" tests run; they simulate a missing or broken install.
"""
import builtins
import json
import sys
import types

import numpy as np
import pytest

import autr.preprocess as pp
from autr.benchmarks import openvino_runner as ovr
from autr.runtime.errors import BackendError, BackendUnavailable

SIZE = (24, 32)


# --------------------------------------------------------------------------------------------
# Without openvino
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def no_openvino(monkeypatch):
    """`import openvino` fails as it does where the package is not installed."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_missing_openvino_gives_one_line_reason(no_openvino, tmp_path):
    reason = ovr.why_unavailable()
    assert reason is not None and "\n" not in reason
    assert "openvino is not installed" in reason and "pip install" in reason
    assert ovr.available() is False
    with pytest.raises(BackendUnavailable) as err:
        ovr.OpenVinoRunner(tmp_path)
    assert str(err.value) == reason
    assert ovr.main([str(tmp_path)]) == 2


def test_broken_openvino_install_gives_one_line_reason(monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise OSError("libopenvino.so.2026.4.1: cannot open shared object file:\n No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    reason = ovr.why_unavailable()
    assert reason.startswith("openvino is installed but cannot load") and "\n" not in reason
    assert "libopenvino.so" in reason


def test_openvino_missing_a_dependency_or_without_core(monkeypatch):
    real_import = builtins.__import__

    def import_without_dependency(name, *args, **kwargs):
        if name == "openvino":
            raise ModuleNotFoundError("No module named 'openvino_telemetry'", name="openvino_telemetry")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    monkeypatch.setattr(builtins, "__import__", import_without_dependency)
    reason = ovr.why_unavailable()
    assert "openvino_telemetry is missing" in reason and "\n" not in reason
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setitem(sys.modules, "openvino", types.ModuleType("openvino"))
    assert "has no Core" in ovr.why_unavailable()


# --------------------------------------------------------------------------------------------
# A small graph in the model's contract
# --------------------------------------------------------------------------------------------


def contract_graph(path, h, w, custom_node=False):
    """frames [T,3,H,W], log_mel [T,1,96,64] -> masks [T,H,W], scores [T]: a 3x3 convolution of the frames,
    resampled with GridSample (mode "bilinear" at opset 18, zeros padding, align_corners 0, as in the
    portable graph's MSDA), plus the mean of each frame's log-mel; scores = mean mask logit."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ys, xs = np.meshgrid(np.linspace(-1.1, 1.05, h), np.linspace(-0.97, 1.2, w), indexing="ij")
    grid = np.stack([xs + 0.03 * np.sin(7 * ys), ys], axis=-1)[None].astype(np.float32)  # [1, H, W, 2]
    inits = [numpy_helper.from_array(rng.standard_normal((1, 3, 3, 3)).astype(np.float32) * 0.3, "conv_w"),
             numpy_helper.from_array(np.array([0.1], np.float32), "conv_b"),
             numpy_helper.from_array(grid, "grid0"),
             numpy_helper.from_array(np.array([h, w, 2], np.int64), "hw2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes123"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_t11")]
    nodes = [
        helper.make_node("Conv", ["frames", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["frames"], ["fshape"]),
        helper.make_node("Gather", ["fshape", "zero"], ["t"], axis=0),
        helper.make_node("Concat", ["t", "hw2"], ["grid_shape"], axis=0),
        helper.make_node("Expand", ["grid0", "grid_shape"], ["grid"]),
        helper.make_node("GridSample", ["conv", "grid"], ["sampled"], mode="bilinear", padding_mode="zeros",
                         align_corners=0),
        helper.make_node("Squeeze", ["sampled", "axis1"], ["sq"]),
        helper.make_node("ReduceMean", ["log_mel", "axes123"], ["mel_mean"], keepdims=0),
        helper.make_node("Reshape", ["mel_mean", "shape_t11"], ["mel_t11"]),
        helper.make_node("Add", ["sq", "mel_t11"], ["masks"]),
        helper.make_node("ReduceMean", ["masks", "axes12"], ["scores"], keepdims=0),
    ]
    if custom_node:  # what the TensorRT plugin graph holds
        nodes.append(helper.make_node("AutrMSDeformAttn", ["scores"], ["extra"], domain="autr"))
    graph = helper.make_graph(
        nodes, "contract",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["T", 3, h, w]),
         helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["T", 1, 96, 64])],
        [helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["T", h, w]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["T"])] +
        ([helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["T"])] if custom_node else []),
        initializer=inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("autr", 1)] if custom_node else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))


def write_sidecar(directory, h, w, t_max=3):
    data = {"input_size": [h, w], "frames": {"min": 1, "max": t_max}, "preprocessing": pp.parameters()}
    (directory / "model.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def contract_export(tmp_path_factory):
    directory = tmp_path_factory.mktemp("contract")
    contract_graph(directory / "model.portable.onnx", *SIZE)
    write_sidecar(directory, *SIZE)
    return directory


def inputs(t, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((t, 3, h, w), dtype=np.float32),
            rng.standard_normal((t, 1, 96, 64), dtype=np.float32))


def ort_outputs(path, frames, log_mel):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(sess.run(["masks", "scores"], {"frames": frames, "log_mel": log_mel}))


needs_openvino = pytest.mark.skipif(not ovr.available(), reason=str(ovr.why_unavailable()))


@needs_openvino
def test_runner_equals_onnx_runtime_on_contract_graph(contract_export):
    runner = ovr.OpenVinoRunner(contract_export, threads=1)
    assert runner.input_size == SIZE and (runner.t_min, runner.t_max) == (1, 3)
    assert runner.config["INFERENCE_NUM_THREADS"] == "1" and runner.config["NUM_STREAMS"] == "1"
    assert "LATENCY" in runner.config["PERFORMANCE_HINT"] and "32" in runner.config["INFERENCE_PRECISION_HINT"]
    for t in (1, 3, 2):  # T is dynamic
        frames, log_mel = inputs(t, *SIZE, seed=t)
        masks, scores = runner.infer(frames, log_mel)
        assert masks.shape == (t, *SIZE) and scores.shape == (t,)
        assert masks.dtype == np.float32 and scores.dtype == np.float32
        ref = ort_outputs(contract_export / "model.portable.onnx", frames, log_mel)
        check = ovr.parity(ref, (masks, scores))
        assert check["mask_max_abs_diff"] < 1e-5 and check["score_max_abs_diff"] < 1e-5
        assert check["mask_iou"] > 0.999 and check["sounding_agrees"]
    # the outputs are the caller's: a later call does not overwrite them
    first = runner.infer(*inputs(1, *SIZE, seed=10))
    kept = first[0].copy()
    runner.infer(*inputs(1, *SIZE, seed=11))
    assert np.array_equal(first[0], kept)
    d = runner.describe()
    assert d["name"] == "openvino" and d["config"]["INFERENCE_NUM_THREADS"] == "1"
    assert d["artifact"].endswith("model.portable.onnx")
    assert set(runner.versions()) == {"openvino"}
    runner.close()


@needs_openvino
def test_runner_static_t_and_threads(contract_export):
    runner = ovr.OpenVinoRunner(contract_export / "model.portable.onnx", threads=2, frames=2)
    assert (runner.t_min, runner.t_max) == (2, 2) and runner.config["INFERENCE_NUM_THREADS"] == "2"
    frames, log_mel = inputs(2, *SIZE)
    ref = ort_outputs(contract_export / "model.portable.onnx", frames, log_mel)
    assert ovr.parity(ref, runner.infer(frames, log_mel))["mask_max_abs_diff"] < 1e-5
    with pytest.raises(BackendError, match="outside the model's range"):
        runner.infer(*inputs(1, *SIZE))


@needs_openvino
def test_runner_refuses_bad_inputs_and_arguments(contract_export, tmp_path):
    runner = ovr.OpenVinoRunner(contract_export, threads=1)
    frames, log_mel = inputs(1, *SIZE)
    with pytest.raises(BackendError, match="frames must be"):
        runner.infer(frames[:, :, :-1], log_mel)
    with pytest.raises(BackendError, match="log_mel must be"):
        runner.infer(frames, log_mel[:, :, :50])
    with pytest.raises(BackendError, match="outside the model's range"):
        runner.infer(*inputs(4, *SIZE))
    with pytest.raises(BackendError, match="threads must be"):
        ovr.OpenVinoRunner(contract_export, threads=0)
    with pytest.raises(BackendError, match="unknown precision"):
        ovr.OpenVinoRunner(contract_export, precision="int4")
    with pytest.raises(BackendError, match="outside the export's T range"):
        ovr.OpenVinoRunner(contract_export, frames=7)
    with pytest.raises(BackendError, match="holds no model.portable.onnx"):
        ovr.OpenVinoRunner(tmp_path)
    # a sidecar that disagrees with the graph
    other = tmp_path / "other"
    other.mkdir()
    contract_graph(other / "model.portable.onnx", *SIZE)
    write_sidecar(other, 32, 32)
    with pytest.raises(BackendError, match="sidecar says input size 32x32"):
        ovr.OpenVinoRunner(other)


@needs_openvino
def test_runner_names_the_plugin_graph(tmp_path):
    contract_graph(tmp_path / "model.plugin.onnx", *SIZE, custom_node=True)
    write_sidecar(tmp_path, *SIZE)
    with pytest.raises(BackendError, match="plugin graph"):
        ovr.OpenVinoRunner(tmp_path / "model.plugin.onnx")


@needs_openvino
def test_compare_reports_parity_and_timing(contract_export, capsys, tmp_path):
    result = ovr.compare(contract_export, t=1, threads=(1,), iters=2, warmup=1)
    assert result["parity"]["mask_max_abs_diff"] < 1e-5 and result["parity"]["mask_iou"] > 0.999
    (row,) = result["timing"]
    assert row["threads"] == 1 and row["ort_ms"] > 0 and row["openvino_ms"] > 0
    out = tmp_path / "cmp.json"
    assert ovr.main([str(contract_export), "--threads", "1", "--iters", "2", "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity vs ONNX Runtime" in printed and "ORT / OV" in printed
    assert json.loads(out.read_text())["timing"][0]["threads"] == 1


# --------------------------------------------------------------------------------------------
# A real export
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_openvino
def test_parity_with_onnx_runtime_on_tiny_export(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from autr.export import onnx_export as ox

    out = tmp_path / "tiny"
    ox.export_onnx(out, preset="tiny", size=64, frames=2, check=False)
    from autr.runtime.backends.ort import OrtBackend

    ort_backend = OrtBackend(out / "model.portable.onnx", threads=1)  # the same graph, never the fused one
    for threads in (1, 2):
        runner = ovr.OpenVinoRunner(out, threads=threads)
        for t in (1, 2):
            frames, log_mel = ovr.synth_inputs(64, t, seed=3)
            ref = ort_backend.infer(frames, log_mel)
            got = runner.infer(frames, log_mel)
            check = ovr.parity(ref, got)
            scale = float(np.max(np.abs(ref[0])))
            assert check["mask_max_abs_diff"] <= 1e-4 * max(1.0, scale), check
            assert check["score_max_abs_diff"] <= 1e-4, check
            assert check["mask_iou"] >= 0.995 and check["sounding_agrees"], check
        runner.close()


@needs_openvino
def test_bf16_is_known_before_compiling_and_is_what_openvino_applies(contract_export):
    """bf16 is a hint: OpenVINO computes in bfloat16 only where the CPU has the arithmetic. `why_no_precision`
    says so before any model is compiled (the bench's bf16 row and the accuracy table rely on it), and it agrees
    with the precision the compiled model reports."""
    has_bf16 = any(flag in open("/proc/cpuinfo").read() for flag in ("avx512_bf16", "amx_bf16"))
    assert ovr.why_no_precision("f32") is None and "unknown precision" in ovr.why_no_precision("fp64")
    assert (ovr.why_no_precision("bf16") is None) == has_bf16
    f32 = ovr.OpenVinoRunner(contract_export, threads=1)
    bf16 = ovr.OpenVinoRunner(contract_export, threads=1, precision="bf16")
    assert f32.config["INFERENCE_PRECISION_HINT"] == "f32"
    assert bf16.config["INFERENCE_PRECISION_HINT"] == ("bf16" if has_bf16 else "f32")
    frames, log_mel = inputs(1, *SIZE)
    ref = ort_outputs(contract_export / "model.portable.onnx", frames, log_mel)
    assert ovr.parity(ref, bf16.infer(frames, log_mel))["mask_iou"] > 0.9
