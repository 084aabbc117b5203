"""autr.runtime pipeline: drop policy under a slow model, the ort backend on a contract-shaped ONNX graph, the
sliding window, outputs (mp4 with audio, mask PNGs, report), `autr stream` errors and Ctrl-C, and the
runtime's independence from torch (in a fresh interpreter)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from autr.runtime import (BackendError, MaskPngSink, MediaSource, Mp4Sink, SidecarError, StreamRunner, SyntheticSource,
                          open_backend, write_report)
from autr.runtime.backends.fake import FakeBackend
from autr.runtime.cli import stream
from test_runtime_helpers import TINY_SIZE, exporter_sidecar, make_av_clip, make_tiny_onnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_av_clip(tmp_path_factory.mktemp("pipe") / "clip.mp4", seconds=3.0, fps=10, tone_hz=1000.0)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return make_tiny_onnx(tmp_path_factory.mktemp("onnx"))


def _conserved(rep):
    f = rep["frames"]
    return f["captured"] == f["output"] + f["dropped"]["total"] + f["discarded_at_stop"] + f["after_duration"]


# ------------------------------------------------------------------------------------------ drop policy

def test_slow_backend_drops_oldest_and_latency_stays_bounded():
    delay = 0.2
    src = SyntheticSource(fps=30, size=64)
    be = FakeBackend(input_size=(32, 32), delay=delay)
    rep = StreamRunner(src, be, duration=3.0, render=False).run()
    lat = rep["latency_ms"]
    assert rep["error"] is None and rep["stopped_by"] == "duration"
    assert rep["frames"]["dropped"]["total"] > 40  # 30 FPS in, ~5 FPS out
    assert 8 <= rep["frames"]["output"] <= 20
    assert lat["inference"]["p50"] == pytest.approx(delay * 1000, rel=0.3)
    # bounded: at most one frame waits for the model while another runs -> e2e < ~2 inference times
    assert lat["end_to_end"]["max"] < 3 * delay * 1000 + 300
    assert lat["capture_age"]["max"] < 1000 / 30 * 2 + 150
    assert _conserved(rep)


def test_file_as_fast_as_possible_drops_nothing(clip):
    src = MediaSource(clip)
    rep = StreamRunner(src, FakeBackend(input_size=(32, 32), delay=0.02), render=False).run()
    assert rep["frames"]["output"] == 30 and rep["frames"]["dropped"]["total"] == 0 and _conserved(rep)


def test_realtime_file_with_slow_backend_drops(clip):
    src = MediaSource(clip, realtime=True)
    rep = StreamRunner(src, FakeBackend(input_size=(32, 32), delay=0.25), render=False).run()
    assert rep["frames"]["dropped"]["total"] > 5 and rep["latency_ms"]["end_to_end"]["max"] < 1000
    assert _conserved(rep)


# ------------------------------------------------------------------------------------------ ort backend

def test_ort_backend_runs_the_contract_graph(onnx_model):
    be = open_backend(artifact=onnx_model.parent)  # an export directory: picks model.portable.onnx + model.json
    assert be.name == "ort" and be.input_size == (TINY_SIZE, TINY_SIZE) and (be.t_min, be.t_max) == (1, 8)
    rng = np.random.default_rng(0)
    fr = rng.standard_normal((3, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    lm = rng.standard_normal((3, 1, 96, 64)).astype(np.float32)
    masks, scores = be.infer(fr, lm)
    np.testing.assert_allclose(masks, fr.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, lm.reshape(3, -1).mean(axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendError, match="outside the model's range"):
        be.infer(np.zeros((9, 3, TINY_SIZE, TINY_SIZE), np.float32), np.zeros((9, 1, 96, 64), np.float32))
    assert be.versions()["onnxruntime"]


def test_ort_backend_refuses_missing_or_foreign_sidecars(tmp_path):
    bare = make_tiny_onnx(tmp_path / "bare", sidecar={})
    with pytest.raises(SidecarError, match="never guesses"):
        open_backend(artifact=bare)
    side = exporter_sidecar(32, (1, 4))
    side["preprocessing"]["audio"]["sample_rate"] = 44100
    other = make_tiny_onnx(tmp_path / "other", sidecar=side)
    with pytest.raises(SidecarError, match="sample_rate=44100"):
        open_backend(artifact=other)
    renamed = make_tiny_onnx(tmp_path / "renamed", name="mine.onnx")
    with pytest.raises(BackendError, match="holds no model.portable.onnx \\(found: mine.onnx\\)"):
        open_backend(artifact=renamed.parent)
    assert open_backend(artifact=renamed).input_size == (TINY_SIZE, TINY_SIZE)  # the file itself is fine
    wrong = make_tiny_onnx(tmp_path / "wrong", sidecar=exporter_sidecar(64, (1, 4)))
    with pytest.raises(BackendError, match="sidecar says input size 64x64"):
        open_backend(artifact=wrong)
    with pytest.raises(BackendError, match="CUDA"):
        if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
            pytest.skip("CUDA EP present")
        open_backend("ort", make_tiny_onnx(tmp_path / "ok"), provider="cuda")


def test_stream_file_through_ort_with_all_outputs(tmp_path, clip, onnx_model):
    src = MediaSource(clip)
    be = open_backend(artifact=onnx_model)
    mp4, masks = tmp_path / "out.mp4", tmp_path / "masks"
    sinks = [Mp4Sink(mp4), MaskPngSink(masks)]
    runner = StreamRunner(src, be, sinks=sinks)
    rep = runner.run()
    report = write_report(rep, tmp_path / "r.json")
    data = json.loads(report.read_text())
    assert data["error"] is None and data["frames"]["output"] == 30 and data["stopped_by"] == "end of input"
    for stage in ("capture_age", "preprocess", "inference", "postprocess", "render", "end_to_end"):
        assert set(data["latency_ms"][stage]) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert data["backend"]["name"] == "ort" and data["versions"]["onnxruntime"] and data["device"]["cpu_cores"]
    assert data["fps"]["output"] > 0 and data["audio"]["overruns"] == 0
    assert "torch" not in data["versions"]
    # the mask PNGs: the fake model's "object" (the bright box) is segmented
    import cv2

    files = sorted(p.name for p in masks.glob("*.png"))
    assert len(files) == 30
    m = cv2.imread(str(masks / files[5]), cv2.IMREAD_GRAYSCALE)
    assert m.shape == (64, 96) and m[32, 70] == 255 and m[2, 10] == 0
    assert (masks / "masks.csv").read_text().count("\n") == 31
    # the mp4: every frame, and the input's own audio muxed back (3 s of the 1 kHz tone, 44.1 kHz stereo)
    import av

    with av.open(str(mp4)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        n_video = sum(1 for _ in c.decode(video=0))
    with av.open(str(mp4)) as c:
        astream = c.streams.audio[0]
        rate, channels = astream.rate, astream.codec_context.layout.nb_channels
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    assert n_video == 30 and rate == 44100 and channels == 2
    assert len(audio) / rate == pytest.approx(3.0, abs=0.15)
    spec = np.abs(np.fft.rfft(audio[rate // 2: rate * 2]))
    assert abs(np.fft.rfftfreq(rate * 2 - rate // 2, 1 / rate)[np.argmax(spec)] - 1000) < 5


def test_sliding_window_of_T_frames(clip, onnx_model):
    seen = []

    class Spy(FakeBackend):
        def infer(self, frames, log_mel):
            seen.append(frames.shape[0])
            return super().infer(frames, log_mel)

    rep = StreamRunner(MediaSource(clip), Spy(input_size=(32, 32), t_max=8), window=3, render=False,
                       warmup=False).run()
    assert rep["window_T"] == 3 and seen[:4] == [1, 2, 3, 3] and len(seen) == 30
    with pytest.raises(Exception, match="outside that range"):
        StreamRunner(MediaSource(clip), open_backend(artifact=onnx_model), window=9)
    # a model that only takes exactly T frames gets the first frame repeated until T are there
    seen.clear()

    class Fixed(Spy):
        def supports(self, t):
            return t == 3

    StreamRunner(MediaSource(clip), Fixed(input_size=(32, 32)), window=3, render=False, warmup=False).run()
    assert set(seen) == {3}


def test_backend_failure_mid_stream_keeps_outputs(tmp_path, clip):
    class Breaks(FakeBackend):
        def infer(self, frames, log_mel):
            if self.calls >= 12:
                raise BackendError("the model fell over")
            return super().infer(frames, log_mel)

    src = MediaSource(clip)
    sink = Mp4Sink(tmp_path / "part.mp4")
    runner = StreamRunner(src, Breaks(input_size=(32, 32)), sinks=[sink], warmup=False)
    rep = runner.run()
    assert rep["error"] == "the model fell over" and rep["stopped_by"] == "error"
    import av

    with av.open(str(tmp_path / "part.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == sink.frames >= 10


# ------------------------------------------------------------------------------------------ CLI

def test_cli_argument_errors_are_one_line():
    r = CliRunner().invoke(stream, ["--synthetic"])
    assert r.exit_code == 2 and "choose one model" in r.output
    r = CliRunner().invoke(stream, ["--onnx", "x.onnx"])
    assert r.exit_code == 2 and "choose one input" in r.output
    r = CliRunner().invoke(stream, ["--onnx", "x.onnx", "--synthetic", "--mic", "pulse"])
    assert r.exit_code == 2 and "--mic goes with --camera" in r.output


def test_cli_bad_inputs_are_one_line_errors(tmp_path, onnx_model):
    mute = make_av_clip(tmp_path / "mute.mp4", seconds=1.0, audio=None)
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--input", str(mute), "--no-display"])
    assert r.exit_code == 2 and "no audio track" in r.output and "--silent-audio" in r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--input", str(mute), "--no-display", "--silent-audio",
                                    "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["audio"]["silent"] is True
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--camera", "97", "--silent-audio", "--no-display"])
    assert r.exit_code == 2 and "camera 97 could not be opened" in r.output and r.output.count("\n") == 1
    r = CliRunner().invoke(stream, ["--onnx", str(tmp_path / "none.onnx"), "--synthetic", "--no-display"])
    assert r.exit_code == 2 and "not found" in r.output
    r = CliRunner().invoke(stream, ["--engine", str(tmp_path / "none.engine"), "--synthetic", "--no-display"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_cli_truncated_input_keeps_outputs_and_says_where(tmp_path, onnx_model):
    full = make_av_clip(tmp_path / "fast.mp4", seconds=4.0, fps=10, faststart=True)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    out, rep = tmp_path / "o.mp4", tmp_path / "r.json"
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--input", str(cut), "--no-display", "--out", str(out),
                                    "--report", str(rep)])
    assert r.exit_code == 1
    assert "truncated" in r.output and "kept" in r.output and str(out) in r.output
    report = json.loads(rep.read_text())
    assert report["input_fault"] and report["frames"]["output"] > 0
    import av

    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == report["frames"]["output"]


def test_cli_without_display_says_so_and_runs(tmp_path, clip, onnx_model, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--input", str(clip), "--duration", "1.0",
                                    "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "no display" in r.output and "running without a window" in r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["stopped_by"] == "duration" and rep["frames"]["output"] == 10
    assert rep["input_fault"] is None and "truncated" not in r.output  # stopping early is not a fault


def test_ctrl_c_finalises_mp4_and_report(tmp_path, onnx_model):
    out, rep, masks = tmp_path / "live.mp4", tmp_path / "live.json", tmp_path / "masks"
    proc = subprocess.Popen([sys.executable, "-m", "autr.runtime", "--onnx", str(onnx_model), "--synthetic",
                             "--fps", "10", "--no-display", "--out", str(out), "--report", str(rep),
                             "--masks", str(masks)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(masks.glob("*.png"))) < 8:  # the stream is running
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped (Ctrl-C)" in stderr
    report = json.loads(rep.read_text())
    assert report["stopped_by"] == "interrupt" and report["frames"]["output"] >= 5
    import av

    with av.open(str(out)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        assert sum(1 for _ in c.decode(video=0)) >= 5


# ------------------------------------------------------------------------------------------ no torch

def test_runtime_runs_without_torch_in_a_fresh_interpreter(tmp_path, clip, onnx_model):
    code = textwrap.dedent(f"""
        import sys, json
        import autr.runtime
        import autr.runtime.backends.ort, autr.runtime.backends.trt, autr.runtime.backends.fake
        import autr.runtime.cli, autr.runtime.sinks, autr.runtime.render
        from autr.runtime import MediaSource, SyntheticSource, StreamRunner, Mp4Sink, open_backend, write_report
        assert 'torch' not in sys.modules, 'import'
        be = open_backend(artifact={str(onnx_model)!r})
        src = MediaSource({str(clip)!r})
        rep = StreamRunner(src, be, sinks=[Mp4Sink({str(tmp_path / 'a.mp4')!r})]).run()
        assert rep['frames']['output'] == 30, rep
        rep = StreamRunner(SyntheticSource(fps=20, size=64), open_backend('fake', input_size=(32, 32)),
                           duration=0.5).run()
        assert rep['frames']['output'] > 3
        autr.runtime.cli.stream.main(['--onnx', {str(onnx_model)!r}, '--input', {str(clip)!r}, '--no-display',
                                      '--report', {str(tmp_path / 'r.json')!r}], standalone_mode=False)
        heavy = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]
        assert not heavy, heavy
        print('ok')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")


def test_cli_module_import_is_light():
    code = ("import sys, autr.runtime.cli; heavy = [m for m in ('torch', 'cv2', 'av', 'onnxruntime', 'sounddevice') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------------------------------------------------ torch backend

def test_torch_backend_loads_a_checkpoint(tmp_path, clip):
    torch = pytest.importorskip("torch")
    import autr
    from autr.checkpoint import save_checkpoint

    model = autr.build_model("tiny", seed=0, image_size=64)
    path = save_checkpoint(model, tmp_path / "tiny.safetensors")
    be = open_backend(artifact=path)
    assert be.name == "torch" and be.input_size == (64, 64) and be.t_max == model.cfg.max_frames
    rep = StreamRunner(MediaSource(clip), be, duration=0.5, render=False).run()
    assert rep["error"] is None and rep["frames"]["output"] == 5 and rep["versions"]["torch"] == torch.__version__
    with pytest.raises(BackendError, match="not found"):
        open_backend(artifact=tmp_path / "missing.safetensors")
