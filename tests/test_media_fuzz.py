"""A small fuzz corpus of real-world and broken media through `autr stream`, each run as its own process.

The corpus is made here with PyAV (a second or two each, 64x48): mp4 / webm / mkv / mov with AAC, Opus, MP3 and
PCM audio at 8 / 44.1 / 48 kHz in mono, stereo and 5.1; 29.97 fps and variable frame rate; rotated phone-style
clips; audio that starts 2 s late; zero-length audio and video streams; audio-only and video-only files; empty,
random and text files; mp4 / webm / mkv truncated and byte-flipped at several offsets.

Every case runs ``python -m autr.runtime`` as a subprocess (a segfault shows as a negative return code) with a
tiny contract-shaped ONNX graph, and is held to the exit-code contract of runtime/README.md: 0 done, 1 a fault
after the start with the outputs kept, 2 could not start; never a signal; every message one ``autr:`` line,
an error saying what to do; the report's fields sane (``source.video.fps`` within 1 % of the container's average
frame rate as ffprobe reads it, frames conserved).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from test_runtime_helpers import make_tiny_onnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (48, 64)  # h, w of the generated pictures
HINT = re.compile(r"re-encode|--silent-audio|complete copy|another copy|give a video|check the sender")


# ------------------------------------------------------------------------------------------ media
def upright_picture(i: int, h: int, w: int) -> np.ndarray:
    """A picture whose top-left corner holds a white box (the tiny model's mask), the rest dark and varying."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2:, 2] = (i * 9) % 120
    img[2: h // 3, 2: w // 3] = 255
    return img


def make_media(path, seconds: float = 1.0, fps=25, size=SIZE, vcodec: str = "libx264", acodec: str = "aac",
               rate: int = 48000, layout: str = "stereo", rotation: int | None = None, audio_start: float = 0.0,
               video: bool = True, audio: bool = True, n_video: int | None = None, n_audio: int | None = None,
               vfr: bool = False, options: dict | None = None, fmt: str | None = None) -> Path:
    """Write a small clip with PyAV. ``rotation``: the display matrix's counter-clockwise degrees (what a phone
    writes for a portrait clip); the stored picture is then the upright one turned the other way, so a player
    that honours the matrix shows :func:`upright_picture`."""
    import av

    c = av.open(str(path), "w", format=fmt, options=options or {})
    h, w = size
    k = 0 if rotation is None else (rotation // 90) % 4
    sh, sw = (w, h) if k % 2 else (h, w)  # the stored picture's size
    v = a = None
    if video:
        vopts = {"preset": "ultrafast"} if vcodec == "libx264" else {"deadline": "realtime", "cpu-used": "8"}
        v = c.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1001), options=vopts)
        v.width, v.height, v.pix_fmt = sw, sh, "yuv420p"
        if vfr:
            v.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            v.set_display_rotation(rotation)
    if audio:
        a = c.add_stream(acodec, rate=rate, layout=layout)
    nv = int(round(seconds * float(fps))) if n_video is None else n_video
    na = int(round(seconds * rate)) if n_audio is None else n_audio
    if v is not None:
        t = 0.0
        for i in range(nv):
            stored = np.ascontiguousarray(np.rot90(upright_picture(i, h, w), -k))
            f = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if vfr:  # 10 fps for the first half, 30 fps for the second
                f.pts, f.time_base = int(round(t * 1000)), Fraction(1, 1000)
                t += 0.1 if i < nv // 2 else 1 / 30
            else:
                f.pts, f.time_base = i, 1 / Fraction(fps).limit_denominator(1001)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    if a is not None:
        nch = av.AudioLayout(layout).nb_channels
        x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(na) / rate)).astype(np.float32)
        off = int(round(audio_start * rate))
        for s0 in range(0, na, 1024):
            fr = av.AudioFrame.from_ndarray(np.repeat(x[None, s0:s0 + 1024], nch, 0), format="fltp", layout=layout)
            fr.sample_rate, fr.pts, fr.time_base = rate, off + s0, Fraction(1, rate)
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    c.close()
    return Path(path)


