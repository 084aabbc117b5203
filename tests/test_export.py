"""autr.export: the plugin and portable ONNX graphs, their sidecar, parity with PyTorch, the CLI.

Most tests share one export of a `tiny` checkpoint at 64x64 made through the CLI (`autr export onnx
... --fp16`); the opset tests export the untrained `tiny` preset; `small` at 224 is marked slow.
"""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

import autr
from autr.checkpoint import file_sha256, save_checkpoint
from autr.export import ExportError, graph, msda
from autr.export import onnx_export as ox
from autr.export import verify
from autr.export.cli import export as export_group

SIZE = 64
TINY_SHAPES = [[8, 8], [4, 4], [2, 2]]  # strides 8, 16, 32 of a 64x64 input


@pytest.fixture(scope="module")
def tiny_model():
    return autr.build_model("tiny", seed=5).eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(tiny_model, path)
    return path


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    """One CLI export of the tiny checkpoint with --fp16: (dir, sidecar, CliRunner result)."""
    out = tmp_path_factory.mktemp("exports") / "tiny"
    result = CliRunner().invoke(export_group, ["onnx", "--checkpoint", str(tiny_ckpt), "--size", str(SIZE),
                                               "--out", str(out), "--fp16", "--quiet"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "model.json").read_text()), result


def load(out, name):
    return onnx.load(str(out / name))


def test_cli_export_writes_both_graphs_and_sidecar(exported):
    out, sidecar, result = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.json", "model.plugin.fp16.onnx", "model.plugin.onnx", "model.portable.fp16.onnx",
                     "model.portable.onnx"]
    assert "plugin" in result.output and "portable" in result.output and "parity" in result.output
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_both_graphs_pass_the_full_checker(exported):
    out, _, _ = exported
    msda.register_onnx_schema()
    for name in ("model.plugin.onnx", "model.portable.onnx", "model.plugin.fp16.onnx", "model.portable.fp16.onnx"):
        model = load(out, name)
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.shape.dim[0].dim_param == "T", (name, v.name)  # T is dynamic
        assert [v.name for v in model.graph.input] == ["frames", "log_mel"]
        assert [v.name for v in model.graph.output] == ["masks", "scores"]


def test_plugin_graph_has_one_msda_node_per_module(exported, tiny_model):
    out, sidecar, _ = exported
    model = load(out, "model.plugin.onnx")
    k = tiny_model.cfg.enc_layers + tiny_model.cfg.dec_layers
    assert k == sum(isinstance(m, autr.transformer.MSDeformAttn) for m in tiny_model.modules())
    nodes = [n for n in model.graph.node if n.op_type == "AutrMSDeformAttn"]
    assert len(nodes) == k == sidecar["msda"]["count"] == sidecar["graphs"]["plugin"]["msda_nodes"]
    assert ("autr", 1) in [(o.domain, o.version) for o in model.opset_import]
    inits = {i.name: i for i in model.graph.initializer}
    model = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    for node in nodes:
        assert node.domain == "autr" and len(node.input) == 5 and len(node.output) == 1
        (attr,) = node.attribute
        assert attr.name == "plugin_version" and attr.type == onnx.AttributeProto.STRING and attr.s == b"1"
        ss, lsi = inits[node.input[1]], inits[node.input[2]]
        assert ss.data_type == lsi.data_type == TensorProto.INT32
        assert numpy_helper.to_array(ss).tolist() == TINY_SHAPES
        assert numpy_helper.to_array(lsi).tolist() == [0, 64, 80]
        assert [ranks.get(node.input[i]) for i in (0, 3, 4)] == [4, 6, 5]  # value, locations, weights
        assert ranks[node.output[0]] == 3
    assert "Identity" not in sidecar["graphs"]["plugin"]["op_counts"]
    assert "Cast" not in sidecar["graphs"]["plugin"]["op_counts"]


