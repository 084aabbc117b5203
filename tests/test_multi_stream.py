"""Many streams on one model in one process (runtime/multi.py): windows stacked on T into one backend call, each
stream its own answer, queues, sinks and report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from test_runtime_helpers import make_av_clip

ROOT = Path(__file__).resolve().parents[1]


def _fake(**kw):
    from autr.runtime.backends.fake import FakeBackend

    return FakeBackend(input_size=(32, 32), **kw)


def _window(seed, t=1, size=32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((t, 3, size, size)).astype(np.float32),
            rng.standard_normal((t, 1, 96, 64)).astype(np.float32))


def _concurrently(batcher, n, calls, t=1):
    out, errors = {}, []

    def client(i):
        try:
            for k in range(calls):
                f, m = _window(100 * i + k, t)
                out[(i, k)] = (f, m, batcher.infer(f, m))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    return out, errors


def test_shipped_model_frames_are_independent():
    """The premise of stacking streams on T: a frame's answer does not depend on the other frames of the call."""
    from autr.runtime.backends import open_backend, shipped_export
    from autr.runtime.multi import frames_independent

    b = open_backend("ort", str(shipped_export()), threads=1)
    try:
        assert frames_independent(b)
        f, m = _window(0, t=4, size=128)
        masks, scores = b.infer(f, m)
        for i in range(4):
            mi, si = b.infer(f[i:i + 1], m[i:i + 1])
            np.testing.assert_allclose(mi[0], masks[i], atol=1e-5)
            np.testing.assert_allclose(si[0], scores[i], atol=1e-5)
    finally:
        b.close()


def test_batcher_stacks_streams_and_splits_answers():
    from autr.runtime.multi import BatchingBackend

    inner = _fake(delay=0.02, t_max=5)
    batcher = BatchingBackend([inner], max_delay=0.01)
    try:
        out, errors = _concurrently(batcher, n=4, calls=5)
        assert not errors and len(out) == 20
        for f, m, (masks, scores) in out.values():  # each request got its own slice back
            ref_m, ref_s = _fake().infer(f, m)
            np.testing.assert_array_equal(masks, ref_m)
            np.testing.assert_array_equal(scores, ref_s)
        d = batcher.describe()
        assert d["requests"] == 20 and d["frames"] == 20 and d["stacking"] is True
        assert d["calls"] < 20 and inner.calls == d["calls"]  # windows of several streams shared calls
        assert max(int(k) for k in d["frames_per_call"]) <= 5
    finally:
        batcher.close()


def test_batcher_respects_max_frames_and_instances():
    from autr.runtime.multi import BatchingBackend

    a, b = _fake(delay=0.02, t_max=5), _fake(delay=0.02, t_max=5)
    batcher = BatchingBackend([a, b], max_frames=3, max_delay=0.01)
    try:
        out, errors = _concurrently(batcher, n=6, calls=3, t=1)
        assert not errors and len(out) == 18
        d = batcher.describe()
        assert max(int(k) for k in d["frames_per_call"]) <= 3
        assert a.calls > 0 and b.calls > 0 and a.calls + b.calls == d["calls"]  # both instances worked
        with pytest.raises(Exception, match="longer than the batcher's 3 frames per call"):
            batcher.infer(*_window(0, t=4))
    finally:
        batcher.close()


def test_clip_rule_is_never_stacked():
    from autr.runtime.multi import BatchingBackend

    inner = _fake(delay=0.01, t_max=5)
    inner.query_select = "clip"  # one query per call from all its frames: stacking would mix streams
    batcher = BatchingBackend([inner], max_delay=0.01)
    try:
        assert batcher.stack is False
        out, errors = _concurrently(batcher, n=3, calls=3)
        assert not errors and batcher.describe()["frames_per_call"] == {"1": 9}
    finally:
        batcher.close()


