"""autr.runtime core: audio ring buffer and its time axis, streaming resampler, bounded queues, stats,
sidecars, backends' selection and errors, rendering."""
import json
import sys
import threading
import time

import numpy as np
import pytest

from autr.preprocess import LIVE_WINDOW_SAMPLES, log_mel_window, resample
from autr.runtime import AudioRingBuffer, BoundedQueue, Closed, LatencyRecorder
from autr.runtime.errors import BackendError, BackendUnavailable, SidecarError
from autr.runtime.resampling import StreamingResampler
from test_runtime_helpers import exporter_sidecar
from autr.runtime.stats import StageStats

SR = 16000


# ------------------------------------------------------------------------------------------ ring buffer

def _fill(ring, x, t0, block=320, jitter=0.0, rng=None):
    for i in range(0, len(x), block):
        j = 0.0 if (rng is None or i == 0) else float(rng.uniform(-jitter, jitter))  # first block anchors
        ring.write(x[i:i + block], t_first=t0 + i / ring.sample_rate + j)


def test_window_alignment_on_known_timestamps():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 3 * SR).astype(np.float32)
    ring = AudioRingBuffer()
    t0 = 100.0
    _fill(ring, x, t0)
    for k in (15600, 20000, 31999, 48000):
        w = ring.window_ending_at(t0 + k / SR)
        assert w.shape == (LIVE_WINDOW_SAMPLES,) and w.dtype == np.float32
        np.testing.assert_array_equal(w, x[k - 15600:k])
    # the log-mel of that window is exactly what preprocess computes on the same samples
    np.testing.assert_array_equal(log_mel_window(ring.window_ending_at(t0 + 2.0)), log_mel_window(x[2 * SR - 15600:2 * SR]))
    assert ring.end_time() == pytest.approx(t0 + 3.0)


def test_window_zero_padded_at_start_and_after_newest():
    x = np.ones(8000, np.float32)
    ring = AudioRingBuffer()
    ring.write(x, t_first=5.0)
    w = ring.window_ending_at(5.5)  # 0.5 s of audio exists before t
    assert (w[:-8000] == 0).all() and (w[-8000:] == 1).all()
    w = ring.window_ending_at(5.25)
    assert (w[:-4000] == 0).all() and (w[-4000:] == 1).all()
    assert ring.late_reads == 0
    w = ring.window_ending_at(5.75)  # reaches 0.25 s past the newest sample: those read as zeros, counted
    assert (w[-4000:] == 0).all() and (w[-12000:-4000] == 1).all()
    assert ring.late_reads == 1


def test_ring_wraps_and_counts_stale_reads():
    ring = AudioRingBuffer(capacity_seconds=3.0)
    cap = ring.capacity
    x = np.arange(cap * 2 + 1234, dtype=np.float32) / 1e6
    _fill(ring, x, 0.0, block=1000)
    n = ring.written
    assert n == len(x)
    end = n / SR
    np.testing.assert_allclose(ring.window_ending_at(end), x[n - 15600:n])
    ring.window_ending_at(end - 4.0)  # overwritten by now
    assert ring.stale_reads == 1
    np.testing.assert_array_equal(ring.read(n - 10, n), x[n - 10:n])
    assert (ring.read(0, 10) == 0).all()  # overwritten samples read as zeros


def test_jittery_timestamps_keep_the_sample_clock():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 2 * SR).astype(np.float32)
    ring = AudioRingBuffer(resync_tolerance=0.02)
    _fill(ring, x, 10.0, jitter=0.008, rng=rng)
    assert ring.resyncs == 0 and ring.gaps == 0
    np.testing.assert_array_equal(ring.window_ending_at(11.5), x[24000 - 15600:24000])


def test_gap_in_timestamps_is_filled_with_silence_and_counted():
    ring = AudioRingBuffer(gap_threshold=0.1)
    a = np.full(16000, 0.5, np.float32)
    ring.write(a, t_first=0.0)
    ring.write(a, t_first=1.5)  # 0.5 s lost
    assert ring.gaps == 1 and ring.gap_seconds == pytest.approx(0.5)
    w = ring.window_ending_at(2.5)
    assert (w[-16000:] == 0.5).all()
    w = ring.window_ending_at(1.5)
    assert (w[-8000:] == 0).all() and (w[:-8000] == 0.5).all()
    # drift below the gap threshold re-anchors without inserting samples
    ring.write(a, t_first=2.55)
    assert ring.resyncs == 1 and ring.gaps == 1
    assert ring.written == 16000 * 3 + 8000


