"""autr export onnx --int8: static QDQ int8 graphs (portable and plugin), their placement, scales, accuracy
and sidecar record; the precision-accuracy benchmark that scores them with the code of `autr eval`.

One CLI export of the embedded default checkpoint (trained `small`: an untrained model's logits are too flat
for an agreement test to mean anything) at 64x64 with --int8 and two calibration clips; --skip-check leaves
out the fp32 parity and --fp16 the float16 graphs, which tests/test_export.py covers.
"""
import json
import subprocess
import sys
import types

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from autr.checkpoint import file_sha256
from autr.export import ExportError, graph, int8, msda, verify
from autr.export.cli import export as export_group

SIZE = 64
CLIPS = 2
QUANT_OPS = {"Conv", "MatMul", "Gemm"}
IOU_TOLERANCE = 0.80  # int8 vs fp32 mask IoU (mean over frames) on a held-out SynthAVS clip, at 64 x 64
INT8_FILES = ("model.plugin.int8.onnx", "model.portable.int8.onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "default64"
    result = CliRunner().invoke(export_group, [
        "onnx", "--checkpoint", "default", "--size", str(SIZE), "--out", str(out), "--int8",
        "--int8-clips", str(CLIPS), "--skip-check", "--quiet"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "model.json").read_text()), result


def load(out, name):
    return onnx.load(str(out / name))


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model):
    out = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def test_cli_writes_the_int8_graphs(exported):
    out, sidecar, result = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.json", "model.plugin.int8.onnx", "model.plugin.onnx", "model.portable.int8.onnx",
                     "model.portable.onnx"]
    assert "plugin_int8" in result.output and "portable_int8" in result.output
    assert "int8: quantized Conv" in result.output
    # weights in int8: the int8 files are far smaller than the float32 ones
    assert sidecar["graphs"]["portable_int8"]["bytes"] < 0.4 * sidecar["graphs"]["portable"]["bytes"]


def test_int8_graphs_pass_the_full_checker(exported):
    out, _, _ = exported
    msda.register_onnx_schema()
    for name in INT8_FILES:
        model = load(out, name)
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        assert [v.name for v in model.graph.input] == ["frames", "log_mel"]
        assert [v.name for v in model.graph.output] == ["masks", "scores"]
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.elem_type == TensorProto.FLOAT
            assert v.type.tensor_type.shape.dim[0].dim_param == "T"
    assert len(graph.msda_nodes(load(out, "model.plugin.int8.onnx"))) == 6
    portable = load(out, "model.portable.int8.onnx")
    assert {o.domain for o in portable.opset_import} <= {"", "ai.onnx"}


def test_qdq_only_around_conv_matmul_gemm(exported):
    out, _, _ = exported
    for name in INT8_FILES:
        model = load(out, name)
        inits = {i.name for i in model.graph.initializer}
        prod, cons = _producers(model), _consumers(model)
        q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert q and dq
        for node in dq:  # every dequantized tensor feeds Conv / MatMul / Gemm and nothing else
            readers = {c.op_type for c in cons.get(node.output[0], [])}
            assert readers and readers <= QUANT_OPS, (name, node.name, readers)
            assert node.input[0] in inits or prod[node.input[0]].op_type == "QuantizeLinear"
        for node in q:  # every Q goes straight into DQs
            assert {c.op_type for c in cons[node.output[0]]} == {"DequantizeLinear"}
        # nothing on the way into GridSample or AutrMSDeformAttn comes from a Q/DQ, up to the nearest Conv/MatMul/Gemm
        targets = [n for n in model.graph.node if n.op_type in ("GridSample", msda.OP_TYPE)]
        assert len(targets) == (18 if "portable" in name else 6)
        stack, seen = [i for n in targets for i in n.input], set()
        while stack:
            t = stack.pop()
            node = prod.get(t)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), (name, node.name)
            if node.op_type not in QUANT_OPS:
                stack.extend(node.input)
        # and every Conv / MatMul / Gemm reads dequantized inputs (nothing excluded by default)
        dq_out = {n.output[0] for n in dq}
        for node in model.graph.node:
            if node.op_type in QUANT_OPS:
                assert node.input[0] in dq_out and node.input[1] in dq_out, (name, node.name)