def test_portable_graph_is_standard_onnx(exported):
    out, sidecar, _ = exported
    model = load(out, "model.portable.onnx")
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    grid = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid) == sidecar["msda"]["count"] * len(TINY_SHAPES)
    for node in grid:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"mode": b"bilinear", "padding_mode": b"zeros", "align_corners": 0}  # opset 18


@pytest.mark.parametrize("t", [1, 5])
def test_parity_random_clip(exported, tiny_model, t):
    out, _, _ = exported
    frames, log_mel = verify.random_clip(t, SIZE, seed=100 + t)
    ref = verify.run_torch(tiny_model, frames, log_mel)
    for name, plugin in (("model.portable.onnx", False), ("model.plugin.onnx", True)):
        got = verify.run_session(verify.session(out / name, plugin=plugin), frames, log_mel)
        assert got[0].shape == (t, SIZE, SIZE) and got[1].shape == (t,)
        row = verify.agreement(*ref, *got)
        assert row["max_abs"] <= 1e-3 and row["iou_min"] >= 0.999, (name, row)
        assert row["score_max_abs"] <= 1e-3 and row["score_sign_agree"] == 1.0, (name, row)


def test_parity_synthavs_clip(exported, tiny_model):
    out, _, _ = exported
    for t in (1, 5):
        frames, log_mel = verify.synth_clip(SIZE, t, seed=3)
        assert frames.shape == (t, 3, SIZE, SIZE)
        ref = verify.run_torch(tiny_model, frames, log_mel)
        for name, plugin in (("model.portable.onnx", False), ("model.plugin.onnx", True)):
            row = verify.agreement(*ref, *verify.run_session(verify.session(out / name, plugin=plugin),
                                                             frames, log_mel))
            assert row["max_abs"] <= 1e-3 and row["iou_min"] >= 0.999, (name, t, row)


def test_fp16_graph_is_float16_with_fp32_islands(exported):
    out, sidecar, _ = exported
    for kind in ("plugin_fp16", "portable_fp16"):
        model = load(out, sidecar["graphs"][kind]["file"])
        floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
        inits = [i.data_type for i in model.graph.initializer if i.data_type in floats]
        assert inits.count(TensorProto.FLOAT16) > 0.8 * len(inits)  # the weights are float16
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.elem_type == TensorProto.FLOAT  # float32 in and out
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
        types.update({i.name: i.data_type for i in model.graph.initializer})
        types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
        for node in model.graph.node:
            if node.op_type in ("Softmax", "LayerNormalization", "InstanceNormalization", "ArgMax"):
                assert types[node.input[0]] == TensorProto.FLOAT, (kind, node.op_type)
            if node.op_type == "AutrMSDeformAttn":
                assert types[node.input[0]] == TensorProto.FLOAT16
            if node.op_type == "Conv":
                assert types[node.input[0]] == TensorProto.FLOAT16
        # the final logits: the mask head's dynamic convs and the upsampling of the chosen mask
        last_resize = [n for n in model.graph.node if n.op_type == "Resize"][-1]
        last_matmuls = [n for n in model.graph.node if n.op_type == "MatMul"][-3:]
        assert all(types[n.input[0]] == TensorProto.FLOAT for n in [last_resize, *last_matmuls])
        err = sidecar["graphs"][kind]["error_vs_torch_fp32"]
        assert 0 < err["max_abs"] < 0.05 and err["iou_min"] > 0.98
        assert sidecar["graphs"][kind]["bytes"] < 0.6 * sidecar["graphs"]["plugin"]["bytes"]


