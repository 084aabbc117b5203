"""`autr stream` on bad arguments and bad devices (one line, before any model loads), its start line and live
status line, SIGTERM, and the HUD / report of what the model decided (sounding probability, mask area, the
"nothing sounding" state)."""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from autr.runtime import DeviceError, LiveSource, MaskPngSink, MediaSource, MicrophoneSource, StreamRunner, WebcamSource
from autr.runtime.backends.fake import FakeBackend
from autr.runtime.cli import _StatusLine, stream
from autr.runtime.render import hud_decision
from test_runtime_helpers import make_av_clip, make_tiny_onnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return make_tiny_onnx(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_av_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=2.0, fps=10, tone_hz=1000.0)


def _one_line_exit_2(r, needle):
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output and r.output.count("\n") == 1 and needle in r.output, r.output


# ------------------------------------------------------------------------------------------ arguments
def test_window_outside_the_models_range_is_one_line(onnx_model):
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--synthetic", "--no-display", "--window", "99"])
    _one_line_exit_2(r, "--window 99 is outside that range")
    assert "1..8" in r.output


def test_window_checked_by_the_loaded_model_is_one_line_too(onnx_model, monkeypatch):
    """A model whose T range is known only once loaded (a checkpoint): the same one line, no traceback."""
    import autr.runtime.cli as cli

    monkeypatch.setattr(cli, "_model_t_range", lambda kind, artifact: None)
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--synthetic", "--no-display", "--window", "99"])
    _one_line_exit_2(r, "--window 99 is outside that range")


def test_queue_of_zero_is_one_line(onnx_model):
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--synthetic", "--no-display", "--queue", "0"])
    _one_line_exit_2(r, "--queue must be >= 1")


def test_sounding_threshold_must_be_a_probability(onnx_model):
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--synthetic", "--no-display",
                                    "--sounding-threshold", "1.5"])
    _one_line_exit_2(r, "--sounding-threshold is a probability")