def test_overflow_flags_are_counted_as_overruns():
    ring = AudioRingBuffer()
    ring.write(np.zeros(320, np.float32), t_first=0.0)
    ring.write(np.zeros(320, np.float32), overflow=True)
    assert ring.overruns == 1 and ring.stats()["overruns"] == 1


def test_stereo_is_averaged_on_read():
    ring = AudioRingBuffer(channels=2)
    x = np.stack([np.full(16000, 0.2, np.float32), np.full(16000, 0.6, np.float32)], axis=1)
    ring.write(x, t_first=0.0)
    np.testing.assert_allclose(ring.window_ending_at(1.0)[-16000:], 0.4, rtol=1e-6)


@pytest.mark.parametrize("rate", [48000, 44100, 22050])
def test_ring_at_device_rate_resamples_windows_like_preprocess(rate):
    rng = np.random.default_rng(rate)
    x = rng.uniform(-0.5, 0.5, int(2.5 * rate)).astype(np.float32)
    ring = AudioRingBuffer(sample_rate=rate, channels=1)
    _fill(ring, x, 3.0, block=441)
    ref = resample(x.astype(np.float64), rate, SR).astype(np.float32)
    for t_rel in (1.0, 1.7, 2.25):
        m = int(round(t_rel * SR))
        np.testing.assert_allclose(ring.window_ending_at(3.0 + t_rel), ref[m - 15600:m], atol=2e-6)


def test_ring_writer_is_cheap_and_thread_safe():
    ring = AudioRingBuffer()
    block = np.ones(160, np.float32)
    stop = threading.Event()
    reads = []

    def reader():
        while not stop.is_set():
            reads.append(ring.window_ending_at(ring.end_time() or 0.0).shape)

    th = threading.Thread(target=reader)
    th.start()
    t0 = time.perf_counter()
    for i in range(2000):
        ring.write(block, t_first=i * 0.01)
    per_block = (time.perf_counter() - t0) / 2000
    stop.set()
    th.join()
    assert per_block < 2e-3  # a copy under a short lock, even while a reader works
    assert reads and all(r == (15600,) for r in reads)


# ------------------------------------------------------------------------------------------ resampler

@pytest.mark.parametrize("rate", [48000, 44100, 8000, 16000])
def test_streaming_resampler_equals_whole_signal_resample(rate):
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate + 777)
    r = StreamingResampler(rate)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 2500))
        out.append(r.process(x[i:i + n]))
        i += n
    out.append(r.flush())
    y = np.concatenate(out)
    ref = resample(x, rate, SR)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-6)


# ------------------------------------------------------------------------------------------ queues

def test_drop_oldest_queue_keeps_newest_and_counts():
    q = BoundedQueue(2, "drop_oldest")
    for i in range(5):
        q.put(i)
    assert q.dropped == 3 and len(q) == 2
    assert q.get(timeout=0.1) == 3 and q.get(timeout=0.1) == 4
    with pytest.raises(TimeoutError):
        q.get(timeout=0.01)
    q.put(9)
    q.close()
    assert q.get() == 9
    with pytest.raises(Closed):
        q.get()


def test_blocking_queue_blocks_and_unblocks_on_close():
    q = BoundedQueue(1, "block")
    q.put(1)
    with pytest.raises(TimeoutError):
        q.put(2, timeout=0.05)
    threading.Timer(0.05, q.get).start()
    q.put(3, timeout=2.0)
    assert q.dropped == 0 and q.get(timeout=1) == 3
    q.put(4)
    threading.Timer(0.05, q.close).start()
    assert q.put(5, timeout=2.0) == 5  # a closed queue hands the item back instead of hanging


# ------------------------------------------------------------------------------------------ stats

def test_stage_stats_percentiles_and_bounded_memory():
    st = StageStats(cap=1000)
    for v in np.arange(1, 5001):
        st.add(v / 1000.0)
    s = st.summary_ms()
    assert s["count"] == 5000 and s["max"] == 5000.0
    assert st.values().shape == (1000,)  # reservoir: memory bounded
    assert 2000 < s["p50"] < 3000 and s["p99"] > 4500
    rec = LatencyRecorder()
    for v in (0.010, 0.020, 0.030):
        rec.add("inference", v)
    out = rec.summary_ms()["inference"]
    assert out["p50"] == pytest.approx(20.0) and out["max"] == pytest.approx(30.0) and out["count"] == 3


