"""`autr demo`: export once, stream a live synthetic scene through ONNX Runtime, write mp4 + report."""
import json

import pytest
from click.testing import CliRunner

from autr.checkpoint import save_checkpoint
from autr.cli import main
from autr.model import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("av")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=0, image_size=64), path)
    return path


def test_demo_streams_the_scene_and_reuses_its_export(tiny_ckpt, tmp_path):
    runner = CliRunner()
    args = ["demo", "--checkpoint", str(tiny_ckpt), "--seconds", "2", "--fps", "5", "--out", str(tmp_path)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "exporting the model to ONNX once" in res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["frames"]["output"] >= 3
    assert report["backend"]["name"] == "ort" and report["backend"]["input_size"] == [64, 64]
    assert report["source"]["kind"] == "synthetic"
    assert 0.0 <= report["synthetic_gt"]["mean_iou"] <= 1.0
    assert report["demo"]["video_frames"] == report["frames"]["output"]
    assert (tmp_path / "demo.mp4").stat().st_size > 1000
    assert "windows/s" in res.output and "mean IoU with the sounding object" in res.output
    sidecar = json.loads((tmp_path / "model" / "model.json").read_text())
    assert sidecar["input_size"] == [64, 64] and sidecar["frames"]["max"] == 1

    stamp = (tmp_path / "model" / "model.portable.onnx").stat().st_mtime_ns
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "exporting" not in res.output  # same checkpoint: the export is reused
    assert (tmp_path / "model" / "model.portable.onnx").stat().st_mtime_ns == stamp


def test_demo_refuses_bad_arguments_in_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["demo", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["demo", "--seconds", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "must be positive" in res.output
