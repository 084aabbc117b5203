"""The `remote` backend against a real Open Inference Protocol server on loopback: KServe's ModelServer hosting the
shipped export's ONNX Runtime session (autr.benchmarks.oip_server, a process of its own), reached with tritonclient's
gRPC client. Concurrent streams, a server restart mid-stream, a wrong model name, oversized requests, the CLI."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_runtime_helpers import free_port


def _missing() -> str | None:
    for mod, pkg in (("tritonclient.grpc", "tritonclient[grpc]"), ("kserve", "kserve")):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{pkg} is not installed (pip install -e '.[serve]')"
        except ImportError:
            return f"{pkg} is not installed (pip install -e '.[serve]')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

ROOT = Path(__file__).resolve().parents[1]
# 600 KiB: a T = 1 request (0.22 MiB at 128x128) fits, a T = 5 one (1.06 MiB) does not
LIMIT = 600 * 1024


def _start(port=None):
    from autr.benchmarks.serve_bench import start_server

    return start_server("default", name="autr", grpc_port=port, max_delay_ms=5.0,
                        extra=["--grpc_max_receive_message_length", str(LIMIT)])


@pytest.fixture(scope="module")
def server():
    from autr.benchmarks.serve_bench import stop_server

    proc, port = _start()
    yield {"proc": proc, "port": port, "url": f"grpc://127.0.0.1:{port}"}
    stop_server(proc)


@pytest.fixture(scope="module")
def local():
    from autr.runtime.backends import open_backend, shipped_export

    b = open_backend("ort", str(shipped_export()), threads=1)
    yield b
    b.close()


def _remote(url, **kw):
    from autr.runtime.backends import open_backend

    return open_backend("remote", url, model=kw.pop("model", "autr"), sidecar=kw.pop("sidecar", "default"), **kw)


def _window(seed, t=1, size=128):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((t, 3, size, size)).astype(np.float32),
            rng.standard_normal((t, 1, 96, 64)).astype(np.float32) - 4.0)


def test_remote_matches_local_and_splits_latency(server, local):
    b = _remote(server["url"])
    try:
        assert (b.input_size, b.t_min, b.t_max) == ((128, 128), 1, 5)
        for seed in range(3):
            f, m = _window(seed, t=2)
            masks, scores = b.infer(f, m)
            ref_m, ref_s = local.infer(f, m)
            assert masks.shape == (2, 128, 128) and scores.shape == (2,)
            np.testing.assert_allclose(masks, ref_m, atol=1e-4)
            np.testing.assert_allclose(scores, ref_s, atol=1e-4)
        r = b.describe()["remote"]
        lat = r["latency_ms"]
        assert r["calls"] == 3 and lat["round_trip"]["count"] == 3 and lat["server"]["count"] == 3
        assert lat["network"]["count"] == 3 and lat["network"]["p50"] >= 0
        assert lat["server"]["p50"] <= lat["round_trip"]["p50"]
    finally:
        b.close()


def test_concurrent_streams_get_their_own_answers(server, local):
    clients = [_remote(server["url"]) for _ in range(3)]
    results, errors = {}, []

    def stream(i):
        try:
            for k in range(4):
                f, m = _window(100 * i + k)
                results[(i, k)] = clients[i].infer(f, m)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert len(results) == 12
    for (i, k), (masks, scores) in results.items():
        ref_m, ref_s = local.infer(*_window(100 * i + k))
        np.testing.assert_allclose(masks, ref_m, atol=1e-4)
        np.testing.assert_allclose(scores, ref_s, atol=1e-4)
    for c in clients:
        c.close()


def test_wrong_model_and_missing_server_are_one_line(server):
    from autr.runtime.errors import BackendError

    with pytest.raises(BackendError) as e:
        _remote(server["url"], model="nope")
    msg = str(e.value)
    assert "has no model 'nope' ready" in msg and "check --model" in msg and "\n" not in msg
    with pytest.raises(BackendError) as e:
        _remote(f"grpc://127.0.0.1:{free_port()}")
    assert "no Open Inference Protocol server answers" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BackendError, match="grpc://HOST:PORT"):
        _remote("http://127.0.0.1:8000")


def test_metadata_is_checked_against_the_sidecar(server, tmp_path):
    from autr.runtime.backends import shipped_export
    from autr.runtime.errors import SidecarError

    data = json.loads((shipped_export() / "model.json").read_text())
    data["input_size"] = [64, 64]
    side = tmp_path / "model.json"
    side.write_text(json.dumps(data))
    with pytest.raises(SidecarError) as e:
        _remote(server["url"], sidecar=str(tmp_path))
    assert "does not match the sidecar" in str(e.value) and "frames is [-1, 3, 128, 128] on the server" in str(e.value)


def test_oversized_requests(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from autr.runtime.errors import BackendError

    b = _remote(server["url"])
    try:
        with pytest.raises(BackendError, match=r"outside the model's range 1\.\.5"):  # checked before sending
            b.infer(*_window(0, t=6))
        with pytest.raises(BackendError) as e:  # T = 5 is in range but over the server's 600 KiB message limit
            b.infer(*_window(0, t=5))
        msg = str(e.value)
        assert "refused the request" in msg and "RESOURCE_EXHAUSTED" in msg and "T = 5" in msg and "\n" not in msg
        assert b.failed_calls == 0  # refused, not retried
        b.infer(*_window(0, t=1))  # the connection is still good
    finally:
        b.close()
    # a raw request past T_MAX (small enough to get through gRPC): the server refuses it in one line
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server['port']}")
    f = np.zeros((6, 3, 16, 16), np.float32)
    m = np.zeros((6, 1, 96, 64), np.float32)
    inputs = [grpcclient.InferInput("frames", list(f.shape), "FP32"), grpcclient.InferInput("log_mel", list(m.shape), "FP32")]
    inputs[0].set_data_from_numpy(f)
    inputs[1].set_data_from_numpy(m)
    with pytest.raises(InferenceServerException) as e:
        c.infer("autr", inputs)
    assert "INVALID_ARGUMENT" in str(e.value.status()) and "outside the model's range 1..5" in e.value.message()
    c.close()


def test_server_restart_mid_stream_recovers_and_counts_drops(tmp_path):
    from autr.benchmarks.serve_bench import stop_server
    from autr.runtime import StreamRunner, SyntheticSource

    proc, port = _start()
    backend = _remote(f"grpc://127.0.0.1:{port}", timeout=5.0, reconnect_s=40.0)
    source = SyntheticSource(fps=10, seed=0, size=128, realtime=True, queue_size=1)
    out = []
    restarted = {}

    def restart():
        time.sleep(2.0)
        stop_server(proc)
        restarted["down_at"] = len(out)
        time.sleep(1.0)
        restarted["proc"], _ = _start(port)

    th = threading.Thread(target=restart)
    runner = StreamRunner(source, backend, duration=12.0, on_packet=lambda p: out.append(p.frame.t))
    th.start()
    try:
        rep = runner.run()
    finally:
        th.join(60)
        if "proc" in restarted:
            stop_server(restarted["proc"])
        backend.close()
    assert rep["error"] is None, rep["error"]
    r = rep["backend"]["remote"]
    assert r["failed_calls"] >= 1 and r["reconnects"] >= 1 and r["outage_s"] > 0.5
    assert rep["frames"]["dropped"]["total"] > 0  # the live stream dropped frames while the server was away
    assert len(out) > restarted["down_at"] + 3  # and it kept going after the restart
    f = rep["frames"]
    assert f["captured"] == f["output"] + f["dropped"]["total"] + f["discarded_at_stop"] + f["after_duration"]


def _cli(*args, timeout=120):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "autr.runtime", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_cli_checks_before_connecting():
    r = _cli("--server", "grpc://127.0.0.1:1", "--synthetic", "--no-display")
    assert r.returncode == 2 and r.stderr.strip() == "autr: --server needs --model NAME (the model's name on the server)"
    r = _cli("--server", "grpc://127.0.0.1:1", "--model", "autr", "--synthetic", "--no-display")
    assert r.returncode == 2 and "--server needs the model's sidecar" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("--server", "http://h:1", "--model", "autr", "--sidecar", "default", "--synthetic")
    assert r.returncode == 2 and "--server must be grpc://HOST:PORT" in r.stderr
    r = _cli("--model", "autr", "--synthetic")
    assert r.returncode == 2 and "give --server grpc://HOST:PORT too" in r.stderr
    r = _cli("--server", "grpc://127.0.0.1:1", "--model", "autr", "--sidecar", "default", "--synthetic", "--window", "9")
    assert r.returncode == 2 and "--window 9 is outside that range" in r.stderr


def test_cli_streams_through_the_server_and_two_clients_share_it(server, tmp_path):
    url = server["url"]
    args = ["--server", url, "--model", "autr", "--sidecar", "default", "--synthetic", "--fps", "5", "--duration",
            "2", "--no-display"]
    procs = [subprocess.Popen([sys.executable, "-m", "autr.runtime", *args, "--report", str(tmp_path / f"r{i}.json")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se
        assert "model remote" in se
    for i in range(2):
        rep = json.loads((tmp_path / f"r{i}.json").read_text())
        r = rep["backend"]["remote"]
        assert rep["frames"]["output"] >= 3 and r["calls"] >= rep["frames"]["output"] + 1  # + the warm-up call
        assert r["latency_ms"]["server"]["count"] == r["calls"] and r["latency_ms"]["network"]["p50"] >= 0
    r = _cli("--server", url, "--model", "nope", "--sidecar", "default", "--synthetic", "--no-display")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("autr: the server at") and "no model 'nope'" in lines[-1]
