"""The runtime's thread plan: what it chooses, that ONNX Runtime / numpy's BLAS / the encoder get it, that the
report records it, and that frames a live source captured while the model warmed up are not counted as drops."""
import os

import numpy as np
import pytest

from autr.runtime import Mp4Sink, StreamRunner, SyntheticSource, open_backend
from autr.runtime.backends.fake import FakeBackend
from autr.runtime.threads import ThreadPlan, available_cores, limit_blas, plan_threads
from test_runtime_helpers import TINY_SIZE, make_tiny_onnx


def test_plan_uses_the_cores_this_process_may_run_on():
    cores = len(os.sched_getaffinity(0))
    assert available_cores() == cores
    plan = plan_threads(pipeline=True)
    assert (plan.cores, plan.intra_op, plan.spinning, plan.blas, plan.encoder) == (cores, cores, False, 1, 1)
    alone = plan_threads(pipeline=False, cores=8)
    assert (alone.intra_op, alone.spinning) == (8, True)


def test_threads_override_and_its_refusal():
    plan = plan_threads(pipeline=True, threads=1, cores=4)
    assert (plan.intra_op, plan.spinning, plan.chosen_by) == (1, False, "--threads")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="--threads must be >= 1"):
            plan_threads(threads=bad)


def test_ort_session_gets_the_plan(tmp_path):
    onnx_path = make_tiny_onnx(tmp_path)
    be = open_backend("ort", onnx_path.parent, threads=1, spinning=False)
    opts = be.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert be.describe()["threads"] == {"intra_op": 1, "inter_op": 1, "spinning": False}
    assert be.describe()["disabled_optimizers"] == ["SkipLayerNormFusion"]  # slow on ORT's CPU provider
    spin = open_backend("ort", onnx_path.parent, threads=2, spinning=True)
    assert spin.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    default = open_backend("ort", onnx_path.parent)
    assert default.threads == {"intra_op": available_cores(), "inter_op": 1, "spinning": False}


def test_blas_and_opencv_are_limited_while_the_runner_runs_and_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cv2 = pytest.importorskip("cv2")  # loaded first, with the OpenBLAS its wheel carries

    def blas_threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]

    cv2.setNumThreads(4)
    before = blas_threads()
    if not before:
        pytest.skip("numpy here has no BLAS that threadpoolctl can see")
    seen = []
    plan = ThreadPlan(cores=2, intra_op=1, spinning=False, blas=1, opencv=1)
    rep = StreamRunner(SyntheticSource(fps=20, size=64), FakeBackend(input_size=(32, 32)), duration=0.5,
                       render=False, plan=plan,
                       on_packet=lambda p: seen.append((blas_threads(), cv2.getNumThreads()))).run()
    assert seen and all(s == ([1] * len(before), 1) for s in seen)
    assert blas_threads() == before and cv2.getNumThreads() == 4
    assert rep["threads"]["blas"] == 1 and rep["threads"]["opencv"] == 1 and rep["threads"]["blas_limited"]
    with limit_blas(None) as limited:
        assert limited == [] and blas_threads() == before


def test_report_records_plan_and_isolated_inference(tmp_path):
    be = FakeBackend(input_size=(32, 32), delay=0.01)
    plan = plan_threads(pipeline=True, threads=1)
    rep = StreamRunner(SyntheticSource(fps=20, size=64), be, duration=1.0, render=False, isolated_runs=5,
                       plan=plan).run()
    assert rep["threads"]["intra_op"] == 1 and rep["threads"]["chosen_by"] == "--threads"
    assert rep["inference_isolated_ms"]["runs"] == 5
    assert rep["inference_isolated_ms"]["p50"] == pytest.approx(10, abs=8)
    ratio = rep["inference_in_pipeline_vs_isolated"]
    assert ratio == pytest.approx(rep["latency_ms"]["inference"]["p50"] / rep["inference_isolated_ms"]["p50"],
                                  rel=1e-2)
    # after the run, alone again at the run's cadence: a 20 fps source calls the backend every 50 ms
    paced = rep["inference_isolated_paced_ms"]
    assert paced["runs"] == 5 and paced["period_ms"] == pytest.approx(50, abs=15)
    assert paced["p50"] == pytest.approx(10, abs=8)
    assert rep["inference_in_pipeline_vs_isolated_paced"] == pytest.approx(
        rep["latency_ms"]["inference"]["p50"] / paced["p50"], rel=1e-2)
    assert be.calls >= 2 * (5 + 3) + rep["frames"]["output"]  # 3 untimed calls before each timing


def test_frames_captured_during_warmup_are_not_drops():
    """A live source started before run() (as `autr stream` does, to fail fast) keeps capturing while the model
    warms up; those frames were never the pipeline's to drop."""
    src = SyntheticSource(fps=30, size=64)
    src.start()
    be = FakeBackend(input_size=(32, 32), delay=0.0)
    slow_warmup = 0.6
    be.warmup = lambda t=1, iters=1: __import__("time").sleep(slow_warmup)
    rep = StreamRunner(src, be, duration=1.0, render=False).run()
    f = rep["frames"]
    assert f["before_start"] >= 10  # ~18 frames at 30 fps during 0.6 s
    assert f["dropped"]["source"] <= 2
    assert f["captured"] == f["output"] + f["dropped"]["total"] + f["discarded_at_stop"] + f["after_duration"]