def truncated(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def flipped(src: Path, dst: Path, frac: float, n: int = 48, seed: int = 0) -> Path:
    """``n`` bytes from ``frac`` of the file on replaced by random ones."""
    data = bytearray(src.read_bytes())
    at = int(len(data) * frac)
    data[at: at + n] = np.random.default_rng(seed).integers(0, 256, len(data[at: at + n]), dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def ffprobe_rate(path) -> float | None:
    """The container's average video frame rate as FFmpeg's own ffprobe reads it (None: it has none)."""
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=avg_frame_rate",
                        "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=30)
    text = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    try:
        value = float(Fraction(text.strip().rstrip(",")))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


# ------------------------------------------------------------------------------------------ the corpus
def _bases(d: Path) -> dict:
    """The clips the damaged cases start from."""
    return {"mp4": make_media(d / "base.mp4", seconds=2.0, options={"movflags": "faststart"}),
            "moov_end": make_media(d / "moov_end.mp4", seconds=2.0),
            "webm": make_media(d / "vp9_opus.webm", seconds=2.0, vcodec="libvpx-vp9", acodec="libopus", layout="mono"),
            "mkv": make_media(d / "h264_mp3.mkv", seconds=2.0, acodec="libmp3lame", rate=44100, layout="mono")}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


OK, START, FAULT, ANY = {0}, {2}, {1}, {0, 1, 2}
# (name, build(dir, bases) -> path, extra CLI arguments, allowed exit codes, what the last line must say)
CASES = [
    # valid media: run to the end, sane reports
    ("mp4_aac48k_stereo", lambda d, b: b["mp4"], [], OK, None),
    ("webm_vp9_opus48k_mono", lambda d, b: b["webm"], [], OK, None),
    ("mkv_h264_mp3_44k1_mono", lambda d, b: b["mkv"], [], OK, None),
    ("mov_aac", lambda d, b: make_media(d / "clip.mov"), [], OK, None),
    ("mp4_aac8k_mono", lambda d, b: make_media(d / "tel.mp4", rate=8000, layout="mono"), [], OK, None),
    ("mkv_pcm8k_mono", lambda d, b: make_media(d / "pcm8k.mkv", acodec="pcm_s16le", rate=8000, layout="mono"), [], OK,
     None),
    ("mp4_aac_5.1", lambda d, b: make_media(d / "surround.mp4", layout="5.1"), [], OK, None),
    ("mp4_29.97fps", lambda d, b: make_media(d / "ntsc.mp4", fps=Fraction(30000, 1001)), [], OK, None),
    ("mp4_vfr", lambda d, b: make_media(d / "vfr.mp4", seconds=2.0, fps=20, vfr=True), [], OK, None),
    ("mp4_0.3s", lambda d, b: make_media(d / "short.mp4", seconds=0.3), [], OK, None),
    ("mp4_rotated_90", lambda d, b: make_media(d / "rot90.mp4", rotation=90), [], OK, None),
    ("mp4_rotated_270", lambda d, b: make_media(d / "rot270.mp4", rotation=-90), [], OK, None),
    ("mp4_rotated_180", lambda d, b: make_media(d / "rot180.mp4", rotation=180), [], OK, None),
    ("mp4_audio_2s_late", lambda d, b: make_media(d / "late.mp4", seconds=3.0, audio_start=2.0, n_audio=48000), [],
     OK, None),
    ("name_with_spaces_and_unicode", lambda d, b: make_media(d / "clip ü ß.mp4", seconds=0.5), [], OK, None),
    ("video_only_silent_audio", lambda d, b: make_media(d / "mute2.mp4", audio=False), ["--silent-audio"], OK, None),
    # inputs that cannot start: 2, one line saying what to do
    ("audio_only_m4a", lambda d, b: make_media(d / "sound.m4a", video=False, fmt="mp4"), [], START,
     r"no video stream.*give a video file"),
    ("video_only", lambda d, b: make_media(d / "mute.mp4", audio=False), [], START, r"no audio track.*--silent-audio"),
    ("zero_length_video_stream", lambda d, b: make_media(d / "novideo.mkv", n_video=0), [], START,
     r"no picture could be decoded"),
    ("empty_file", lambda d, b: _write(d / "empty.mp4", b""), [], START, r"empty"),
    ("random_bytes", lambda d, b: _write(d / "random.mkv", np.random.default_rng(1).integers(
        0, 256, 30000, dtype=np.uint8).tobytes()), [], START, None),
    ("text_file", lambda d, b: _write(d / "notes.mp4", b"not a video\n" * 100), [], START, None),
    ("mp4_moov_at_end_truncated", lambda d, b: truncated(b["moov_end"], d / "cut_moov.mp4", 0.6), [], START,
     r"truncated"),
    # faults after the start: 1, outputs kept, the place named
    ("zero_length_audio_stream", lambda d, b: make_media(d / "noaudio.mkv", n_audio=0), [], FAULT,
     r"holds no sound.*--silent-audio"),
]
for _frac in (0.3, 0.6, 0.9):
    CASES += [
        (f"mp4_faststart_truncated_{_frac}", lambda d, b, f=_frac: truncated(b["mp4"], d / f"cut_{f}.mp4", f), [],
         FAULT, r"truncated"),
        (f"webm_truncated_{_frac}", lambda d, b, f=_frac: truncated(b["webm"], d / f"cut_{f}.webm", f), [],
         FAULT, r"truncated"),
        (f"mkv_truncated_{_frac}", lambda d, b, f=_frac: truncated(b["mkv"], d / f"cut_{f}.mkv", f), [], FAULT,
         r"truncated"),
    ]
for _frac in (0.01, 0.1, 0.4, 0.8):  # header, early, middle and late damage: anything but a crash
    for _kind in ("mp4", "webm", "mkv"):
        CASES.append((f"{_kind}_flipped_{_frac}",
                      lambda d, b, f=_frac, k=_kind: flipped(b[k], d / f"flip_{f}.{k}", f, seed=int(f * 100)),
                      [], ANY, None))
NAMES = [c[0] for c in CASES]


def _run(path: Path, extra: list, workdir: Path, model: Path) -> dict:
    report, out = workdir / "report.json", workdir / "out.mp4"
    cmd = [sys.executable, "-m", "autr.runtime", "--onnx", str(model), "--input", str(path), "--no-display",
           "--report", str(report), "--out", str(out), "--masks", str(workdir / "masks"), *extra]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=90)
        rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", str(exc.stdout), str(exc.stderr)
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "input": path, "workdir": workdir,
            "report": json.loads(report.read_text()) if report.is_file() else None}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every case, built and run once (two at a time): name -> result."""
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    d = tmp_path_factory.mktemp("fuzz")
    model = make_tiny_onnx(d / "model")
    media = d / "media"
    media.mkdir()
    bases = _bases(media)
    built = [(name, build(media, bases), extra, codes, msg) for name, build, extra, codes, msg in CASES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = []
        for i, (name, path, extra, codes, msg) in enumerate(built):
            (d / f"run{i}").mkdir()
            jobs.append((name, codes, msg, pool.submit(_run, path, extra, d / f"run{i}", model)))
        return {name: dict(job.result(), codes=codes, message=msg) for name, codes, msg, job in jobs}


# ------------------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", NAMES)
def test_fuzz_case_follows_the_contract(corpus, name):
    r = corpus[name]
    rc, err = r["rc"], r["stderr"]
    assert rc != "timeout", f"{name}: hung ({err[-500:]})"
    assert rc >= 0, f"{name}: killed by signal {-rc} ({err[-500:]})"
    assert rc in r["codes"], f"{name}: exit {rc}, expected {sorted(r['codes'])}: {err}"
    assert "Traceback" not in err and "Traceback" not in r["stdout"], err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert all(ln.startswith("autr: ") for ln in lines), f"{name}: stray output on stderr: {err}"
    if rc == 0:
        assert r["stdout"].count("\n") == 1 and " frames in " in r["stdout"]
        if "flipped" in name:  # damage FFmpeg itself notices while decoding is never passed over in silence
            ff = subprocess.run(["ffmpeg", "-v", "error", "-i", str(r["input"]), "-f", "null", "-"],
                                capture_output=True, text=True, timeout=60).stderr
            if "Error while decoding" in ff:
                assert "could not be decoded" in err and "damaged" in err, f"{name}: FFmpeg says {ff[:200]}"
    else:
        last = lines[-1]
        assert HINT.search(last), f"{name}: the error does not say what to do: {last}"
        if r["message"]:
            assert re.search(r["message"], last), f"{name}: {last}"
    rep = r["report"]
    if rc == 2:
        assert rep is None and len(lines) == 1, f"{name}: {err}"  # nothing started, one line, nothing written
        return
    # 0 and 1: the report is written (outputs kept) and sane
    assert rep is not None, f"{name}: no report"
    f = rep["frames"]
    assert f["captured"] == f["output"] + f["dropped"]["total"] + f["discarded_at_stop"] + f["after_duration"]
    if rc == 1:
        assert "kept" in lines[-1] and str(r["workdir"] / "report.json") in lines[-1]
        assert rep["input_fault"] or rep["error"]
    v = rep["source"]["video"]
    assert v["width"] > 0 and v["height"] > 0
    expected = ffprobe_rate(r["input"])
    if expected is not None and f["output"] >= 2:
        assert v["fps"] == pytest.approx(expected, rel=0.01), f"{name}: fps {v['fps']} vs the container's {expected}"
    assert rep["sounding"]["threshold"] == 0.5


# ------------------------------------------------------------------------------------------ specific cases
def _decoded(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("name", ["mp4_rotated_90", "mp4_rotated_270", "mp4_rotated_180"])
def test_rotated_clips_reach_the_model_upright_and_are_written_upright(corpus, name):
    """The portrait phone clip: frames are turned upright (as players show them) before the model, the
    overlay and the masks; the report gives the displayed size and the rotation."""
    import cv2

    r = corpus[name]
    assert r["rc"] == 0, r["stderr"]
    v = r["report"]["source"]["video"]
    h, w = SIZE
    assert (v["height"], v["width"]) == (h, w)
    assert v["rotation"] in (90, 180, 270)
    if v["rotation"] != 180:
        assert (v["coded_height"], v["coded_width"]) == (w, h)
    # the tiny model's mask is the bright box: top-left of the upright picture
    m = cv2.imread(str(r["workdir"] / "masks" / "000003.png"), cv2.IMREAD_GRAYSCALE)
    assert m.shape == (h, w)
    assert m[h // 6, w // 6] == 255 and m[h - 3, w - 3] == 0 and m[h - 3, 3] == 0 and m[3, w - 3] == 0
    # the overlay mp4 is upright too: the same picture (below the HUD) as FFmpeg's own auto-rotating decoder
    frames = _decoded(r["workdir"] / "out.mp4")
    assert frames[0].shape[:2] == (h, w)
    ff = subprocess.run(["ffmpeg", "-v", "error", "-i", str(r["input"]), "-frames:v", "1", "-f", "rawvideo",
                         "-pix_fmt", "rgb24", "-"], capture_output=True, timeout=30).stdout
    ref = np.frombuffer(ff, np.uint8).reshape(h, w, 3)
    lower = slice(h // 2, h)
    assert np.abs(frames[0][lower].astype(int) - ref[lower]).mean() < 12


def test_late_audio_is_reported(corpus):
    r = corpus["mp4_audio_2s_late"]
    assert r["rc"] == 0
    warning = [w for w in r["report"]["warnings"] if "starts" in w]
    assert warning and "after the picture" in warning[0] and "silence" in warning[0]
    assert r["report"]["source"]["audio"]["starts_late_s"] == pytest.approx(2.0, abs=0.1)
    assert "after the picture" in r["stderr"]


def test_odd_rates_and_layouts_are_reported_and_muxed_back(corpus):
    import av

    for name, rate, channels in (("mp4_aac8k_mono", 8000, 1), ("mkv_h264_mp3_44k1_mono", 44100, 1),
                                 ("mp4_aac48k_stereo", 48000, 2), ("mp4_aac_5.1", 48000, 6),
                                 ("webm_vp9_opus48k_mono", 48000, 1)):
        r = corpus[name]
        a = r["report"]["source"]["audio"]
        assert (a["sample_rate"], a["channels"]) == (rate, channels), name
        assert r["report"]["audio"]["seconds_written"] > 0.5, name
        with av.open(str(r["workdir"] / "out.mp4")) as c:
            assert c.streams.audio and c.streams.audio[0].rate == rate, name


def test_audio_only_file_is_one_line_not_a_crash(corpus):
    """The segfault: the no-video message read the container's streams after closing it."""
    r = corpus["audio_only_m4a"]
    assert r["rc"] == 2 and r["stderr"].strip().count("\n") == 0
    assert "it holds: audio" in r["stderr"]


def test_closed_port_is_refused_fast(tmp_path):
    import time

    from test_runtime_helpers import free_port

    model = make_tiny_onnx(tmp_path / "m")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "autr.runtime", "--onnx", str(model), "--input",
                        f"tcp://127.0.0.1:{free_port()}", "--no-display"], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 2 and "connection refused" in r.stderr and "start the sender" in r.stderr
    assert time.monotonic() - t0 < 6