def test_zero_points_are_int8_zero_and_weights_per_channel(exported):
    out, _, _ = exported
    model = load(out, "model.portable.int8.onnx")
    inits = {i.name: i for i in model.graph.initializer}
    cons = _consumers(model)
    per_channel = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits[node.input[2]]
        assert zp.data_type == TensorProto.INT8 and not np.any(numpy_helper.to_array(zp)), node.name
        scale = numpy_helper.to_array(inits[node.input[1]])
        assert scale.dtype == np.float32 and np.all(scale > 0)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight
            w = inits[node.input[0]]
            assert w.data_type == TensorProto.INT8
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            assert scale.shape == (w.dims[axis],), node.name  # one scale per output channel
            user = cons[node.output[0]][0]
            want = {"Conv": 0, "MatMul": 1}.get(user.op_type)
            if want is not None:
                assert axis == want, (node.name, user.op_type, axis)
            per_channel += 1
            q = numpy_helper.to_array(w)
            assert q.min() >= -127  # symmetric: -128 is never used
        else:
            assert scale.shape == () or scale.size == 1  # activations: per tensor
    assert per_channel > 100


def test_plugin_and_portable_share_placement_and_scales(exported):
    out, _, _ = exported
    tables = []
    for name in INT8_FILES:
        model = load(out, name)
        inits = {i.name: i for i in model.graph.initializer}
        tables.append({n.input[0]: numpy_helper.to_array(inits[n.input[1]]).tolist()
                       for n in model.graph.node if n.op_type == "QuantizeLinear"})
    assert tables[0] == tables[1] and len(tables[0]) > 50


def _iou_mean(a, b):
    a, b = a > 0, b > 0
    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def test_int8_runs_and_agrees_with_fp32_on_a_synthavs_clip(exported):
    out, _, _ = exported
    frames, log_mel = verify.synth_clip(SIZE, 5, seed=1000)  # not a calibration clip (seed 20000)
    ref = verify.run_session(verify.session(out / "model.portable.onnx"), frames, log_mel)
    got = verify.run_session(verify.session(out / "model.portable.int8.onnx"), frames, log_mel)
    assert got[0].shape == (5, SIZE, SIZE) and got[0].dtype == np.float32
    assert (ref[0] > 0).any()  # a trained model: there is a mask to agree on
    assert _iou_mean(ref[0], got[0]) >= IOU_TOLERANCE
    assert np.array_equal(ref[1] > 0, got[1] > 0)  # the sounding-score decision
    assert not np.allclose(ref[0], got[0], atol=1e-3)  # it really is another computation
    # the plugin int8 graph (MSDA by the PyTorch reference) computes what the portable int8 graph does
    plug = verify.run_session(verify.session(out / "model.plugin.int8.onnx", plugin=True), frames, log_mel)
    assert _iou_mean(got[0], plug[0]) >= 0.98 and np.abs(got[1] - plug[1]).max() < 0.05


def test_sidecar_records_the_quantization(exported):
    out, sidecar, _ = exported
    for kind, name in (("plugin_int8", INT8_FILES[0]), ("portable_int8", INT8_FILES[1])):
        rec = sidecar["graphs"][kind]
        assert rec["file"] == name and rec["sha256"] == file_sha256(out / name)
        q = rec["quantization"]
        assert q["onnxruntime"] == onnxruntime.__version__
        assert q["op_types_to_quantize"] == ["Conv", "MatMul", "Gemm"]
        assert q["float_readers_restored"] > 0  # residual Adds, LayerNorms... that ONNX Runtime had fed a DQ
        model = load(out, name)
        dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        for op, counts in q["quantized_ops"].items():
            nodes = [n for n in model.graph.node if n.op_type == op]
            assert counts["quantized"] == sum(any(i in dq_out for i in n.input) for n in nodes) == len(nodes)
            assert counts["float"] == 0
        assert q["qdq_nodes"]["QuantizeLinear"] == sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
        cal = q["calibration"]
        assert cal["method"] == "minmax" and cal["clips"] == CLIPS and cal["frames"] == CLIPS * 5
        assert cal["seed"] == int8.CALIB_SEED and cal["seed"] not in (0, 1, 1000)
        assert set(q["seconds"]) == {"calibration_data", "calibrate_and_quantize_portable", "quantize_plugin"}
        assert 0 < sum(q["seconds"].values()) <= q["quantize_seconds"]
        err = rec["error_vs_fp32_graph"]
        assert 0 < err["mean_abs"] and err["iou_mean"] >= IOU_TOLERANCE and "val" in err["clips"]
        assert rec["op_counts"]["QuantizeLinear"] == q["qdq_nodes"]["QuantizeLinear"]
    assert "parity" not in sidecar or not any(k.endswith("int8") for k in sidecar["parity"])


