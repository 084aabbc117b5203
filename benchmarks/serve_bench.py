"""`autr bench serve`: many streams on one model -- in one process (the runtime's batcher) and through an Open
Inference Protocol server (KServe's ModelServer hosting the same ONNX Runtime session behind the same batcher,
``autr.benchmarks.oip_server``, reached with the ``remote`` backend over gRPC on loopback).

Each of N streams is a closed-loop client: it sends one window (T = 1, preprocessed, 0.96 s of log-mel + one
frame), waits for its masks, sends the next -- as a live stream does when the model is the bottleneck. Windows are
seeded random tensors of the model contract (the model has no data-dependent control flow: its time does not
depend on the picture). Per N and path: aggregate windows/s over ``seconds`` (after a warm-up), per-stream
latency p50 / p99 (submit to result), the batcher's mean frames per call; for the server, the split of the round
trip into server time (``autr_server_us``) and network.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

from .core import BenchError, parse_list

__all__ = ["run_serve_bench", "format_serve", "plot_serve", "validate_serve_args", "start_server", "stop_server"]

PATHS = ("inprocess", "server")


def validate_serve_args(streams: str, seconds: float, warmup: float, instances: int, threads, export, paths: str):
    n = parse_list(streams, what="stream count", cast=int)
    if not n or any(x < 1 or x > 64 for x in n):
        raise BenchError(f"--streams must be counts in 1..64; got {streams!r}")
    if not seconds > 0:
        raise BenchError(f"--seconds must be positive; got {seconds}")
    if warmup < 0:
        raise BenchError(f"--warmup must be >= 0 seconds; got {warmup}")
    if instances is not None and instances < 1:
        raise BenchError(f"--instances must be >= 1; got {instances}")
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be >= 1; got {threads}")
    if export != "default" and not os.path.isfile(os.path.join(str(export), "model.json")):
        raise BenchError(f"--onnx {export}: not an export directory (no model.json)")
    p = parse_list(paths, choices=PATHS, what="path")
    if "server" in p:
        import importlib.util

        # found, not imported: kserve's and tritonclient's protobuf modules define the same symbols and cannot share
        # a process (the server runs in a process of its own)
        for mod, extra in (("tritonclient.grpc", "tritonclient[grpc]"), ("kserve", "kserve")):
            try:
                found = importlib.util.find_spec(mod) is not None
            except ImportError:
                found = False
            if not found:
                raise BenchError(f"the server path needs {extra}: pip install 'autr[serve]' (or --paths inprocess)")
    return sorted(set(n)), p


def _windows(size, k: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = size
    return [(rng.standard_normal((1, 3, h, w)).astype(np.float32),
             rng.standard_normal((1, 1, 96, 64)).astype(np.float32) - 4.0) for _ in range(k)]


def _closed_loop(infer_fns, windows, seconds: float, warmup: float) -> dict:
    """N client threads, each calling its ``infer`` back to back; latencies of calls that start in the timed span."""
    n = len(infer_fns)
    lat = [[] for _ in range(n)]
    errors = []
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds
    done = [0] * n

    def client(i):
        k = i
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                frames, mel = windows[k % len(windows)]
                infer_fns[i](frames, mel)
                t1 = time.perf_counter()
                if t0 >= t_start:
                    lat[i].append((t1 - t0) * 1000.0)
                    done[i] += 1
                k += n
        except Exception as exc:  # noqa: BLE001 - reported in the result
            errors.append(f"stream {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    span = max(1e-9, min(time.perf_counter(), max(t_end, t_start)) - t_start)
    per = []
    for i in range(n):
        a = np.asarray(lat[i]) if lat[i] else np.asarray([np.nan])
        per.append({"windows": done[i], "p50_ms": round(float(np.nanpercentile(a, 50)), 2),
                    "p99_ms": round(float(np.nanpercentile(a, 99)), 2)})
    total = sum(done)
    return {"streams": n, "windows": total, "seconds": round(span, 3), "windows_per_s": round(total / span, 3),
            "per_stream": per, "p50_ms_worst": max(p["p50_ms"] for p in per),
            "p99_ms_worst": max(p["p99_ms"] for p in per), "errors": errors}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export="default", name: str = "autr", instances: int = 1, threads=None, max_delay_ms: float = 2.0,
                 grpc_port: int | None = None, extra=(), timeout: float = 90.0, log=None):
    """Start ``python -m autr.benchmarks.oip_server`` on loopback; returns (process, grpc_port) once the model is
    ready (BenchError with the server's last lines otherwise)."""
    import tritonclient.grpc as grpcclient

    port = grpc_port or _free_port()
    cmd = [sys.executable, "-m", "autr.benchmarks.oip_server", "--export", str(export), "--name", name,
           "--instances", str(instances), "--max-delay-ms", str(max_delay_ms), "--grpc_port", str(port),
           "--http_port", str(_free_port()), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"autr-oip-{port}.log")
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if client.is_model_ready(name, client_timeout=1.0):
                    return proc, port
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
    finally:
        client.close()
    with open(log_path, "rb") as f:
        tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
    stop_server(proc)
    raise BenchError(f"the Open Inference Protocol server did not come up on port {port}: {' | '.join(tail)}")


def stop_server(proc) -> None:
    """Stop a server of :func:`start_server` (SIGTERM, then SIGKILL after 15 s) and remove its log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    log_path = getattr(proc, "log_path", None)
    if log_path and os.path.exists(log_path):
        os.unlink(log_path)


def _plans(streams, instances, threads) -> dict:
    """N -> (sessions, threads per session): the runtime's serving plan (runtime.threads.plan_instances) when
    `instances` is None, else `instances` sessions on `threads` threads for every N."""
    from autr.runtime.threads import available_cores, plan_instances

    if instances is None:
        return {n: plan_instances(n, threads=threads) for n in streams}
    return {n: (int(instances), threads or available_cores()) for n in streams}


def run_serve_bench(streams=(1, 2, 4, 8), seconds: float = 10.0, warmup: float = 2.0, export="default",
                    instances: int | None = None, threads=None, max_delay_ms: float = 2.0, paths=PATHS,
                    log=print) -> dict:
    from autr.runtime.backends import open_backend, shipped_export
    from autr.runtime.multi import BatchingBackend

    art = str(shipped_export()) if str(export) == "default" else str(export)
    rows = []
    plans = _plans(streams, instances, threads)
    probe = open_backend("ort", art, threads=threads, spinning=False)
    windows = _windows(probe.input_size)
    probe.close()
    if "inprocess" in paths:
        for plan in dict.fromkeys(plans.values()):  # one batcher per plan, its N in order
            k, t = plan
            batcher = BatchingBackend([open_backend("ort", art, threads=t, spinning=False) for _ in range(k)],
                                      max_delay=max_delay_ms / 1000.0)
            try:
                for n in [n for n in streams if plans[n] == plan]:
                    log(f"in-process, {n} stream(s), {k} session(s) x {t} thread(s) ...")
                    before = (batcher.calls, batcher.frames)
                    r = _closed_loop([batcher.infer] * n, windows, seconds, warmup)
                    calls, frames = batcher.calls - before[0], batcher.frames - before[1]
                    r.update(path="inprocess", mean_frames_per_call=round(frames / max(1, calls), 3), sessions=k,
                             threads_per_session=t)
                    rows.append(r)
            finally:
                batcher.close()
    for plan in dict.fromkeys(plans.values()) if "server" in paths else ():
        k, t = plan
        proc, port = start_server(export, instances=k, threads=t, max_delay_ms=max_delay_ms)
        try:
            for n in [n for n in streams if plans[n] == plan]:
                log(f"server, {n} stream(s), {k} session(s) x {t} thread(s) ...")
                clients = [open_backend("remote", f"grpc://127.0.0.1:{port}", model="autr",
                                        sidecar=os.path.join(art, "model.json")) for _ in range(n)]
                r = _closed_loop([c.infer for c in clients], windows, seconds, warmup)
                srv = [c.server_time.summary_ms() for c in clients]
                net = [c.network.summary_ms() for c in clients]
                r.update(path="server", server_p50_ms=round(float(np.median([s["p50"] for s in srv if s["count"]])), 2),
                         network_p50_ms=round(float(np.median([x["p50"] for x in net if x["count"]])), 2),
                         sessions=k, threads_per_session=t)
                for c in clients:
                    c.close()
                rows.append(r)
        finally:
            stop_server(proc)
    rows.sort(key=lambda r: (PATHS.index(r["path"]) if r["path"] in PATHS else 9, r["streams"]))
    return {"rows": rows, "summary": _summary(rows),
            "plans": {str(n): {"sessions": k, "threads_per_session": t} for n, (k, t) in plans.items()}}


def _row(rows, path, n):
    return next((r for r in rows if r["path"] == path and r["streams"] == n), None)


def _summary(rows) -> dict:
    s = {}
    one, four = _row(rows, "inprocess", 1), _row(rows, "inprocess", 4)
    if one and four and one["windows_per_s"]:
        s["inprocess_throughput_4_vs_1"] = round(four["windows_per_s"] / one["windows_per_s"], 3)
        s["target_throughput_4_vs_1"] = 1.5
    srv = _row(rows, "server", 1)
    if one and srv and one["per_stream"][0]["p50_ms"]:
        s["server_vs_inprocess_p50_at_1"] = round(srv["per_stream"][0]["p50_ms"] / one["per_stream"][0]["p50_ms"], 3)
        s["target_server_vs_inprocess_at_1"] = 1.3
    return s


def format_serve(body: dict) -> str:
    lines = [f"{'path':<10} {'N':>3} {'windows/s':>10} {'p50 ms (worst stream)':>22} {'p99 ms (worst)':>15} "
             f"{'frames/call':>12} {'server p50':>11} {'network p50':>12}"]
    for r in body["rows"]:
        lines.append(f"{r['path']:<10} {r['streams']:>3} {r['windows_per_s']:>10.2f} {r['p50_ms_worst']:>22.1f} "
                     f"{r['p99_ms_worst']:>15.1f} {r.get('mean_frames_per_call', ''):>12} "
                     f"{r.get('server_p50_ms', ''):>11} {r.get('network_p50_ms', ''):>12}")
        for e in r["errors"]:
            lines.append(f"  error: {e}")
    for k, v in body["summary"].items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def plot_serve(result: dict, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for p, colour in (("inprocess", "tab:blue"), ("server", "tab:orange")):
        rows = [r for r in result["rows"] if r["path"] == p]
        if not rows:
            continue
        n = [r["streams"] for r in rows]
        a.plot(n, [r["windows_per_s"] for r in rows], "o-", color=colour, label=p)
        b.plot(n, [r["p50_ms_worst"] for r in rows], "o-", color=colour, label=f"{p} p50")
        b.plot(n, [r["p99_ms_worst"] for r in rows], "s--", color=colour, label=f"{p} p99")
    a.set(xlabel="streams", ylabel="aggregate windows/s", title="throughput", xscale="log", xticks=[1, 2, 4, 8])
    b.set(xlabel="streams", ylabel="per-stream latency, ms (worst stream)", title="latency", xscale="log",
          xticks=[1, 2, 4, 8])
    a.set_ylim(bottom=0)
    for ax in (a, b):
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"autr bench serve -- {result.get('device_label', '')}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