def test_errors_reach_every_stream_of_the_call():
    from autr.runtime.errors import BackendError
    from autr.runtime.multi import BatchingBackend

    class Broken:
        name, input_size, t_min, t_max, device, artifact = "broken", (32, 32), 1, 5, "cpu", None
        query_select = "frame"

        def infer(self, f, m):
            raise RuntimeError("device lost")

        def describe(self):
            return {"name": "broken"}

        def close(self):
            pass

    batcher = BatchingBackend([Broken()], max_delay=0.01)
    try:
        out, errors = _concurrently(batcher, n=3, calls=1)
        assert len(errors) == 3 and all(isinstance(e, BackendError) and "device lost" in str(e) for e in errors)
    finally:
        batcher.close()


def test_multi_stream_runner_reports_per_stream(tmp_path):
    from autr.runtime import MaskPngSink, MediaSource
    from autr.runtime.multi import BatchingBackend, MultiStreamRunner

    clips = [make_av_clip(tmp_path / f"c{i}.mp4", seconds=1.0 + 0.5 * i, fps=10, size=(48, 64)) for i in range(3)]
    batcher = BatchingBackend([_fake(delay=0.01, t_max=5)], max_delay=0.005)
    sinks = [[MaskPngSink(tmp_path / f"masks{i}")] for i in range(3)]
    try:
        runner = MultiStreamRunner([MediaSource(str(c)) for c in clips], batcher, sinks=sinks)
        rep = runner.run()
    finally:
        batcher.close()
    assert rep["streams"] == 3 and not rep["errors"]
    assert [r["frames"]["output"] for r in rep["per_stream"]] == [10, 15, 20]  # files: nothing dropped
    assert rep["windows_output"] == 45 and rep["dropped"] == 0
    assert [len(list((tmp_path / f"masks{i}").glob("*.png"))) for i in range(3)] == [10, 15, 20]
    b = rep["batching"]
    assert b["requests"] == 45 + 3  # + one warm-up window per stream
    for i, r in enumerate(rep["per_stream"]):
        assert r["backend"]["stream"] == f"stream {i}" and r["latency_ms"]["inference"]["count"] == r["frames"]["output"]


def test_cli_several_inputs(tmp_path):
    clips = [make_av_clip(tmp_path / f"c{i}.mp4", seconds=1.0, fps=10, size=(48, 64)) for i in range(2)]
    base = [sys.executable, "-m", "autr.runtime", "--onnx", "default", "--no-display"]
    r = subprocess.run(base + ["--input", str(clips[0]), "--input", str(clips[1]), "--out", str(tmp_path / "o.mp4")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "put {i} (the stream's index) in --out" in r.stderr
    r = subprocess.run(base + ["--input", str(clips[0]), "--input", str(tmp_path / "missing.mp4")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"autr: input not found: {tmp_path / 'missing.mp4'}"
    report = tmp_path / "multi.json"
    r = subprocess.run(base + ["--input", str(clips[0]), "--input", str(clips[1]), "--masks", str(tmp_path / "m{i}"),
                               "--report", str(report)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "2 streams batched into calls of up to 5 frames" in r.stderr
    rep = json.loads(report.read_text())
    assert [s["frames"]["output"] for s in rep["per_stream"]] == [10, 10]
    assert len(list((tmp_path / "m0").glob("*.png"))) == 10 and len(list((tmp_path / "m1").glob("*.png"))) == 10
    assert rep["batching"]["frames"] == 22 and "stream 1 (" in r.stdout


def test_a_tpavi_export_is_never_stacked(tmp_path):
    """TPAVI's temporal block mixes the frames of a call: its windows stay one per call, whatever its query rule,
    and its Triton models get no dynamic batcher."""
    import json

    from autr.runtime.multi import frames_independent

    side = tmp_path / "model.json"

    class Backend:  # what the batcher reads of an ONNX Runtime backend: its sidecar
        sidecar = side

    for arch, expected in (("autr", True), ("tpavi", False)):
        side.write_text(json.dumps({"config": {"arch": arch, "query_select": "frame"}}))
        assert frames_independent(Backend()) is expected
