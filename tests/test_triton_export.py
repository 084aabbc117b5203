"""`autr export triton`: the model repository, every config.pbtxt parsed with Triton's own schema (tritonclient's
model_config_pb2 + protobuf text_format), the sidecar beside each model, and one-line refusals."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from test_runtime_helpers import exporter_sidecar, make_tiny_onnx


def _has_triton_client() -> bool:
    try:
        return importlib.util.find_spec("tritonclient.grpc") is not None
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(not _has_triton_client(),
                                reason="tritonclient[grpc] is not installed (pip install -e '.[serve]'): its "
                                       "model_config_pb2 is the schema every config.pbtxt is checked against")


def _parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cmd(*args):
    from autr.export.cli import export

    return CliRunner().invoke(export, ["triton", *map(str, args)])


def _fp16_graph(path, size):
    """A contract-shaped graph whose inputs and outputs are float16 (what Triton must be told: TYPE_FP16)."""
    import onnx
    from onnx import TensorProto, helper

    f = helper.make_tensor_value_info("frames", TensorProto.FLOAT16, ["T", 3, size, size])
    m = helper.make_tensor_value_info("log_mel", TensorProto.FLOAT16, ["T", 1, 96, 64])
    masks = helper.make_tensor_value_info("masks", TensorProto.FLOAT16, ["T", size, size])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT16, ["T"])
    nodes = [helper.make_node("ReduceMean", ["frames"], ["masks"], axes=[1], keepdims=0),
             helper.make_node("ReduceMean", ["log_mel"], ["scores"], axes=[1, 2, 3], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "fp16", [f, m], [masks, scores]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_shipped_export_repository(tmp_path):
    from autr.runtime.backends import shipped_export

    src = shipped_export()
    repo = tmp_path / "repo"
    r = _cmd(src, "--out", repo, "--instances", "2", "--delay-us", "1500")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "autr_onnx"]
    m = repo / "autr_onnx"
    cfg = _parse(m / "config.pbtxt")
    assert cfg.name == "autr_onnx" and cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx"
    assert cfg.max_batch_size == 5  # T is Triton's batch axis: up to the sidecar's T_MAX frames per call
    ins = {t.name: (list(t.dims), t.data_type) for t in cfg.input}
    outs = {t.name: (list(t.dims), t.data_type, list(t.reshape.shape)) for t in cfg.output}
    fp32 = 11  # model_config_pb2.TYPE_FP32
    assert ins == {"frames": ([3, 128, 128], fp32), "log_mel": ([1, 96, 64], fp32)}
    assert outs == {"masks": ([128, 128], fp32, []), "scores": ([1], fp32, [])}
    assert cfg.output[1].HasField("reshape")  # scores is one value per frame: [1] reshaped to a scalar
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 5]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, 2)]  # KIND_CPU
    assert cfg.parameters["autr_sidecar"].string_value == "model.json"
    # the graph and the sidecar travel unchanged
    assert _sha(m / "1" / "model.onnx") == _sha(src / "model.portable.onnx")
    assert json.loads((m / "model.json").read_text()) == json.loads((src / "model.json").read_text())
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository=" in readme and "autr export trt" in readme
    assert "--sidecar REPO/autr_onnx" in readme


def test_repository_graph_batches_frames(tmp_path):
    """What Triton's batcher does -- stack the frames of several requests on T -- gives each request the answer it
    gets alone (the model's frames are independent)."""
    import onnxruntime as ort

    from autr.runtime.backends import shipped_export

    repo = tmp_path / "repo"
    assert _cmd(shipped_export(), "--out", repo).exit_code == 0
    sess = ort.InferenceSession(str(repo / "autr_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 3, 128, 128)).astype(np.float32)
    m = rng.standard_normal((3, 1, 96, 64)).astype(np.float32) - 4
    masks, scores = sess.run(["masks", "scores"], {"frames": f, "log_mel": m})
    for i in range(3):
        mi, si = sess.run(["masks", "scores"], {"frames": f[i:i + 1], "log_mel": m[i:i + 1]})
        np.testing.assert_allclose(mi[0], masks[i], atol=1e-5)
        np.testing.assert_allclose(si[0], scores[i], atol=1e-5)


def test_variants_engine_and_schema(tmp_path):
    d = tmp_path / "export"
    make_tiny_onnx(d, size=32, t_range=(1, 8), sidecar=exporter_sidecar(32, (1, 8), config={"query_select": "frame"}))
    _fp16_graph(d / "model.portable.fp16.onnx", 32)
    make_tiny_onnx(d, size=32, name="model.portable.int8.onnx", sidecar={})
    _fp16_graph(d / "model.plugin.fp16.onnx", 32)
    # an engine is an opaque file to the exporter (Triton's TensorRT backend reads it); its sidecar is what counts
    (d / "model.engine").write_bytes(b"serialized TensorRT plan bytes")
    (d / "model.engine.json").write_text(json.dumps({**exporter_sidecar(32, (1, 6)), "precision": "fp16",
                                                     "t_profile": {"min": 1, "opt": 1, "max": 6},
                                                     "plugin_library_hash": "ab" * 32}))
    repo = tmp_path / "repo"
    r = _cmd(d, "--out", repo, "--name", "seg", "--preferred", "3,8", "--kind", "gpu")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert names == ["seg_onnx", "seg_onnx_fp16", "seg_onnx_int8", "seg_trt"]
    for name in names:  # every config.pbtxt fits Triton's schema, and the sidecar travels with every model
        cfg = _parse(repo / name / "config.pbtxt")
        assert cfg.name == name
        assert (repo / name / "model.json").read_text() == (d / "model.json").read_text()
    fp16 = _parse(repo / "seg_onnx_fp16" / "config.pbtxt")
    assert {t.data_type for t in fp16.input} == {10}  # TYPE_FP16, read from the graph itself
    onnx8 = _parse(repo / "seg_onnx" / "config.pbtxt")
    assert onnx8.max_batch_size == 8 and list(onnx8.dynamic_batching.preferred_batch_size) == [3, 8]
    assert [(g.count, g.kind) for g in onnx8.instance_group] == [(1, 1)]  # KIND_GPU
    trt = _parse(repo / "seg_trt" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    assert trt.max_batch_size == 6  # the engine's profile caps it
    assert list(trt.dynamic_batching.preferred_batch_size) == [3]
    assert {t.data_type for t in trt.input} == {10}  # built from the fp16 plugin graph
    assert list(trt.instance_group[0].gpus) == [0]
    assert (repo / "seg_trt" / "1" / "model.plan").read_bytes() == (d / "model.engine").read_bytes()
    assert (repo / "seg_trt" / "model.plan.json").is_file()
    readme = (repo / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=/path/to/libautr_trt_plugin.so" in readme
    assert "ab" * 32 in readme and "getCreators" in readme and "AUTR_TRT_REGISTER=1 tritonserver" in readme


@pytest.mark.parametrize("config", [{"query_select": "clip"}, {"query_select": "frame", "arch": "tpavi"}])
def test_clip_rule_and_tpavi_get_no_batching(tmp_path, config):
    """Frames of different requests must not share a call where the model looks at a call's frames together."""
    d = tmp_path / "export"
    make_tiny_onnx(d, size=32, t_range=(1, 5), sidecar=exporter_sidecar(32, (1, 5), config=config))
    repo = tmp_path / "repo"
    r = _cmd(d, "--out", repo)
    assert r.exit_code == 0 and "no dynamic batching" in r.output
    cfg = _parse(repo / "autr_onnx" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [-1, 3, 32, 32] and list(cfg.output[1].dims) == [-1]


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    from autr.runtime.backends import shipped_export

    src = shipped_export()
    out = tmp_path / "repo"
    cases = [((tmp_path / "nope", "--out", out), "export directory not found"),
             ((src, "--out", out, "--max-batch", "9"), "--max-batch must be in 1..5"),
             ((src, "--out", out, "--preferred", "2,7"), "--preferred sizes must be in 1..5"),
             ((src, "--out", out, "--preferred", "x"), "--preferred must be comma-separated integers"),
             ((src, "--out", out, "--instances", "0"), "--instances must be >= 1"),
             ((src, "--out", out, "--engine", tmp_path / "missing.engine"), "engine not found"),
             ((src, "--out", out, "--name", "a b"), "--name must be letters")]
    for args, text in cases:
        r = _cmd(*args)
        assert r.exit_code == 2 and text in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    r = _cmd(src, "--out", busy)
    assert r.exit_code == 2 and "not a model repository written by `autr export triton`" in r.output
    assert (busy / "keep.txt").is_file()
    d = tmp_path / "no-sidecar"
    d.mkdir()
    shutil.copy(src / "model.portable.onnx", d)
    r = _cmd(d, "--out", out)
    assert r.exit_code == 2 and "holds no model.json" in r.output
