"""`autr bench serve`: one-line refusals, a short in-process run with its JSON and plot, and (slow) the server path."""
from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner


def _run(*args):
    from autr.benchmarks.cli import bench

    return CliRunner().invoke(bench, ["serve", *map(str, args)])


def test_refusals_are_one_line(tmp_path):
    for args, text in [(("--streams", "0,2"), "--streams must be counts in 1..64"),
                       (("--streams", "a"), "stream count"),
                       (("--seconds", "0"), "--seconds must be positive"),
                       (("--instances", "0"), "--instances must be >= 1"),
                       (("--paths", "cloud"), "path"),
                       (("--onnx", tmp_path), "not an export directory")]:
        r = _run(*args)
        assert r.exit_code == 2 and text in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1


def test_inprocess_run_writes_json_and_plot(tmp_path):
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    r = _run("--streams", "1,2", "--seconds", "1.5", "--warmup", "0.3", "--paths", "inprocess", "--threads", "1",
             "--json", out, "--plot", plot, "-q")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["kind"] == "serve" and "serve --streams 1,2" in res["command"]
    rows = res["rows"]
    assert [(x["path"], x["streams"]) for x in rows] == [("inprocess", 1), ("inprocess", 2)]
    for x in rows:
        assert x["windows"] > 0 and x["windows_per_s"] > 0 and not x["errors"]
        assert len(x["per_stream"]) == x["streams"] and all(p["p99_ms"] >= p["p50_ms"] > 0 for p in x["per_stream"])
        assert x["windows"] == sum(p["windows"] for p in x["per_stream"])
    assert rows[0]["mean_frames_per_call"] == 1.0  # one closed-loop stream: nothing to stack
    assert plot.stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("tritonclient", "kserve")),
                    reason="tritonclient[grpc] and kserve are not installed (pip install -e '.[serve]')")
def test_server_path(tmp_path):
    out = tmp_path / "serve.json"
    r = _run("--streams", "1,2", "--seconds", "2", "--warmup", "0.5", "--json", out, "-q")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    srv = [x for x in res["rows"] if x["path"] == "server"]
    assert [x["streams"] for x in srv] == [1, 2]
    assert all(x["windows"] > 0 and x["server_p50_ms"] > 0 and x["network_p50_ms"] >= 0 for x in srv)
    assert "server_vs_inprocess_p50_at_1" in res["summary"]
