"""Helpers shared by the runtime tests (media files made with PyAV, a tiny ONNX model + sidecar, a private
PulseAudio server). Holds no tests itself."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

TINY_SIZE = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_picture(i: int, h: int, w: int) -> np.ndarray:
    """An RGB picture whose left half brightness encodes the frame index (survives lossy coding)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (i * 8) % 256
    img[h // 4: 3 * h // 4, w // 2 + 2: w - 2] = (255, 255, 255)  # a bright box: the fake model's "object"
    return img


def make_av_clip(path, seconds: float = 2.0, fps: int = 10, size=(64, 96), audio: str | None = "aac",
                 sample_rate: int = 44100, channels: int = 2, tone_hz: float = 440.0, samples=None,
                 container: str | None = None, faststart: bool = False) -> Path:
    """Write a small video with PyAV.

    audio: "aac" (lossy; ``tone_hz`` sine), "pcm" (pcm_s16le: lossless, ``samples`` int16 or a tone), or None
    (no audio track). The container follows the suffix (mp4 / mkv / mov / ts) unless given.
    """
    import av

    path = Path(path)
    opts = {"movflags": "faststart"} if faststart else {}
    c = av.open(str(path), mode="w", format=container, options=opts)
    h, w = size
    v = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(fps)})
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    a = None
    n_total = int(round(seconds * sample_rate))
    if audio is not None:
        layout = "mono" if channels == 1 else "stereo"
        if audio == "aac":
            a = c.add_stream("aac", rate=sample_rate, layout=layout)
        else:
            a = c.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
        if samples is None:
            t = np.arange(n_total) / sample_rate
            samples = np.round(0.3 * 32767 * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16)
        samples = np.asarray(samples, np.int16)
    n_frames = int(round(seconds * fps))
    pos = 0
    block = 1024
    for i in range(n_frames):
        f = av.VideoFrame.from_ndarray(frame_picture(i, h, w), format="rgb24")
        f.pts = i
        f.time_base = Fraction(1, fps)
        for p in v.encode(f):
            c.mux(p)
        while a is not None and pos < min(n_total, int(round((i + 1) * sample_rate / fps))):
            k = min(block, n_total - pos)
            x = samples[pos:pos + k]
            if audio == "aac":
                xf = (x.astype(np.float32) / 32768.0)
                arr = np.stack([xf] * channels) if channels > 1 else xf[None]
                af = av.AudioFrame.from_ndarray(arr, format="fltp", layout=a.layout.name)
            else:
                arr = np.repeat(x[:, None], channels, axis=1).reshape(1, -1) if channels > 1 else x[None]
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format="s16", layout=a.layout.name)
            af.sample_rate = sample_rate
            af.pts = pos
            af.time_base = Fraction(1, sample_rate)
            for p in a.encode(af):
                c.mux(p)
            pos += k
    for p in v.encode():
        c.mux(p)
    if a is not None:
        for p in a.encode():
            c.mux(p)
    c.close()
    return path


def exporter_sidecar(size: int, t_range=(1, 5), **extra) -> dict:
    """The three keys the runtime reads, in the form `autr export` writes them."""
    from autr.preprocess import parameters

    return {"input_size": [size, size], "frames": {"min": t_range[0], "max": t_range[1]},
            "preprocessing": parameters(), **extra}


def make_tiny_onnx(directory, size: int = TINY_SIZE, t_range=(1, 8), sidecar: dict | None = None,
                   name: str = "model.portable.onnx") -> Path:
    """A tiny graph with the model contract: masks = mean over channels of frames, scores = mean log-mel.

    Writes ``directory/name`` and ``directory/model.json`` (unless ``sidecar`` is False-y dict {}), returns the
    ONNX path.
    """
    import onnx
    from onnx import TensorProto, helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["T", 3, size, size])
    log_mel = helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["T", 1, 96, 64])
    masks = helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["T", size, size])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["T"])
    nodes = [helper.make_node("ReduceMean", ["frames"], ["masks"], axes=[1], keepdims=0),
             helper.make_node("ReduceMean", ["log_mel"], ["scores"], axes=[1, 2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "tiny_autr", [frames, log_mel], [masks, scores])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="autr-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = directory / name
    onnx.save(model, str(path))
    if sidecar is None:
        sidecar = exporter_sidecar(size, t_range, opset=17)
    if sidecar:
        (directory / "model.json").write_text(json.dumps(sidecar))
    return path


def tone_peak_hz(x: np.ndarray, sr: int = 16000) -> float:
    x = np.asarray(x, np.float64) * np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))])


class PulseServer:
    """A private PulseAudio daemon with a null sink ``autr_test`` (16 kHz mono) whose monitor is the default
    source: a virtual microphone that hears whatever is played into the sink."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket = self.root / "native"
        self.proc = None
        self.why_not = None

    @property
    def env(self) -> dict:
        return {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_SINK": "autr_test", "PULSE_SOURCE": "autr_test.monitor"}

    def start(self, timeout: float = 10.0) -> bool:
        exe = shutil.which("pulseaudio")
        if exe is None:
            self.why_not = "pulseaudio is not installed (apt-get install pulseaudio)"
            return False
        env = dict(os.environ, HOME=str(self.root), PULSE_RUNTIME_PATH=str(self.root / "rt"),
                   XDG_RUNTIME_DIR=str(self.root))
        # As root PulseAudio warns ("not intended to be run as root") but runs as a per-user daemon;
        # -n skips default.pa, so only the modules below load; no D-Bus, no shm, no idle exit.
        cmd = [exe, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes",
               "--log-target=stderr", "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
               "-L", "module-null-sink sink_name=autr_test rate=16000 channels=1",
               "-L", "module-always-sink"]
        self.log = open(self.root / "pulse.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.why_not = f"pulseaudio exited: {(self.root / 'pulse.log').read_text()[-300:]}"
                return False
            r = subprocess.run(["pactl", "set-default-source", "autr_test.monitor"], env=dict(os.environ, **self.env),
                               capture_output=True)
            if r.returncode == 0:
                subprocess.run(["pactl", "set-default-sink", "autr_test"], env=dict(os.environ, **self.env),
                               capture_output=True)
                return True
            time.sleep(0.1)
        self.why_not = "pulseaudio did not come up in time"
        self.stop()
        return False

    def play(self, wav_path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "-d", "autr_test", str(wav_path)], env=dict(os.environ, **self.env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def write_wav(path, x: np.ndarray, sr: int = 16000) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)