def test_input_is_checked_before_torch_is_imported(tmp_path):
    """--checkpoint: a missing input (or checkpoint) costs no torch import and no model load."""
    missing = tmp_path / "nope.mp4"
    code = textwrap.dedent(f"""
        import sys, time
        from autr.runtime.cli import stream
        for args in (['--checkpoint', 'default', '--input', {str(missing)!r}, '--no-display'],
                     ['--checkpoint', {str(tmp_path / 'none.safetensors')!r}, '--synthetic', '--no-display']):
            t0 = time.monotonic()
            try:
                stream.main(args, standalone_mode=False)
            except SystemExit as exc:
                print('exit', exc.code, round(time.monotonic() - t0, 2))
        print('torch imported' if 'torch' in sys.modules else 'no torch')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split("\n")
    assert lines[0].startswith("exit 2") and lines[1].startswith("exit 2"), r.stdout
    assert lines[2] == "no torch", r.stdout
    assert "input not found" in r.stderr and "checkpoint not found" in r.stderr


def test_list_devices_says_so_when_there_is_none(monkeypatch):
    import autr.runtime.sources as sources

    monkeypatch.setattr(sources, "list_input_devices", lambda: [])
    r = CliRunner().invoke(stream, ["--list-devices"])
    assert r.exit_code == 0 and "no audio input device found" in r.output and "--silent-audio" in r.output


class _NoCamera:
    def isOpened(self):
        return False

    def release(self):
        pass


def test_missing_camera_is_named_first_even_without_a_microphone():
    src = LiveSource(WebcamSource(97, capture_factory=lambda i: _NoCamera()), MicrophoneSource("no such mic xyz"))
    with pytest.raises(DeviceError) as err:
        src.start()
    msg = str(err.value)
    assert msg.startswith("camera 97 could not be opened"), msg
    assert "and no microphone either" in msg and "no such mic xyz" in msg and "\n" not in msg


def test_report_fps_is_read_while_the_container_is_open(clip):
    """describe() after the run (the container closed) reported garbage: -0.42, None, 57807 ..."""
    rep = StreamRunner(MediaSource(clip), FakeBackend(input_size=(32, 32)), render=False).run()
    v = rep["source"]["video"]
    assert v["fps"] == pytest.approx(10.0, rel=0.01) and v["fps_measured"] == pytest.approx(10.0, rel=0.01)
    assert (v["width"], v["height"], v["rotation"]) == (96, 64, 0)


# ------------------------------------------------------------------------------------------ start and status lines
def test_start_line_names_model_input_and_outputs(tmp_path, clip, onnx_model):
    report = tmp_path / "r.json"
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--input", str(clip), "--no-display",
                                    "--report", str(report), "--masks", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    start = [ln for ln in r.stderr.splitlines() if ln.startswith("autr: model ")]
    assert len(start) == 1, r.stderr
    line = start[0]
    for part in ("ort portable fp32", "32x32", "T=1", "cpu", f"input {clip} 96x64 10 fps",
                 "audio aac 44100 Hz 2 ch", f"report {report}", "masks "):
        assert part in line, (part, line)
    assert "\r" not in r.stderr  # no status line when stderr is not a terminal


def test_status_line_on_a_terminal(tmp_path, onnx_model):
    clip = make_av_clip(tmp_path / "c.mp4", seconds=2.0, fps=20)
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a 160-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "autr.runtime", "--onnx", str(onnx_model), "--input", str(clip),
                             "--realtime", "--no-display"], stdout=subprocess.PIPE, stderr=slave, cwd=REPO)
    os.close(slave)
    buf = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        buf += chunk
    proc.wait(60)
    os.close(master)
    out = proc.stdout.read().decode()
    assert proc.returncode == 0, buf[-1000:]
    status = [s for s in buf.decode(errors="replace").split("\r") if "windows/s" in s]
    assert 2 <= len(status) <= 20, buf[-1500:]  # live, and at most a few redraws a second over ~2 s
    assert any("ETA " in s and "%" in s and "[" in s and "dropped " in s and "latency" in s for s in status), status
    assert buf.rstrip().endswith(b"\r\x1b[K")  # cleared before the summary
    assert " frames in " in out


def test_status_line_redraws_at_most_a_few_times_a_second():
    calls = []

    class Runner:
        def progress(self):
            calls.append(1)
            return {"frames": 5, "windows_per_s": 9.0, "dropped": 0, "latency_ms": 12.0, "elapsed": 1.0,
                    "stream_t": 0.5}

    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    sink = Sink()
    status = _StatusLine(Runner(), sink, total_seconds=2.0, interval=0.25)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:
        status(None)  # every output packet
    assert 2 <= len(calls) <= 4
    assert "[#####" in sink.text and " 25%" in sink.text and "ETA 0:03" in sink.text
    status.close()
    assert sink.text.endswith("\r\x1b[K")


# ------------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_is_reported_as_sigterm_and_finalises(tmp_path, onnx_model):
    out, rep, masks = tmp_path / "t.mp4", tmp_path / "t.json", tmp_path / "masks"
    proc = subprocess.Popen([sys.executable, "-m", "autr.runtime", "--onnx", str(onnx_model), "--synthetic",
                             "--fps", "10", "--no-display", "--out", str(out), "--report", str(rep),
                             "--masks", str(masks)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(masks.glob("*.png"))) < 5:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "stopped (SIGTERM)" in stderr and "Ctrl-C" not in stderr and "Traceback" not in stderr
    report = json.loads(rep.read_text())
    assert report["stopped_by"] == "terminated" and report["signal"] == "SIGTERM"
    import av

    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == report["frames"]["output"] >= 3


# ------------------------------------------------------------------------------------------ what the model decided
def test_hud_says_what_the_model_decided():
    assert hud_decision(-3.0, 0.2, 0.5) == "nothing sounding (0.05 < 0.50)"
    assert hud_decision(5.0, 0.0, 0.5) == "sounding 0.99  mask empty"
    assert hud_decision(2.0, 0.125, 0.5) == "sounding 0.88  mask 12.5%"
    assert hud_decision(-3.0, 0.2, 0.0).startswith("sounding 0.05")  # threshold 0: every mask is shown


class _Decided(FakeBackend):
    """Masks from the picture (the bright box), a fixed sounding score."""

    def __init__(self, score, empty_mask=False):
        super().__init__(input_size=(32, 32))
        self.score, self.empty_mask = score, empty_mask

    def infer(self, frames, log_mel):
        masks, _ = super().infer(frames, log_mel)
        if self.empty_mask:
            masks = np.full_like(masks, -5.0)
        return masks, np.full(frames.shape[0], self.score, np.float32)


@pytest.mark.parametrize("score, empty, state", [(-3.0, False, "frames_nothing_sounding"),
                                                  (3.0, False, "frames_sounding"),
                                                  (9.0, True, "frames_sounding_empty_mask")])
def test_nothing_sounding_state_in_overlay_report_and_csv(tmp_path, clip, score, empty, state):
    seen = []
    sink = MaskPngSink(tmp_path / "m")
    runner = StreamRunner(MediaSource(clip), _Decided(score, empty), sinks=[sink], warmup=False,
                          on_packet=seen.append)
    runner.render = True  # draw the overlay although no sink shows it
    rep = runner.run()
    s = rep["sounding"]
    assert s["threshold"] == 0.5 and s[state] == rep["frames"]["output"] == 20
    p = seen[5]
    h, w = p.frame.image.shape[:2]
    y, x = int(h * 0.7), int(w * 0.8)  # inside the bright box (the fake model's mask), below the HUD
    tinted = int(p.rendered[y, x, 2]) > int(p.rendered[y, x, 1]) + 40  # BGR: red over white
    assert tinted == (state == "frames_sounding")  # no mask is painted when nothing sounds
    rows = (tmp_path / "m" / "masks.csv").read_text().splitlines()
    assert rows[0] == "frame,time_s,score,probability,sounding,area,file"
    cols = rows[6].split(",")
    assert cols[4] == ("0" if state == "frames_nothing_sounding" else "1")
    assert (float(cols[5]) > 0.1) == (not empty)


def test_sounding_threshold_reaches_the_report(tmp_path, clip, onnx_model):
    rep = tmp_path / "r.json"
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--input", str(clip), "--no-display",
                                    "--report", str(rep), "--sounding-threshold", "0.2"])
    assert r.exit_code == 0, r.output
    data = json.loads(rep.read_text())
    assert data["sounding"]["threshold"] == 0.2 and data["sounding"]["mask_logit_threshold"] == 0.0
    assert data["sounding"]["mean_probability"] is not None



def test_out_with_a_container_that_cannot_hold_h264_is_one_line_before_the_stream(onnx_model, tmp_path, monkeypatch):
    """`--out x.webm` used to load the model, stream nothing and fail in the muxer; now one line up front,
    and no empty file is left behind."""
    import autr.runtime

    opened = []
    monkeypatch.setattr(autr.runtime, "open_backend", lambda *a, **k: opened.append(a))
    target = tmp_path / "overlay.webm"
    r = CliRunner().invoke(stream, ["--onnx", str(onnx_model), "--synthetic", "--no-display", "--duration", "1",
                                    "--out", str(target)])
    _one_line_exit_2(r, "overlay.mp4")
    assert not target.exists() and not opened