def test_sidecar_contents(exported, tiny_ckpt, tiny_model):
    out, s, _ = exported
    from autr import preprocess

    assert s["format"] == "autr-onnx-export" and s["toolkit_version"] == autr.__version__
    assert s["config"] == tiny_model.cfg.to_dict()
    assert s["input_size"] == [SIZE, SIZE]
    assert s["frames"] == {"min": 1, "max": 5, "dynamic": True, "axis_name": "T"}
    assert s["opset"] == ox.DEFAULT_OPSET
    assert s["checkpoint"]["source"] == "file" and s["checkpoint"]["sha256"] == file_sha256(tiny_ckpt)
    assert s["weights_sha256"] == ox.weights_digest(tiny_model)
    pre = s["preprocessing"]
    assert pre["frames"]["mean"] == pytest.approx(preprocess.IMAGENET_MEAN.tolist())
    assert pre["frames"]["std"] == pytest.approx(preprocess.IMAGENET_STD.tolist())
    assert pre["audio"]["sample_rate"] == preprocess.SAMPLE_RATE
    assert pre["audio"]["live_window_samples"] == preprocess.LIVE_WINDOW_SAMPLES
    assert s["msda"]["spatial_shapes"] == TINY_SHAPES and s["msda"]["plugin_version"] == "1"
    for kind in ("plugin", "portable", "plugin_fp16", "portable_fp16"):
        rec = s["graphs"][kind]
        assert rec["sha256"] == file_sha256(out / rec["file"]) and rec["bytes"] == (out / rec["file"]).stat().st_size
        assert rec["nodes"]["exported"] > rec["nodes"]["final"] > 0
        assert sum(rec["op_counts"].values()) == rec["nodes"]["final"]
        assert set(rec["nodes"]["simplified"]) == {"constants_folded", "affine_folded_into_linear",
                                                   "transposes_to_channels_last", "initializers_merged"}
    for kind in ("plugin", "portable"):
        assert set(s["parity"][kind]) == {"random T=1", "random T=5"}
        assert all(verify.within_tolerance(r) for r in s["parity"][kind].values())
    for key in ("torch", "onnx", "onnxscript", "onnxruntime"):
        assert s["exporter"][key]


def test_runtime_reads_the_sidecar(exported):
    from autr.runtime.backends import sidecar as sidecar_mod

    _, s, _ = exported
    spec = sidecar_mod.parse_spec(s)
    assert tuple(spec.input_size) == (SIZE, SIZE) and (spec.t_min, spec.t_max) == (1, 5)


def test_cli_verify_prints_the_table(exported, tmp_path):
    out, _, _ = exported
    js = tmp_path / "verify.json"
    result = CliRunner().invoke(export_group, ["verify", str(out), "--runs", "1", "--json", str(js)])
    assert result.exit_code == 0, result.output
    for word in ("random T=1", "random T=5", "SynthAVS T=5", "portable", "plugin", "plugin_fp16", "mask IoU"):
        assert word in result.output
    data = json.loads(js.read_text())
    assert data["ok"] and {r["graph"] for r in data["rows"]} >= {"pytorch", "portable", "plugin", "plugin_fp16"}
    rows = [r for r in data["rows"] if r["graph"] in ("portable", "plugin")]
    assert len(rows) == 6 and all(r["max_abs"] <= 1e-3 and r["iou_min"] >= 0.999 for r in rows)


@pytest.mark.parametrize("opset, mode", [(17, b"bilinear"), (20, b"linear"), (23, b"linear")])
def test_opsets_mean_bilinear(fast_trace, tiny_ckpt, tmp_path, opset, mode):
    """GridSample's bilinear is called "linear" from opset 20 on; both graphs convert and check."""
    out = tmp_path / f"opset{opset}"
    sidecar = ox.export_onnx(out, checkpoint=tiny_ckpt, size=SIZE, opset=opset, frames=2)
    for name in ("model.portable.onnx", "model.plugin.onnx"):
        model = load(out, name)
        assert graph.opset_of(model) == opset and sidecar["opset"] == opset
        graph.check(model, name)
    grid = [n for n in load(out, "model.portable.onnx").graph.node if n.op_type == "GridSample"]
    assert grid and all(onnx.helper.get_attribute_value(a) == mode for n in grid for a in n.attribute
                        if a.name == "mode")
    assert sidecar["frames"]["max"] == 2
    # parity was checked at export (T=1 and T_MAX) for both graphs; check it again from the directory
    result = verify.verify_export(out, runs=1, synth=False)
    assert result["ok"] and {r["clip"] for r in result["rows"]} == {"random T=1", "random T=2"}