def test_mp4_encoder_runs_on_the_plans_threads(tmp_path):
    av = pytest.importorskip("av")
    sink = Mp4Sink(tmp_path / "o.mp4", audio=False, threads=1)
    rep = StreamRunner(SyntheticSource(fps=10, size=64), FakeBackend(input_size=(32, 32)), sinks=[sink],
                       duration=0.5).run()
    assert rep["error"] is None and sink.frames > 0
    assert sink.vstream.codec_context.options.get("threads") == "1" or sink.vstream.codec_context.thread_count == 1
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert c.streams.video[0].frames > 0 or sum(1 for _ in c.demux(video=0)) > 1


# ------------------------------------------------------------------------------------------ graph choice
from autr.runtime.backends.ort import choose_graph  # noqa: E402
from autr.runtime.errors import BackendError  # noqa: E402

GRAPHS = {k: {"file": f"model.{k.replace('_', '.')}.onnx"} for k in
          ("plugin", "portable", "plugin_int8", "portable_int8", "portable_fp16")}


def test_auto_runs_the_fused_graph_when_the_library_registers(tmp_path):
    path, kind, notice = choose_graph(tmp_path, GRAPHS, "auto", "fp32", register=lambda: None)
    assert (path.name, kind, notice) == ("model.plugin.onnx", "plugin", None)
    path, kind, _ = choose_graph(tmp_path, GRAPHS, "auto", "int8", register=lambda: None)
    assert (path.name, kind) == ("model.plugin.int8.onnx", "plugin_int8")


def test_auto_falls_back_to_portable_with_one_notice(tmp_path):
    path, kind, notice = choose_graph(tmp_path, GRAPHS, "auto", "fp32", register=lambda: "libautr_ort_ops.so not found")
    assert (path.name, kind) == ("model.portable.onnx", "portable")
    assert "libautr_ort_ops.so not found" in notice and "portable" in notice and "\n" not in notice
    # an fp16 export without a plugin fp16 graph: portable, saying why
    path, kind, notice = choose_graph(tmp_path, GRAPHS, "auto", "fp16", register=lambda: None)
    assert kind == "portable_fp16" and "no plugin_fp16 graph" in notice


def test_fused_or_missing_graphs_are_refused_in_one_line(tmp_path):
    with pytest.raises(BackendError, match="cannot run the fused graph: not built"):
        choose_graph(tmp_path, GRAPHS, "fused", "fp32", register=lambda: "not built")
    with pytest.raises(BackendError, match="holds no model.portable.fp16.onnx.*--fp16"):
        choose_graph(tmp_path, {"portable": GRAPHS["portable"]}, "portable", "fp16", register=lambda: None)
    with pytest.raises(BackendError, match="unknown precision"):
        choose_graph(tmp_path, GRAPHS, "auto", "int4", register=lambda: None)
    calls = []
    choose_graph(tmp_path, GRAPHS, "portable", "fp32", register=lambda: calls.append(1))
    assert calls == []  # the portable graph never loads the library


def test_ort_session_specialised_to_the_streams_T(tmp_path):
    """frames=W: the dynamic T axis becomes static for the session (ONNX Runtime's free-dimension override),
    same outputs, and a clip of another T is refused in one line; a T outside the sidecar's range up front."""
    from autr.runtime.errors import BackendError

    path = make_tiny_onnx(tmp_path, t_range=(1, 8))
    dynamic = open_backend("ort", path, threads=1)
    static = open_backend("ort", path, threads=1, frames=2)
    assert (dynamic.t_min, dynamic.t_max) == (1, 8) and (static.t_min, static.t_max) == (2, 2)
    assert static.describe()["frames"] == "static T = 2"
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((2, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    log_mel = rng.standard_normal((2, 1, 96, 64)).astype(np.float32)
    for a, b in zip(dynamic.infer(frames, log_mel), static.infer(frames, log_mel)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(BackendError, match="T"):
        static.infer(frames[:1], log_mel[:1])
    with pytest.raises(BackendError, match="1..8"):
        open_backend("ort", path, threads=1, frames=9)


def test_serving_plan_puts_one_session_per_core_once_streams_can_fill_them():
    from autr.runtime.threads import plan_instances

    assert plan_instances(1, cores=2) == (1, 2)  # one stream: one session on every core
    assert plan_instances(4, cores=2) == (2, 1)  # streams to spare: a session per core, one thread each
    assert plan_instances(3, cores=8) == (3, 2)
    assert plan_instances(4, cores=2, threads=2) == (1, 2)  # --threads fixes the threads per session
    with pytest.raises(ValueError, match="--threads"):
        plan_instances(2, cores=2, threads=0)
