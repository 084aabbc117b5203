"""autr.runtime sources: media files (PyAV), a network stream served by ffmpeg on loopback, the synthetic
scene, cameras (missing / disappearing), and a virtual microphone (a private PulseAudio null sink)."""
import contextlib
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from autr.preprocess import log_mel_window
from autr.runtime import (DeviceError, LiveSource, MediaSource, MicrophoneSource, NoAudioError, SourceError,
                          StreamRunner, SyntheticSource, WebcamSource)
from autr.runtime.backends.fake import FakeBackend
from autr.runtime.sources.base import Source
from autr.runtime.queues import Closed
from test_runtime_helpers import PulseServer, free_port, make_av_clip, tone_peak_hz, write_wav

SR = 16000


def drain(source, timeout=20.0):
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frames.append(source.frames.get(timeout=0.2))
        except TimeoutError:
            continue
        except Closed:
            break
    return frames


def tone_band(log_mel):
    """The loudest mel band's mean over the window (a pure tone lights up one or two bands)."""
    return float(np.asarray(log_mel).reshape(96, 64).mean(axis=0).max())


class Recorder(FakeBackend):
    """The fake model, keeping every log-mel it was given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.log_mels = []

    def infer(self, frames, log_mel):
        self.log_mels.append(log_mel.copy())
        return super().infer(frames, log_mel)


# ------------------------------------------------------------------------------------------ media files

@pytest.fixture(scope="module")
def aac_clip(tmp_path_factory):
    return make_av_clip(tmp_path_factory.mktemp("media") / "tone.mp4", seconds=2.0, fps=10, audio="aac",
                        sample_rate=44100, channels=2, tone_hz=1000.0)


def test_media_file_frames_and_audio_resampled_to_16k_mono(aac_clip):
    src = MediaSource(aac_clip)
    src.start()
    frames = drain(src)
    src.stop()
    assert len(frames) == 20 and src.end_reason == "end of input" and src.fault is None
    assert [f.index for f in frames] == list(range(20))
    np.testing.assert_allclose([f.t for f in frames], np.arange(20) / 10, atol=1e-6)
    assert frames[0].image.shape == (64, 96, 3) and frames[0].image.dtype == np.uint8
    assert not src.live and src.frames.dropped == 0
    ring = src.audio
    assert ring.sample_rate == SR and ring.channels == 1 and ring.finished
    assert ring.written / SR == pytest.approx(2.0, abs=0.1)
    w = ring.window_ending_at(1.5)
    assert abs(tone_peak_hz(w) - 1000.0) < 5
    assert 0.25 < np.abs(w).max() < 0.35  # stereo averaged, not summed
    desc = src.describe()
    assert desc["audio"]["sample_rate"] == 44100 and desc["audio"]["channels"] == 2


class _SlowCapture(Source):
    """A capture thread that keeps using its device for ``busy`` seconds after being told to stop."""

    def __init__(self, busy):
        super().__init__(live=True)
        self.busy = busy
        self.in_use = False
        self.closes = []

    def _workers(self):
        return [(self._run, "capture")]

    def _run(self):
        self.in_use = True
        self._stop.wait()
        time.sleep(self.busy)
        self.in_use = False

    def _close(self):
        self.closes.append(("in use" if self.in_use else "idle", threading.current_thread().name))
        time.sleep(0.05)


def test_concurrent_stops_release_the_input_once_and_only_when_idle():
    """The pipeline stops its source from two threads at once (duration reached + shutdown): the input is
    released exactly once, after the capture thread has left it -- closing a PyAV container under a reading
    thread crashed the interpreter."""
    src = _SlowCapture(busy=0.3).start()
    stoppers = [threading.Thread(target=src.stop) for _ in range(4)]
    for th in stoppers:
        th.start()
    for th in stoppers:
        th.join(10)
    assert [c[0] for c in src.closes] == ["idle"]
    # a capture thread still busy when stop() gives up waiting releases the input itself, on its way out
    src = _SlowCapture(busy=0.6).start()
    src.stop(timeout=0.1)
    assert src.closes == []
    deadline = time.monotonic() + 5
    while not src.closes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert src.closes == [("idle", "autr-source-capture")]
    src.stop()
    assert len(src.closes) == 1


def test_media_source_stopped_from_many_threads_mid_decode(aac_clip):
    for _ in range(5):
        src = MediaSource(aac_clip)
        src.start()
        src.frames.get(timeout=10)
        stoppers = [threading.Thread(target=src.stop) for _ in range(3)]
        for th in stoppers:
            th.start()
        for th in stoppers:
            th.join(10)
        assert src._closed and not any(th.is_alive() for th in src._threads)


def test_pipeline_windows_align_with_frame_timestamps(tmp_path):
    """Lossless 16 kHz audio of known samples: every frame's log-mel is exactly that of the 15600 samples
    that end at its time stamp."""
    rng = np.random.default_rng(0)
    samples = rng.integers(-20000, 20000, 3 * SR).astype(np.int16)
    clip = make_av_clip(tmp_path / "pcm.mkv", seconds=3.0, fps=8, audio="pcm", sample_rate=SR, channels=1,
                        samples=samples)
    x = samples.astype(np.float64) / 32768.0
    src = MediaSource(clip)
    be = Recorder(input_size=(32, 32))
    rep = StreamRunner(src, be, render=False, warmup=False).run()
    assert rep["error"] is None and rep["frames"]["output"] == 24 and rep["frames"]["dropped"]["total"] == 0
    for i, lm in enumerate(be.log_mels):
        end = int(round(i / 8 * SR))
        want = np.concatenate([np.zeros(max(0, 15600 - end)), x[max(0, end - 15600):end]])
        np.testing.assert_allclose(lm[0], log_mel_window(want), atol=1e-4)


def test_realtime_file_is_paced_to_its_timestamps(aac_clip):
    src = MediaSource(aac_clip, realtime=True)
    t0 = time.monotonic()
    src.start()
    frames = drain(src)
    took = time.monotonic() - t0
    src.stop()
    assert src.live and 1.8 < took < 3.5
    caps = np.array([f.t_capture for f in frames])
    ts = np.array([f.t for f in frames])
    # frames were released on the file's clock (relative to the first one), within scheduling noise
    assert np.abs((caps - caps[0]) - (ts - ts[0])).max() < 0.15


def test_file_without_audio_is_a_clear_error_unless_silent_audio(tmp_path):
    clip = make_av_clip(tmp_path / "mute.mp4", seconds=1.0, audio=None)
    with pytest.raises(NoAudioError, match="no audio track.*--silent-audio"):
        MediaSource(clip).start()
    src = MediaSource(clip, silent_audio=True)
    rep = StreamRunner(src, FakeBackend(input_size=(32, 32)), render=False).run()
    assert rep["error"] is None and rep["frames"]["output"] == 10 and rep["audio"]["silent"] is True


def test_missing_empty_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        MediaSource(tmp_path / "nope.mp4").start()
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        MediaSource(tmp_path / "empty.mp4").start()
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError) as err:
        MediaSource(tmp_path / "junk.mp4").start()
    assert "\n" not in str(err.value) and "junk.mp4" in str(err.value)


def test_truncated_file_stops_cleanly_and_says_where(tmp_path, aac_clip):
    # an mp4 whose index (moov) sits at the end: cut short, it cannot be opened at all
    data = aac_clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        MediaSource(tmp_path / "cut.mp4").start()
    # a faststart mp4 / an MPEG-TS cut in the middle: frames up to the cut, then a clean stop saying where
    for name, kw in (("fast.mp4", {"faststart": True}), ("clip.ts", {})):
        full = make_av_clip(tmp_path / name, seconds=4.0, fps=10, **kw)
        data = full.read_bytes()
        cut = tmp_path / ("cut_" + name)
        cut.write_bytes(data[: int(len(data) * 0.5)])
        src = MediaSource(cut)
        rep = StreamRunner(src, FakeBackend(input_size=(32, 32)), render=False).run()
        assert rep["error"] is None
        assert 5 <= rep["frames"]["output"] < 40
        if name.endswith(".mp4"):  # the header knows the real duration: the cut is reported with its place
            assert rep["input_fault"] and "truncated" in rep["input_fault"] and " s (frame " in rep["input_fault"]


# ------------------------------------------------------------------------------------------ network

@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_network_stream_served_by_ffmpeg_on_loopback(tmp_path, aac_clip):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(aac_clip), "-c", "copy",
                               "-f", "mpegts", f"{url}?listen=1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        src = MediaSource(url, open_timeout=10, read_timeout=5)
        assert src.network and src.live
        be = Recorder(input_size=(32, 32))
        rep = StreamRunner(src, be, render=False).run()
    finally:
        server.kill()
        server.wait(5)
    assert rep["error"] is None, rep["error"]
    assert rep["source"]["kind"] == "network" and rep["stopped_by"] == "end of stream"
    assert rep["frames"]["output"] >= 10
    assert rep["audio"]["seconds_written"] > 1.5
    assert rep["latency_ms"]["end_to_end"]["p99"] < 1000
    # the stream's 1 kHz tone reached the model: mel energy well above silence
    assert tone_band(be.log_mels[-1]) > log_mel_window(np.zeros(15600)).max() + 3.0


def test_network_stream_that_never_sends_does_not_hang():
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceError, match="cannot open the stream"):
            MediaSource(f"tcp://127.0.0.1:{port}", open_timeout=1.0, read_timeout=1.0).start()
    finally:
        srv.close()
    assert time.monotonic() - t0 < 15


def test_unreachable_network_stream_gives_up_after_open_timeout():
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="cannot open the stream"):
        MediaSource(f"tcp://127.0.0.1:{free_port()}", open_timeout=1.0).start()
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------------------ synthetic scene

def test_synthetic_scene_is_live_with_realtime_audio():
    src = SyntheticSource(fps=20, size=64, seed=3)
    src.start()
    frames = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.2:
        try:
            frames.append(src.frames.get(timeout=0.2))
        except TimeoutError:
            pass
    src.stop()
    assert 15 <= len(frames) <= 27
    assert frames[0].gt is not None and frames[0].image.shape == (64, 64, 3)
    ring = src.audio
    # audio arrives as it "happens": the newest sample is never ahead of the wall clock
    assert ring.end_time() <= time.monotonic() + 1e-3
    assert ring.written / SR == pytest.approx(time.monotonic() - src.origin, abs=0.2)
    # a frame's window ends at its time stamp: the audio written for that time is the clip's own
    f = frames[-5]  # (the newest frames' last audio block may still have been "in the air" when we stopped)
    from autr.synth import make_clip

    clip = make_clip(np.random.default_rng([3, 0]), mode="s4", size=64)
    end = int(round((f.t - src.origin) * SR))
    np.testing.assert_array_equal(ring.window_ending_at(f.t)[-1000:], clip.wav[end - 1000:end])


def test_synthetic_scene_loops_clips():
    src = SyntheticSource(fps=4, size=32, realtime=False, clips=3)
    src.start()
    frames = drain(src)
    src.stop()
    assert len(frames) == 60 and {f.meta["clip"] for f in frames} == {0, 1, 2}
    assert src.end_reason == "end of scene"
    assert src.audio.written >= 14.75 * SR  # audio up to (and a block past) the last frame at 14.75 s


# ------------------------------------------------------------------------------------------ camera

def test_missing_camera_is_a_clear_error():
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="camera 97 could not be opened"):
        WebcamSource(97).start()
    assert time.monotonic() - t0 < 10


class FakeCapture:
    """A camera that delivers `frames` pictures, then fails reads (unplugged)."""

    opened = 0

    def __init__(self, frames=5, works=True):
        FakeCapture.opened += 1
        self.left, self.works = frames, works

    def isOpened(self):
        return self.works

    def read(self):
        time.sleep(0.005)
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((24, 32, 3), np.uint8)

    def release(self):
        pass


def test_camera_that_disappears_reconnects_then_fails_cleanly():
    FakeCapture.opened = 0
    calls = []

    def factory(index):
        calls.append(index)
        return FakeCapture(frames=5, works=len(calls) <= 2)  # comes back once, then is gone for good

    src = WebcamSource(0, capture_factory=factory, reconnect_attempts=3, reconnect_interval=0.05, read_failures=3)
    t0 = time.monotonic()
    src.start()
    frames = drain(src, timeout=10)
    assert time.monotonic() - t0 < 5
    src.stop()
    assert src.captured == 10  # 5 frames, reconnect, 5 more
    assert isinstance(src.error, DeviceError) and "did not come back after 3 reconnect attempt(s)" in str(src.error)
    assert any("came back" in w for w in src.warnings)
    assert frames and frames[-1].image.shape == (24, 32, 3)


def test_camera_source_keeps_only_the_newest_frame():
    src = WebcamSource(0, capture_factory=lambda i: FakeCapture(frames=200), read_failures=1, reconnect_attempts=0)
    src.start()
    time.sleep(0.5)  # nobody reads: the one-slot queue keeps replacing its frame
    f = src.frames.get(timeout=1)
    src.stop()
    assert src.frames.dropped > 20 and f.index > 20


# ------------------------------------------------------------------------------------------ microphone

@contextlib.contextmanager
def running_pulse(where):
    """A private PulseAudio server with a null sink, its environment set for sounddevice; skips if it cannot run."""
    if shutil.which("pactl") is None or shutil.which("paplay") is None:
        pytest.skip("pulseaudio-utils (pactl, paplay) are not installed")
    server = PulseServer(where)
    if not server.start():
        pytest.skip(f"PulseAudio cannot run here: {server.why_not}")
    mp = pytest.MonkeyPatch()
    for k, v in server.env.items():
        mp.setenv(k, v)
    try:
        yield server
    finally:
        mp.undo()
        server.stop()


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    with running_pulse(tmp_path_factory.mktemp("pulse")) as server:
        yield server


def _pulse_device():
    import sounddevice as sd

    sd._terminate()  # rescan: PortAudio lists the ALSA 'pulse' device only while a server answers
    sd._initialize()
    try:
        return sd.query_devices("pulse", kind="input")["index"]
    except Exception:
        pytest.skip("PortAudio has no 'pulse' ALSA device here (libasound2-plugins missing)")


@pytest.mark.parametrize("rate,channels", [(16000, None), (48000, 1)])
def test_virtual_microphone_hears_a_tone(pulse, tmp_path, rate, channels):
    """16 kHz stereo (averaged on read), and 48 kHz mono (resampled to 16 kHz on read, as for a device
    that cannot do 16 kHz)."""
    dev = _pulse_device()
    t = np.arange(6 * SR) / SR
    tone = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t))
    mic = MicrophoneSource(dev, samplerate=rate, channels=channels)
    mic.start()
    player = pulse.play(tone)
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and (mic.audio.written < 2.5 * mic.audio.sample_rate):
            time.sleep(0.1)
        time.sleep(0.3)
        end = mic.audio.end_time()
        w = mic.audio.window_ending_at(end)
    finally:
        player.kill()
        mic.stop()
    assert mic.rate == rate and mic.callbacks > 10 and mic.error is None
    assert mic.audio.channels == (channels or 2) and w.shape == (15600,)
    assert abs(end - time.monotonic()) < 1.0  # stamped on the monotonic clock
    assert np.abs(w).max() > 0.2
    assert abs(tone_peak_hz(w) - 1000.0) < 5
    assert mic.audio.overruns == 0


def test_virtual_microphone_feeds_the_pipeline(pulse, tmp_path):
    dev = _pulse_device()
    t = np.arange(8 * SR) / SR
    tone = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t))
    video = SyntheticSource(fps=10, size=32, audio=False)
    src = LiveSource(video, MicrophoneSource(dev))
    player = pulse.play(tone)
    be = Recorder(input_size=(32, 32))
    try:
        rep = StreamRunner(src, be, duration=4.0, render=False).run()
    finally:
        player.kill()
    assert rep["error"] is None and rep["frames"]["output"] >= 20
    assert rep["source"]["audio"]["sample_rate"] == 16000
    silence = log_mel_window(np.zeros(15600)).max()
    assert tone_band(be.log_mels[-1]) > silence + 3.0  # the tone made it through mic -> ring -> log-mel
    assert rep["audio"]["overruns"] == 0


def test_microphone_that_disappears_fails_without_hanging(tmp_path):
    with running_pulse(tmp_path / "pa") as server:
        dev = _pulse_device()
        mic = MicrophoneSource(dev, stall_timeout=1.0, reconnect_attempts=2, reconnect_interval=0.2)
        video = SyntheticSource(fps=10, size=32, audio=False)
        src = LiveSource(video, mic)
        results = {}

        def killer():
            while mic.callbacks < 5:
                time.sleep(0.05)
            server.kill()
            results["killed"] = time.monotonic()

        threading.Thread(target=killer, daemon=True).start()
        t0 = time.monotonic()
        rep = StreamRunner(src, FakeBackend(input_size=(32, 32)), render=False, duration=60).run()
        took = time.monotonic() - t0
    assert "killed" in results and took < 30
    assert rep["error"] and "microphone" in rep["error"] and "is gone" in rep["error"] and "\n" not in rep["error"]
    assert rep["frames"]["output"] > 0


def test_microphone_comes_back_after_the_sound_server_restarts(tmp_path):
    with running_pulse(tmp_path / "pa") as server:
        dev = _pulse_device()
        mic = MicrophoneSource(dev, stall_timeout=1.0, reconnect_attempts=40, reconnect_interval=0.25)
        mic.start()
        try:
            deadline = time.monotonic() + 10
            while mic.callbacks < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.kill()
            while not mic.reconnects and time.monotonic() < deadline + 10:
                time.sleep(0.05)
            assert server.start(), server.why_not
            before = mic.callbacks
            deadline = time.monotonic() + 15
            while mic.callbacks < before + 5 and mic.error is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            mic.stop()
    assert mic.error is None and mic.callbacks >= before + 5
    assert mic.reconnects >= 1 and any("came back" in w for w in mic.warnings)


def test_missing_microphone_is_a_clear_error():
    with pytest.raises(DeviceError, match="not found"):
        MicrophoneSource("no such microphone xyz").start()


def test_live_source_reports_its_own_state_and_its_parts():
    """Camera + microphone as one source: warnings, faults and errors of either part and of the pair itself
    all reach the report (none is dropped on the floor)."""
    video = SyntheticSource(fps=10, size=32, audio=False)
    sound = SyntheticSource(fps=10, size=32, audio=True)
    src = LiveSource(video, sound)
    assert src.audio is sound.audio and src.error is None and src.end_reason is None
    video.warn("camera: frame late")
    sound.warn("microphone: overrun")
    src.warn("pair: clocks drift")
    assert src.warnings == ["pair: clocks drift", "camera: frame late", "microphone: overrun"]
    src.fail(SourceError("pair: lost sync"))
    assert str(src.error) == "pair: lost sync" and src.end_reason == "error: pair: lost sync"
    assert src.frames.closed  # the stream ends with it
    sound.fail(DeviceError("microphone is gone"))
    assert src.end_reason == "error: microphone is gone"
