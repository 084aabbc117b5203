"""The export of the embedded default that ships inside the package (`--onnx default`, `autr demo`), the lean
install it serves (no torch), and the one line a command gives when it needs an extra this install lacks."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autr.checkpoint import file_sha256

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "autr" / "assets" / "autr-small-synth-onnx"
CHECKPOINT = REPO / "autr" / "assets" / "autr-small-synth.safetensors"
# a fresh interpreter in which torch (and timm) cannot be imported: what the lean install looks like
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None; "


def _sidecar() -> dict:
    return json.loads((SHIPPED / "model.json").read_text())


def test_shipped_export_was_made_from_the_shipped_checkpoint():
    """Fails when the checkpoint changed and the export was not remade (`make default-export`)."""
    side = _sidecar()
    assert side["checkpoint"]["sha256"] == file_sha256(CHECKPOINT), "stale shipped export: run `make default-export`"
    assert set(side["graphs"]) == {"plugin", "portable"}
    for kind, record in side["graphs"].items():
        path = SHIPPED / record["file"]
        assert file_sha256(path) == record["sha256"], f"{path.name} is not the file its sidecar describes"
        assert record["weights"] == {"storage": "float16", "compute": "float32",
                                     "initializers": record["weights"]["initializers"]}
        assert path.stat().st_size < 20 * 2 ** 20  # float16 weights: about half of the float32 file
    assert side["frames"] == {"min": 1, "max": 5, "dynamic": True, "axis_name": "T"}


@pytest.mark.parametrize("t", [1, 5])
def test_shipped_export_computes_what_the_checkpoint_does(t):
    """The shipped portable graph (float16-stored weights) against the shipped checkpoint in PyTorch on a
    SynthAVS clip: same masks, logits within float16 storage's rounding."""
    import torch

    from autr.checkpoint import load_model
    from autr.export.verify import synth_clip
    from autr.runtime import open_backend

    model = load_model("default")
    frames, log_mel = synth_clip(model.cfg.image_size, t, seed=1000)
    with torch.no_grad():
        out = model(torch.from_numpy(frames), torch.from_numpy(log_mel))
    ref_masks, ref_scores = out["masks"].numpy(), out["scores"].numpy()
    backend = open_backend("ort", SHIPPED, threads=1, graph="portable", frames=t)
    masks, scores = backend.infer(frames, log_mel)
    assert np.abs(masks - ref_masks).max() < 2e-2 and np.abs(scores - ref_scores).max() < 2e-2
    inter = np.logical_and(masks > 0, ref_masks > 0).sum()
    union = np.logical_or(masks > 0, ref_masks > 0).sum()
    assert union == 0 or inter / union > 0.995


def test_stream_onnx_default_runs_without_torch(tmp_path):
    report = tmp_path / "r.json"
    code = NO_TORCH + "from autr.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "stream", "--onnx", "default", "--synthetic", "--duration", "1.5",
                        "--no-display", "--report", str(report)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(report.read_text())
    assert rep["backend"]["name"] == "ort" and rep["frames"]["output"] >= 3
    assert Path(rep["backend"]["sidecar"]).parent.name == SHIPPED.name


def test_demo_runs_the_shipped_export_without_torch(tmp_path):
    code = NO_TORCH + "from autr.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "demo", "--seconds", "1.5", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "exporting" not in r.stdout + r.stderr and not (tmp_path / "d" / "model").exists()
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    assert Path(rep["demo"]["export"]).name == SHIPPED.name and rep["frames"]["output"] >= 3


@pytest.mark.parametrize("args, extra", [(["eval", "--checkpoint", "default", "--synthetic", "--clips", "2"], "train"),
                                         (["export", "onnx", "--out", "x"], "export"),
                                         (["stream", "--checkpoint", "default", "--synthetic", "--no-display"], "train")])
def test_a_command_that_needs_torch_says_which_extra_in_one_line(args, extra, tmp_path):
    code = NO_TORCH + "from autr.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert f"pip install 'autr[{extra}]'" in r.stderr


@pytest.mark.slow
def test_wheel_installs_lean_and_runs_the_demo(tmp_path):
    """The wheel in a fresh venv with no extras: no torch, under 600 MB, and `autr demo --seconds 3` streams."""
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, timeout=600)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", *map(str, wheels.glob("autr-*.whl"))], check=True,
                   timeout=900)
    r = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "True", "the base install pulled torch"
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    assert size < 600 * 2 ** 20, f"lean venv is {size / 2 ** 20:.0f} MB"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "autr"), "demo", "--seconds", "3", "--out", str(tmp_path / "demo")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert rep["frames"]["output"] >= 10 and SHIPPED.name in rep["demo"]["export"]
    assert str(REPO) not in rep["demo"]["export"], "the demo ran the clone's export, not the installed package's"