def test_environment_reports_versions_without_importing_torch():
    import subprocess

    code = ("import sys, json; from autr.runtime.stats import environment; e = environment(); "
            "assert 'torch' not in sys.modules; print(json.dumps(e))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    env = json.loads(out)
    assert env["versions"]["numpy"] and env["device"]["cpu_cores"] >= 1


# ------------------------------------------------------------------------------------------ sidecar / backends

def test_sidecar_in_the_exporters_form_and_its_refusals():
    """The runtime reads input_size [H, W], frames {min, max} and preprocessing as `autr export` writes them, and
    refuses -- naming every difference -- a sidecar that lacks one or records other preprocessing."""
    from autr.runtime.backends.sidecar import parse_spec

    s = parse_spec(exporter_sidecar(224, (1, 5)))
    assert s.input_size == (224, 224) and (s.t_min, s.t_max) == (1, 5)
    s = parse_spec({**exporter_sidecar(0), "input_size": [160, 192], "frames": {"min": 2, "max": 4}})
    assert s.input_size == (160, 192) and (s.t_min, s.t_max) == (2, 4)
    for key, bad, words in (("input_size", None, "input size"), ("input_size", 224, "input_size \\[H, W\\]"),
                            ("frames", None, "range of T"), ("frames", {"max": 5}, "range of T"),
                            ("frames", {"min": 3, "max": 2}, "impossible T range 3..2"),
                            ("preprocessing", None, "does not record the preprocessing")):
        side = exporter_sidecar(224)
        side[key] = bad
        with pytest.raises(SidecarError, match=words):
            parse_spec(side)
    side = exporter_sidecar(224)
    side["preprocessing"]["frames"]["color"] = "BGR"
    side["preprocessing"]["audio"]["mel_max_hz"] = 8000.0
    del side["preprocessing"]["audio"]["log_offset"]
    side["preprocessing"]["audio"]["pre_emphasis"] = 0.97
    with pytest.raises(SidecarError) as err:
        parse_spec(side, "sidecar x.json")
    msg = str(err.value)
    assert msg.startswith("sidecar x.json was exported for other preprocessing") and "\n" not in msg
    for words in ("frames.color='BGR' (runtime: 'RGB')", "audio.mel_max_hz=8000.0 (runtime: 7500.0)",
                  "audio.log_offset not recorded", "audio.pre_emphasis=0.97 unknown to this runtime", "re-export"):
        assert words in msg


def test_sidecar_is_found_next_to_each_artifact(tmp_path):
    from autr.runtime.backends.sidecar import find_sidecar, read_sidecar

    (tmp_path / "model.json").write_text("{}")
    assert find_sidecar(tmp_path / "model.portable.onnx") == tmp_path / "model.json"
    assert find_sidecar(tmp_path / "model.engine") == tmp_path / "model.json"
    (tmp_path / "model.engine.json").write_text("{}")
    assert find_sidecar(tmp_path / "model.engine") == tmp_path / "model.engine.json"
    with pytest.raises(SidecarError, match="never guesses"):
        read_sidecar(tmp_path / "elsewhere" / "model.portable.onnx")
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(SidecarError, match="not a JSON object"):
        read_sidecar(tmp_path / "model.portable.onnx")


def test_backend_kind_from_artifact(tmp_path):
    from autr.runtime import backend_kind_for

    assert backend_kind_for("x.engine") == "trt"
    assert backend_kind_for("x.onnx") == "ort"
    assert backend_kind_for("x.safetensors") == "torch"
    assert backend_kind_for("default") == "torch"
    (tmp_path / "model.portable.onnx").write_bytes(b"")
    assert backend_kind_for(tmp_path) == "ort"
    with pytest.raises(BackendError, match="cannot tell"):
        backend_kind_for(tmp_path / "weights.bin")


def test_trt_backend_missing_says_how_to_install(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this test checks the message where it is missing")
    except ImportError:
        pass
    from autr.runtime import open_backend

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    (tmp_path / "model.json").write_text(json.dumps(exporter_sidecar(224)))
    with pytest.raises(BackendUnavailable, match="pip install 'tensorrt>=10'"):
        open_backend(artifact=engine)
    with pytest.raises(BackendError, match="not found"):
        open_backend("trt", tmp_path / "missing.engine")


def test_trt_engine_sidecar_mismatches_are_named():
    from autr.runtime.backends.trt import check_engine_sidecar

    side = exporter_sidecar(224, tensorrt_version="10.3.0", gpu_name="NVIDIA A100", compute_capability=[8, 0],
                            plugin_library_hash="ab" * 32)
    check_engine_sidecar(side, "10.3.0", "NVIDIA A100", (8, 0), "ab" * 32)
    with pytest.raises(SidecarError) as err:
        check_engine_sidecar(side, "10.5.0", "NVIDIA L4", (8, 9), "cd" * 32)
    msg = str(err.value)
    assert "TensorRT 10.3.0 (here 10.5.0)" in msg and "compute capability 8.0 (here 8.9)" in msg
    assert "GPU 'NVIDIA A100'" in msg and "plugin library" in msg and "\n" not in msg
    check_engine_sidecar(side, "10.3.0", "NVIDIA A100", "8.0", None)  # the same capability spelled otherwise
    del side["gpu_name"], side["plugin_library_hash"]
    with pytest.raises(SidecarError, match="does not record gpu_name, plugin_library_hash; rebuild"):
        check_engine_sidecar(side, "10.3.0", "NVIDIA A100", (8, 0), "ab" * 32)


def test_trt_backend_plumbing_with_a_fake_tensorrt_and_pycuda(tmp_path, monkeypatch):
    """The TrtBackend's buffer / shape / copy logic against minimal stand-ins for tensorrt and pycuda
    (host memory plays device memory), so that everything around the real TensorRT runs here."""
    import types

    import autr.plugins as plugins

    store = {}

    class DevBuf:
        def __init__(self, n):
            self.mem = np.zeros(n, np.uint8)
            store[id(self)] = self

        def __int__(self):
            return id(self)

        def free(self):
            pass

    cuda = types.ModuleType("pycuda.driver")
    cuda.init = lambda: None

    class Ctx:
        def push(self):
            pass

        def pop(self):
            pass

        def detach(self):
            pass

    class Device:
        def __init__(self, i):
            pass

        def name(self):
            return "Fake GPU"

        def compute_capability(self):
            return (8, 9)

        def retain_primary_context(self):
            return Ctx()

    cuda.Device = Device
    cuda.pagelocked_empty = lambda n, dt: np.zeros(n, dt)
    cuda.mem_alloc = DevBuf

    def htod(dev, host, stream):
        dev.mem[:host.nbytes] = np.frombuffer(np.ascontiguousarray(host).tobytes(), np.uint8)

    def dtoh(host, dev, stream):
        host.view(np.uint8)[:] = dev.mem[:host.nbytes]

    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = htod, dtoh
    cuda.Stream = lambda: types.SimpleNamespace(handle=0, synchronize=lambda: None)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda

    size = 32
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, lvl: None})
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: np.float32
    from trt_fakes import FakePluginRegistry

    registry = FakePluginRegistry()  # refuses a second load_library of the library, as TensorRT does
    trt.get_plugin_registry = lambda: registry

    class Context:
        def __init__(self):
            self.shapes, self.addr = {}, {}

        def set_input_shape(self, n, s):
            self.shapes[n] = tuple(s)
            return True

        def set_tensor_address(self, n, a):
            self.addr[n] = a

        def get_tensor_shape(self, n):
            t = self.shapes["frames"][0]
            return {"masks": (t, size, size), "scores": (t,)}[n]

        def execute_async_v3(self, handle):  # the "kernel": masks = channel mean, scores = mean log-mel
            t = self.shapes["frames"][0]
            fr = store[self.addr["frames"]].mem.view(np.float32)[:t * 3 * size * size].reshape(t, 3, size, size)
            lm = store[self.addr["log_mel"]].mem.view(np.float32)[:t * 96 * 64].reshape(t, -1)
            store[self.addr["masks"]].mem.view(np.float32)[:t * size * size] = fr.mean(axis=1).ravel()
            store[self.addr["scores"]].mem.view(np.float32)[:t] = lm.mean(axis=1)
            return True

    class Engine:
        num_io_tensors = 4
        names = ["frames", "log_mel", "masks", "scores"]

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, n):
            return "in" if n in ("frames", "log_mel") else "out"

        def get_tensor_dtype(self, n):
            return "float"

        def get_tensor_profile_shape(self, n, p):
            return [(1, 3, size, size), (1, 3, size, size), (4, 3, size, size)]

        def create_execution_context(self):
            return Context()

    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: Engine())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    lib = tmp_path / "libautr_trt_plugin.so"
    lib.write_bytes(b"fake plugin")
    monkeypatch.setattr(plugins, "library_hash", lambda p=None: "feed" * 16)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    side = exporter_sidecar(size, (1, 8), tensorrt_version="10.9.0", gpu_name="Fake GPU", compute_capability="8.9",
                            plugin_library_hash="feed" * 16)
    (tmp_path / "model.engine.json").write_text(json.dumps(side))
    from autr.runtime.backends.trt import TrtBackend

    be = TrtBackend(engine, plugin_library=lib)
    assert be.t_max == 4  # the engine profile bounds the sidecar's range
    rng = np.random.default_rng(0)
    for t in (1, 3):
        fr = rng.standard_normal((t, 3, size, size)).astype(np.float32)
        lm = rng.standard_normal((t, 1, 96, 64)).astype(np.float32)
        masks, scores = be.infer(fr, lm)
        np.testing.assert_allclose(masks, fr.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(scores, lm.reshape(t, -1).mean(axis=1), rtol=1e-5)
    with pytest.raises(BackendError, match="outside"):
        be.infer(np.zeros((5, 3, size, size), np.float32), np.zeros((5, 1, 96, 64), np.float32))
    be.close()
    again = TrtBackend(engine, plugin_library=lib)  # a second open in this process (plugin registered once)
    assert [c[0] for c in registry.calls].count("load_library") == 1 and again.t_max == 4
    again.close()
    side["plugin_library_hash"] = "beef" * 16
    (tmp_path / "model.engine.json").write_text(json.dumps(side))
    with pytest.raises(SidecarError, match="plugin library"):
        TrtBackend(engine, plugin_library=lib)


# ------------------------------------------------------------------------------------------ render

def test_mask_and_overlay():
    from autr.runtime.render import mask_from_logits, render_overlay

    logits = -np.ones((32, 32), np.float32)
    logits[8:24, 8:24] = 3.0
    mask = mask_from_logits(logits, 64, 96)
    assert mask.shape == (64, 96) and 0.2 < mask.mean() < 0.3
    img = np.full((64, 96, 3), 100, np.uint8)
    out = render_overlay(img, mask, {"fps": 9.5, "latency_ms": 42.0, "latency_p90_ms": 50.0, "score": 2.0,
                                     "dropped": 3, "backend": "ort"})
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    assert out[32, 48, 2] > out[32, 48, 1]  # BGR: the mask is tinted red
    assert (out[60, 90] == 100).all()  # outside mask and HUD: untouched


@pytest.mark.parametrize("rate", [48000, 44100])
def test_live_windows_at_device_rate_reuse_what_was_resampled(rate):
    """Reads interleaved with writes (a live microphone): each window equals what a fresh ring holding the same
    audio returns, and windows behind the newest sample equal preprocess.resample of the whole signal."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, int(3 * rate)).astype(np.float32)
    ref = resample(x.astype(np.float64), rate, SR).astype(np.float32)
    live = AudioRingBuffer(sample_rate=rate)
    block = rate // 50
    for i in range(0, x.shape[0] // block):
        live.write(x[i * block:(i + 1) * block], t_first=i * block / rate)
        if i % 3 or (i + 1) * block < 1.2 * rate:  # a whole window behind the head
            continue
        t_head = (i + 1) * block / rate
        fresh = AudioRingBuffer(sample_rate=rate)
        fresh.write(x[:(i + 1) * block], t_first=0.0)
        np.testing.assert_allclose(live.window_ending_at(t_head), fresh.window_ending_at(t_head), atol=2e-6)
        m = int(round((t_head - 0.1) * SR))
        np.testing.assert_allclose(live.window_ending_at(t_head - 0.1), ref[m - 15600:m], atol=2e-6)