def test_cli_bad_int8_input_is_one_line_before_loading(tmp_path):
    runner = CliRunner()
    missing = str(tmp_path / "nope.safetensors")  # never reached: the int8 options are checked first
    for args, words in ((["--int8", "--int8-clips", "0"], "--int8-clips"),
                        (["--int8", "--int8-method", "kl"], "calibration method"),
                        (["--int8", "--int8-exclude", "heads,everything"], "--int8-exclude"),
                        (["--int8-clips", "4"], "need --int8")):
        result = runner.invoke(export_group, ["onnx", "--checkpoint", missing, "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("autr: "), result.output
        assert words in result.output and "nope" not in result.output
    assert not (tmp_path / "o").exists()


def test_excluded_nodes_stay_float(exported):
    out, _, _ = exported
    plugin, portable = load(out, "model.plugin.onnx"), load(out, "model.portable.onnx")
    inits = {i.name for i in plugin.graph.initializer}
    attention = int8.excluded_nodes(plugin, ("attention",))
    assert attention and all(not any(i in inits for i in n.input[:2])
                             for n in plugin.graph.node if n.name in attention)
    near_msda = int8.excluded_nodes(plugin, ("msda-inputs",))
    # sampling offsets and attention weights of each of the 6 MSDA layers, and the decoder's reference points
    assert len(near_msda) == 2 * 6 + 1
    first = int8.excluded_nodes(plugin, ("first-conv",))
    assert first == [next(n.name for n in plugin.graph.node if n.op_type == "Conv")]
    with pytest.raises(ExportError, match="mask / score head"):
        int8.excluded_nodes(plugin, ("heads",))
    plugin_q, portable_q, rec = int8.quantize_graphs(load(out, "model.plugin.onnx"), portable, SIZE, 5, clips=1,
                                                     exclude=("msda-inputs", "first-conv"))
    ops = {n.name: n.op_type for n in plugin.graph.node}
    for op in ("MatMul", "Gemm", "Conv"):
        want = sum(ops[n] == op for n in near_msda + first)
        assert rec["quantized_ops"].get(op, {}).get("float", 0) == want, op
    assert rec["excluded"]["choices"] == ["msda-inputs", "first-conv"]
    assert sorted(rec["excluded"]["nodes"]) == sorted(near_msda + first)
    assert rec["calibration"]["frames"] == 5
    dq_out = {n.output[0] for n in portable_q.graph.node if n.op_type == "DequantizeLinear"}
    for node in portable_q.graph.node:
        if node.name in near_msda + first:
            assert not any(i in dq_out for i in node.input), node.name


def test_precision_accuracy_benchmark_uses_the_eval_code(exported, tmp_path):
    """OrtModel + autr.evaluation score the fp32 graph as `autr eval` scores the PyTorch model."""
    import torch

    from autr.benchmarks import precision_accuracy as pa
    from autr.benchmarks.core import BenchError
    from autr.evaluation import evaluate_synthetic

    out, sidecar, _ = exported
    result = pa.run_precision_accuracy(out, clips=2, graphs="portable,portable_int8", torch_row=True, progress=False)
    rows = {r["graph"]: r for r in result["rows"]}
    assert list(rows) == ["pytorch", "portable", "portable_int8"]
    for r in rows.values():
        assert 0 <= r["miou"] <= 1 and 0 <= r["fscore"] <= 1 and r["n_videos"] == 2 and r["n_frames"] == 10
    assert abs(rows["pytorch"]["miou"] - rows["portable"]["miou"]) < 1e-3
    assert rows["portable_int8"]["delta_vs_fp32"]["miou"] == rows["portable_int8"]["miou"] - rows["portable"]["miou"]
    assert isinstance(rows["portable_int8"]["within_target"], bool)
    assert result["export"]["int8_quantization"]["calibration"]["seed"] == int8.CALIB_SEED
    # the adapter is a drop-in model for evaluate_synthetic
    model = verify.OrtModel(out / "model.portable.onnx", t_max=5)
    assert model.eval().to("cpu") is model
    direct = evaluate_synthetic(model, "s4", 1000, 2, SIZE, "cpu", progress=False)
    assert direct["miou"] == rows["portable"]["miou"] and direct["audio_swap"] == rows["portable"]["audio_swap"]
    with pytest.raises(ExportError, match="T_MAX=2"):
        verify.OrtModel(out / "model.portable.onnx", t_max=2)(torch.zeros(5, 3, SIZE, SIZE), torch.zeros(5, 1, 96, 64))
    # refusals: one line, exit 2
    with pytest.raises(BenchError, match="--fp16"):
        pa.validate_args(out, 10)  # the default graphs include portable_fp16
    with pytest.raises(BenchError, match="--int8"):
        empty = tmp_path / "fp32only"
        empty.mkdir()
        (empty / "model.json").write_text(json.dumps({**sidecar, "graphs": {"portable": sidecar["graphs"]["portable"]}}))
        pa.validate_args(empty, 10, graphs="portable_int8")
    with pytest.raises(BenchError, match="--clips"):
        pa.validate_args(out, 1)
    proc = subprocess.run([sys.executable, "-m", "autr.benchmarks.precision_accuracy", "--export",
                           str(tmp_path / "missing"), "--clips", "5"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "model.json" in proc.stderr


def test_int8_sessions_keep_the_qdq_matmuls_int8(exported):
    """On the CPU provider the int8 graphs run without MatMulAddFusion (it would turn DQ -> MatMul -> Add into a
    float Gemm that dequantizes its weights on every call); the float32 graphs keep it."""
    from autr.runtime import open_backend

    out, _, _ = exported
    q = open_backend("ort", out, threads=1, graph="portable", precision="int8")
    f = open_backend("ort", out, threads=1, graph="portable")
    assert q.describe()["disabled_optimizers"] == ["SkipLayerNormFusion", "MatMulAddFusion"]
    assert f.describe()["disabled_optimizers"] == ["SkipLayerNormFusion"]
    so = onnxruntime.SessionOptions()
    so.optimized_model_filepath = str(out / "optimized.onnx")
    onnxruntime.InferenceSession(str(out / "model.portable.int8.onnx"), so, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=q.describe()["disabled_optimizers"])
    assert "MatMulIntegerToFloat" in {n.op_type for n in onnx.load(str(out / "optimized.onnx")).graph.node}


def test_precision_accuracy_scores_openvino_rows_against_onnx_runtime(exported, monkeypatch):
    """`--openvino fp32,int8[,bf16]`: OpenVINO's CPU rows, scored by the same eval code, compared with ONNX
    Runtime's fp32 graph; without OpenVINO, one line before any model loads."""
    from autr.benchmarks import openvino_runner
    from autr.benchmarks import precision_accuracy as pa
    from autr.benchmarks.core import BenchError

    out, _, _ = exported
    with pytest.raises(BenchError, match="unknown OpenVINO precision"):
        pa.validate_args(out, 2, graphs="portable", openvino="fp32,fp64")

    class CpuWithoutBf16:  # what openvino.Core answers on an AVX2-only CPU
        available_devices = ["CPU"]

        def get_property(self, device, key):
            assert (device, key) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]

    with monkeypatch.context() as m:
        m.setattr(openvino_runner, "_import_openvino", lambda: types.SimpleNamespace(Core=CpuWithoutBf16))
        assert pa.validate_args(out, 2, graphs="portable", openvino="fp32,int8")[-1] == ["fp32", "int8"]
        with pytest.raises(BenchError, match="--openvino bf16: this CPU has no bf16 arithmetic"):
            pa.validate_args(out, 2, graphs="portable", openvino="fp32,bf16")
    if not openvino_runner.available():
        with pytest.raises(BenchError, match="--openvino fp32: openvino"):
            pa.validate_args(out, 2, graphs="portable", openvino="fp32")
        pytest.skip(openvino_runner.why_unavailable())
    with monkeypatch.context() as m:
        m.setattr(openvino_runner, "why_unavailable", lambda: "openvino is not installed: pip install openvino")
        with pytest.raises(BenchError, match="--openvino fp32: openvino is not installed"):
            pa.validate_args(out, 2, graphs="portable", openvino="fp32")
    result = pa.run_precision_accuracy(out, clips=2, graphs="portable", openvino="fp32,int8", progress=False)
    ort_fp32, ov_fp32, ov_int8 = result["rows"]
    assert [r["precision"] for r in result["rows"]] == ["fp32", "fp32", "int8"]
    assert ov_fp32["runtime"].startswith("OpenVINO") and ov_int8["graph"] == "portable_int8"
    assert abs(ov_fp32["delta_vs_fp32"]["miou"]) < 1e-3 and ov_fp32["delta_vs_fp32"]["audio_swap"] == 0
    assert isinstance(ov_int8["within_target"], bool) and "within_target" not in ov_fp32
    assert "| OpenVINO CPU" in pa.format_table({**result, "settings": {"mode": "s4", "seed": 1000, "clips": 2}})