def test_verify_rebuilds_an_untrained_preset_and_checks_its_weights():
    model = autr.build_model("tiny", seed=2)
    sidecar = {"checkpoint": {"source": "preset", "preset": "tiny", "seed": 2}, "config": model.cfg.to_dict(),
               "weights_sha256": ox.weights_digest(model)}
    rebuilt = verify.model_for_export(sidecar)
    assert ox.weights_digest(rebuilt) == sidecar["weights_sha256"] and not rebuilt.training
    sidecar["checkpoint"]["seed"] = 3
    with pytest.raises(ExportError, match="weights_sha256 differs"):
        verify.model_for_export(sidecar)


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"opset": 16}, "opset 16 cannot express the portable graph"),
    ({"opset": 99}, "choose 17"),
    ({"frames": 0}, "between 1 and the model's max_frames=5"),
    ({"frames": 6}, "between 1 and the model's max_frames=5"),
    ({"size": 50}, "multiple of 32"),
    ({"checkpoint": "x.safetensors"}, "not both"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ExportError, match=match):
        ox.export_onnx(tmp_path / "out", **{"preset": "tiny", "size": SIZE, **kwargs})
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file, save_file

    from autr.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint

    tensors = load_file(str(tiny_ckpt))
    del tensors["score_head.bias"]
    tensors["score_head.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"autr_config": read_checkpoint(tiny_ckpt)[0].to_json()})
    with pytest.raises(ExportError, match="does not match its own config") as info:
        ox.export_onnx(tmp_path / "out", checkpoint=bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match="checkpoint not found"):
        ox.export_onnx(tmp_path / "out", checkpoint=tmp_path / "missing.safetensors")
    if not DEFAULT_CHECKPOINT.is_file():
        with pytest.raises(ExportError, match="embedded default model"):
            ox.export_onnx(tmp_path / "out", checkpoint="default")
        with pytest.raises(ExportError, match="embedded default model"):
            ox.export_onnx(tmp_path / "out")  # no checkpoint, no preset: the default
    with pytest.raises(ExportError, match="unknown preset"):
        ox.export_onnx(tmp_path / "out", preset="huge")


def test_unwritable_or_foreign_output(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        ox.export_onnx(afile, preset="tiny", size=SIZE)
    with pytest.raises(ExportError, match="cannot write the export"):
        ox.export_onnx(afile / "sub", preset="tiny", size=SIZE)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("x")
    with pytest.raises(ExportError, match="not an autr ONNX export"):
        ox.export_onnx(foreign, preset="tiny", size=SIZE)
    assert (foreign / "holiday.jpg").read_text() == "x"
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ExportError, match="cannot write the export"):
            ox.export_onnx(locked / "out", preset="tiny", size=SIZE)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    runner = CliRunner()
    for args in (["onnx", "--preset", "tiny", "--size", str(SIZE), "--out", str(tmp_path / "o"), "--opset", "16"],
                 ["onnx", "--preset", "tiny", "--size", str(SIZE), "--out", str(tmp_path / "o"), "--frames", "9"],
                 ["onnx", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")],
                 ["verify", str(tmp_path)]):
        result = runner.invoke(export_group, args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("autr: ")
        assert "Traceback" not in result.output


# ----------------------------------------------------------------------------------- atomic re-export
@pytest.fixture()
def fast_trace(exported, monkeypatch):
    """Re-exports of the tiny checkpoint without tracing again: the traced graph is the fixture's."""
    out, _, _ = exported
    traced = load(out, "model.plugin.onnx")
    tail = {o for n in traced.graph.node[-10:] for o in n.output}  # stands in for the heads' outputs

    def trace(*args, **kwargs):
        copy = onnx.ModelProto()
        copy.CopyFrom(traced)
        return copy, {"exported": 1000, "onnxscript_optimized": 900}, tail

    monkeypatch.setattr(ox, "trace_plugin_graph", trace)
    return out


def _digest(directory):
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def test_reexport_replaces_the_files_together(fast_trace, tiny_ckpt, tmp_path):
    out = tmp_path / "model"
    first = ox.export_onnx(out, checkpoint=tiny_ckpt, size=SIZE, check=False)
    (out / "notes.txt").write_text("kept")  # not ours: survives a re-export
    (out / "model.plugin.fp16.onnx").write_text("stale")  # ours, from an earlier --fp16 export: goes
    before = _digest(out)
    inode = (out / "model.json").stat().st_ino
    second = ox.export_onnx(out, checkpoint=tiny_ckpt, size=SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.plugin.onnx", "model.portable.onnx",
                                                     "notes.txt"]
    assert (out / "notes.txt").read_text() == "kept"
    assert (out / "model.json").stat().st_ino != inode and second["created"] >= first["created"]
    for rec in second["graphs"].values():  # the sidecar describes exactly the files next to it
        assert file_sha256(out / rec["file"]) == rec["sha256"]
    assert before["model.plugin.onnx"] == _digest(out)["model.plugin.onnx"]  # same graph, same bytes
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp / old dirs left


def test_failed_export_leaves_the_old_export_untouched(fast_trace, tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "model"
    ox.export_onnx(out, checkpoint=tiny_ckpt, size=SIZE, check=False)
    before = _digest(out)
    saved = []
    real_save = onnx.save

    def save_then_fail(proto, path, *a, **k):
        real_save(proto, path, *a, **k)
        saved.append(path)
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ox.export_onnx(out, checkpoint=tiny_ckpt, size=SIZE, check=False)
    assert saved  # a model file was half-way written ...
    assert _digest(out) == before  # ... but never next to the old sidecar
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    monkeypatch.setattr(graph, "decompose_msda", lambda *a: (_ for _ in ()).throw(ExportError("boom")))
    with pytest.raises(ExportError, match="boom"):
        ox.export_onnx(tmp_path / "fresh", checkpoint=tiny_ckpt, size=SIZE, check=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_cli_bench_writes_json(fast_trace, tiny_ckpt, tmp_path):
    js = tmp_path / "results" / "export_cpu.json"
    result = CliRunner().invoke(export_group, ["bench", "--checkpoint", str(tiny_ckpt), "--size", str(SIZE),
                                               "--runs", "1", "--warmup", "0", "--threads", "0", "--threads", "1",
                                               "--out", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["preset"] == "tiny" and data["size"] == SIZE and data["export_seconds"] > 0
    assert set(data["cpu_latency"]) == {"default", "1_thread"}
    for rows in data["cpu_latency"].values():
        assert set(rows) == {"1", "5"}
        assert all(r["pytorch_eager_ms"]["median"] > 0 and r["ort_portable_ms"]["median"] > 0 for r in rows.values())
    assert data["graphs"]["plugin"]["msda_nodes"] == 3 and data["graphs"]["portable"]["bytes"] > 0
    assert "speed-up" in result.output and "ORT portable ms" in result.output


# ----------------------------------------------------------------------------------- light imports, slow
def test_export_package_and_cli_import_light():
    code = ("import sys, autr.export, autr.export.cli; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_small_at_224_parity(tmp_path):
    out = tmp_path / "small"
    sidecar = ox.export_onnx(out, preset="small", size=224, check=False)
    assert sidecar["msda"]["count"] == 6
    result = verify.verify_export(out, runs=1)
    assert result["ok"], verify.format_table(result)
    assert {r["clip"] for r in result["rows"]} == {"random T=1", "random T=5", "SynthAVS T=5"}


def test_the_exporter_writes_the_sidecar_where_the_runtime_looks():
    from autr.export.onnx_export import SIDECAR_FILE
    from autr.runtime.backends.sidecar import ONNX_SIDECAR

    assert SIDECAR_FILE == ONNX_SIDECAR
