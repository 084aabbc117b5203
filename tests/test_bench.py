"""`autr bench` (model / msda / stream), its plots and markdown, the README generator and the GPU check's
CPU-testable parts. The `tiny` preset at 64x64 with one thread and a few iterations; one export (made by
the model benchmark into a per-module cache) is reused by the stream benchmark."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from autr.cli import main

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def exports_in(cache: Path) -> list:
    """The ONNX exports in a bench cache (not the per-precision engine folders next to them)."""
    return sorted(p for p in cache.iterdir() if (p / "model.json").is_file() and ".trt-" not in p.name)


def run_cli(args):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


def check_envelope(res: dict, kind: str, command: str) -> None:
    assert res["autr_bench"] == 1 and res["kind"] == kind
    when = dt.datetime.fromisoformat(res["date"])
    assert when.utcoffset() == dt.timedelta(0)
    assert res["command"].startswith(command)
    assert res["device"]["cpu"] and res["device_label"]
    assert {"numpy", "python"} <= set(res["versions"])
    assert res["threads"]["cpu_count"] >= 1
    assert isinstance(res["settings"], dict)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def model_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-model")
    args = ["model", "--preset", "tiny", "--size", str(SIZE), "--backend", "torch,ort,trt", "--frames", "1,2",
            "--warmup", "1", "--iters", "3", "--threads", "1", "--cache", str(cache), "--quiet",
            "--json", str(out / "model.json"), "--plot", str(out / "model.png"), "--markdown", str(out / "model.md")]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "model.json").read_text()), result


def test_bench_cli_import_loads_click_only():
    code = ("import sys, autr.benchmarks.cli; heavy = [m for m in ('torch', 'numpy', 'onnxruntime', 'matplotlib', "
            "'autr.runtime') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bench_model_baseline_first_and_ratios(model_run):
    _, res, result = model_run
    check_envelope(res, "model", "autr bench model")
    assert {"torch", "onnxruntime"} <= set(res["versions"])
    assert res["threads"]["torch_intra_op"] == 1 and res["settings"]["threads"] == 1
    rows = res["rows"]
    # the research-code baseline: torch, fp32, eager, reference MSDA, first, one row per T
    assert [(r["backend"], r["precision"], r["variant"], r["frames"]) for r in rows[:2]] == \
        [("torch", "fp32", "eager, msda=reference", 1), ("torch", "fp32", "eager, msda=reference", 2)]
    assert all(r["baseline"] and r["status"] == "ok" and r["speedup_vs_baseline"] == 1.0 for r in rows[:2])
    ort = [r for r in rows if r["backend"] == "ort"]
    assert [(r["variant"].split(",")[0], r["frames"]) for r in ort] == \
        [("portable", 1), ("portable", 2), ("fused", 1), ("fused", 2)]
    assert all(r["status"] == "ok" for r in ort if r["variant"].startswith("portable"))
    from autr.plugins import register_msda
    import onnxruntime

    library_reason = register_msda(onnxruntime.SessionOptions())
    for r in ort:  # fused rows run where the custom-op library is built, else say why not
        if r["variant"].startswith("fused"):
            assert (r["status"] == "ok" and r["msda_library"]) if library_reason is None else \
                (r["status"] == "skipped" and library_reason in r["reason"])
    for r in rows:
        if r["status"] != "ok":
            continue
        lat = r["latency_ms"]
        assert lat["count"] == 3 and len(r["samples_ms"]) == 3
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput_fps"] == pytest.approx(r["frames"] / (lat["p50"] / 1e3), rel=1e-3)
        assert r["memory"]["peak_rss_mb"] > 0 and r["memory"]["peak_rss_delta_mb"] >= 0
        if r.get("baseline"):
            assert "paired" not in r
            continue
        # every other row is compared with the baseline and the floor measured right before and after it
        paired = r["paired"]
        before, after = paired["baseline_p50_ms_before_after"]
        assert paired["baseline_p50_ms"] == pytest.approx((before + after) / 2, abs=1e-3) and before > 0 < after
        assert paired["floor_ms_per_frame"] == pytest.approx(
            res["model"]["gflops_per_frame"] / paired["gemm_gflops"] * 1e3, rel=1e-2)
        assert r["speedup_vs_baseline"] == pytest.approx(paired["baseline_p50_ms"] / lat["p50"], rel=1e-2)
        assert r["vs_floor"] == pytest.approx(lat["p50"] / (r["frames"] * paired["floor_ms_per_frame"]), rel=1e-2)
    # the compute floor: the model's GFLOPs at this run's GEMM speed, on the benchmark's threads
    floor = res["floor"]
    assert floor["gemm"]["gflops"] == max(floor["gemm_runs_gflops"]) > 0 and floor["gemm"]["threads"] == 1
    assert floor["ms_per_frame"] == pytest.approx(res["model"]["gflops_per_frame"] / floor["gemm"]["gflops"] * 1e3,
                                                  rel=1e-2)
    assert res["thread_plan"]["intra_op"] == 1 and "compute floor" in result.output
    # CUDA-only torch variants and TensorRT are listed with their reasons, not dropped
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert any(r["backend"] == "torch" and "cuda" in r["variant"] for r in skipped)
    trt = [r for r in rows if r["backend"] == "trt"]
    assert [r["frames"] for r in trt] == [1, 2]
    assert all(r["status"] == "skipped" and "TensorRT" in r["reason"] for r in trt)
    assert res["model"]["preset"] == "tiny" and res["size"] == SIZE and res["model"]["params_m"] > 0
    assert "ort fp32" in result.output and "skipped" in result.output


def test_bench_model_plot_and_markdown(model_run):
    out, res, _ = model_run
    assert (out / "model.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "model.md").read_text()
    assert md.startswith("### `autr bench model`") and res["command"] in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| backend | precision |")
    assert table[1].startswith("| torch (baseline) | fp32 | eager, msda=reference | 1 |")
    assert any("| trt | fp32 | engine | 1,2 | skipped:" in line for line in table)


def test_bench_model_reuses_the_export(model_run, cache):
    exports = exports_in(cache)
    assert len(exports) == 1
    side = json.loads((exports[0] / "model.json").read_text())
    assert side["frames"]["max"] == 2 and side["checkpoint"]["preset"] == "tiny"
    out = model_run[0]
    result = run_cli(["model", "--onnx", str(exports[0]), "--backend", "ort", "--frames", "1", "--iters", "1",
                      "--warmup", "0", "--threads", "1", "--quiet", "--json", str(out / "onnx.json")])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "onnx.json").read_text())
    assert res["model"]["source"]["source"] == "export" and res["export"]["dir"] == str(exports[0])
    assert [r["backend"] for r in res["rows"]] == ["torch", "ort", "ort"]  # portable and fused
    assert exports_in(cache) == exports  # nothing re-exported


@pytest.mark.parametrize("args, words", [
    (["--backend", "torch,tensorflow"], "unknown backend 'tensorflow'"),
    (["--frames", "0"], "--frames must be >= 1"),
    (["--frames", "1,x"], "bad frame count"),
    (["--precision", "int4"], "unknown precision"),
    (["--onnx", "/no/such/export"], "no such export directory"),
    (["--checkpoint", "/no/such.safetensors"], "no such file"),
    (["--size", "100"], "multiple of 32"),
    (["--frames", "9"], "at most T = 5"),
])
def test_bench_model_bad_inputs_exit_2_with_one_line(args, words):
    result = run_cli(["model", "--preset", "tiny", "--iters", "1", *args] if "--checkpoint" not in args
                     else ["model", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_bench_other_commands_refuse_bad_inputs():
    for args, words in ((["msda", "--impl", "magic"], "unknown implementation"),
                        (["msda", "--frames", "0"], "--frames must be >= 1"),
                        (["msda", "--preset", "huge"], "unknown preset"),
                        (["msda", "--preset", "tpavi-small"], "unknown preset"),  # no MSDA layer to time
                        (["stream", "--backend", "onnx"], "unknown backend"),
                        (["stream", "--input", "/no/such.mp4"], "no such file"),
                        (["stream", "--onnx", "/no/such/dir"], "not an export directory or ONNX file"),
                        (["stream", "--backend", "trt"], "--backend trt needs --engine"),
                        (["stream", "--window", "0"], "--window >= 1")):
        result = run_cli(args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, result.stderr)


# ------------------------------------------------------------------------------------------------- msda
def test_bytes_model_matches_a_hand_count():
    from autr.benchmarks.msda_bench import MsdaCase, bytes_moved

    # N=1, Lq=2 queries, M=1 head, D=2 channels, one level 2x3, P=1 point, float32:
    # each of the 2 samples reads 4 corners x 2 channels x 4 B = 32 B, its (x, y) 8 B, its weight 4 B -> 44 B;
    # each of the 2 outputs writes 2 channels x 4 B = 8 B.  2*44 + 2*8 = 104 B.
    case = MsdaCase("hand", n=1, lq=2, m=1, d=2, p=1, shapes=[(2, 3)])
    b = bytes_moved(case, "fp32")
    assert b["bytes"] == 104
    assert (b["value_reads"], b["location_weight_reads"], b["output_writes"]) == (64, 24, 16)
    # compulsory: value 6 positions x 2 ch (48 B) + locations/weights 2 x 3 (24 B) + output (16 B) = 88 B
    assert b["compulsory_bytes"] == 88
    assert bytes_moved(case, "fp16")["bytes"] == 52


def test_model_and_detr_cases():
    import autr
    from autr.benchmarks.msda_bench import detr_case, model_cases
    from autr.export.onnx_export import record_msda_calls
    from autr.transformer import MSDeformAttn

    model = autr.build_model("tiny", seed=0).eval()
    enc, dec = model_cases("tiny", SIZE, 2)
    calls = record_msda_calls(model, SIZE)
    assert [list(s) for s in enc.shapes] == [list(s) for s in calls[0]["spatial_shapes"]]
    attn = next(m for m in model.modules() if isinstance(m, MSDeformAttn))
    assert (enc.m, enc.p, enc.levels, enc.m * enc.d) == (attn.n_heads, attn.n_points, attn.n_levels,
                                                         model.cfg.d_model)
    assert enc.n == 2 and enc.lq == enc.s == 8 * 8 + 4 * 4 + 2 * 2 and dec.lq == model.cfg.n_queries
    detr = detr_case()
    assert (detr.n, detr.m, detr.d, detr.p, detr.levels) == (1, 8, 32, 4, 4)
    assert detr.lq == detr.s == 15000 + 3750 + 950 + 247


def test_bench_msda_on_cpu(tmp_path):
    out = tmp_path / "msda.json"
    result = run_cli(["msda", "--preset", "tiny", "--size", str(SIZE), "--frames", "2", "--cases", "model",
                      "--iters", "3", "--warmup", "1", "--threads", "1", "--quiet", "--json", str(out),
                      "--plot", str(tmp_path / "msda.png"), "--markdown", str(tmp_path / "msda.md")])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    check_envelope(res, "msda", "autr bench msda")
    from autr.benchmarks.msda_bench import MsdaCase, bytes_moved

    ok = [r for r in res["rows"] if r["status"] == "ok" and r["impl"] == "reference"]
    assert [(r["case"], r["impl"], r["dtype"]) for r in ok] == [("tiny@64 encoder", "reference", "fp32"),
                                                                 ("tiny@64 decoder", "reference", "fp32")]
    from autr.plugins import ort_ops  # the default --impl has the ONNX Runtime library's rows too
    import onnxruntime

    ort_rows = [r for r in res["rows"] if r["impl"] == "ort"]
    assert ort_rows and all(r["status"] == ("ok" if ort_ops.register_msda(onnxruntime.SessionOptions()) is None
                                            else "skipped") for r in ort_rows)
    cases = {c["name"]: c for c in res["cases"]}
    for r in ok:
        c = cases[r["case"]]
        case = MsdaCase(c["name"], c["n"], c["lq"], c["m"], c["d"], c["p"], [tuple(s) for s in c["shapes"]])
        assert r["bytes"] == bytes_moved(case, "fp32")["bytes"] > r["compulsory_bytes"] > 0
        gbs = r["bytes"] / (r["latency_ms"]["p50"] * 1e-3) / 1e9
        assert r["bandwidth_gbs"] == pytest.approx(gbs, rel=1e-2) and 0 < gbs < 1e4
        assert r["rel_error_vs_fp64"] < 1e-5 and r["rel_l2_error_vs_fp64"] < 1e-5
        assert r["speedup_vs_reference"] == 1.0
    reasons = {(r["impl"], r["dtype"]): r["reason"] for r in res["rows"] if r["status"] == "skipped"}
    assert "CUDA" in reasons[("cuda", "fp32")] and "TensorRT" in reasons[("trt", "fp32")]
    assert "float16" in reasons[("reference", "fp16")]
    assert (tmp_path / "msda.png").read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "msda.md").read_text()
    assert "| tiny@64 encoder | reference | fp32 |" in md and "| all cases | trt | fp16 | skipped:" in md


# ------------------------------------------------------------------------------------------------- stream
def test_synth_media_has_video_and_audio(tmp_path):
    import av

    from autr.benchmarks.stream_bench import make_synth_media

    path = make_synth_media(tmp_path / "s.mp4", seconds=1.5, fps=8, size=48)
    with av.open(str(path)) as c:
        assert c.streams.video and c.streams.audio
        assert c.streams.audio[0].codec_context.sample_rate == 16000
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == 12


def test_bench_stream_on_a_short_file(model_run, cache, tmp_path):
    out = tmp_path / "stream.json"
    result = run_cli(["stream", "--preset", "tiny", "--size", str(SIZE), "--seconds", "2", "--fps", "10",
                      "--video-size", str(SIZE), "--threads", "1", "--cache", str(cache), "--quiet",
                      "--json", str(out), "--plot", str(tmp_path / "stream.png")])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    check_envelope(res, "stream", "autr bench stream")
    assert list(res["runs"]) == ["realtime", "fast"]
    for mode, r in res["runs"].items():
        assert r["error"] is None and r["stopped_by"] == "end of input"
        assert r["captured"] == 20 and r["output"] + r["dropped"] <= r["captured"] and r["output"] > 0
        assert r["windows_per_s"] > 0
        e = r["end_to_end_ms"]
        assert e["count"] == r["output"] and 0 < e["p50"] <= e["p90"] <= e["p99"] <= e["max"]
        assert r["report"]["backend"]["name"] == "ort"
    assert res["runs"]["fast"]["dropped"] == 0
    assert res["runs"]["realtime"]["wall_seconds"] >= 1.5  # paced like the 2 s file
    assert (tmp_path / "stream.png").read_bytes()[:8] == PNG_MAGIC
    # the model benchmark's export (T 1..2) served the stream (T = 1): nothing new in the cache
    assert len(exports_in(cache)) == 1


def test_bench_stream_through_the_torch_backend_honours_device_and_threads(tmp_path):
    import torch

    out = tmp_path / "stream-torch.json"
    before = torch.get_num_threads()
    try:
        result = run_cli(["stream", "--backend", "torch", "--preset", "tiny", "--size", str(SIZE), "--seconds", "1",
                          "--fps", "5", "--video-size", str(SIZE), "--threads", "1", "--device", "auto",
                          "--modes", "fast", "--quiet", "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    run = json.loads(out.read_text())["runs"]["fast"]
    assert run["error"] is None and run["output"] == 5 and run["report"]["backend"]["name"] == "torch"


# ------------------------------------------------------------------------------------------------- README
def test_readme_generator_replaces_only_the_marked_section(model_run, tmp_path):
    from autr.benchmarks.readme import END, START, main as readme_main

    results = tmp_path / "results"
    results.mkdir()
    (results / "model_cpu.json").write_text((model_run[0] / "model.json").read_text())
    (results / "model_cpu.png").write_bytes((model_run[0] / "model.png").read_bytes())
    (results / "presets_cpu.json").write_text('{"size": 224, "presets": []}')  # not a bench result: skipped
    accuracy = ROOT / "benchmarks" / "results" / "precision_accuracy_cpu.json"
    (results / "precision_accuracy_cpu.json").write_text(accuracy.read_text())
    before, after = "# Title\n\nIntro text.\n\n## Performance\n\n", "\n\n## Next section\n\nMore text.\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"{before}{START}\nold hand-typed numbers\n{END}{after}")
    assert readme_main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    assert text.startswith(before + START) and text.endswith(END + after)
    section = text.split(START)[1].split(END)[0]
    res = json.loads((results / "model_cpu.json").read_text())
    assert "old hand-typed" not in section and "do not edit by hand" in section
    assert "`autr bench model` — tiny at 64x64" in section and res["command"] in section and res["date"] in section
    assert "| torch (baseline) | fp32 | eager, msda=reference | 1 |" in section
    assert "](results/model_cpu.json)" in section and "](results/model_cpu.png)" in section
    assert "presets_cpu" not in section
    # the accuracy of the exported precisions comes right after the speed table it goes with
    assert section.index("`autr bench model`") < section.index("`python -m autr.benchmarks.precision_accuracy` — "
                                                               "accuracy of the exported precisions")
    assert "| portable_int8 | ONNX Runtime CPU | int8" in section
    assert readme_main(["--readme", str(readme), "--results", str(results)]) == 0
    assert readme.read_text() == text  # idempotent
    assert readme_main(["--readme", str(readme), "--results", str(results), "--check"]) == 0
    readme.write_text(text.replace("| torch (baseline)", "| torch (edited)", 1))
    assert readme_main(["--readme", str(readme), "--results", str(results), "--check"]) == 1
    readme.write_text("# no markers here\n")
    assert readme_main(["--readme", str(readme), "--results", str(results)]) == 2
    assert readme.read_text() == "# no markers here\n"


def test_readme_via_the_cli_and_as_a_module(tmp_path):
    from autr.benchmarks.readme import END, START

    readme = tmp_path / "R.md"
    readme.write_text(f"a\n{START}{END}\nb\n")
    empty = tmp_path / "none"
    empty.mkdir()
    result = run_cli(["readme", "--readme", str(readme), "--results", str(empty)])
    assert result.exit_code == 0, result.output
    assert "No benchmark results are committed yet." in readme.read_text()
    proc = subprocess.run([sys.executable, "-m", "autr.benchmarks.readme", "--readme", str(readme), "--results",
                           str(empty), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------------- GPU check
@pytest.mark.parametrize("how", [["-m", "autr.benchmarks.gpu_check"], [str(ROOT / "benchmarks" / "gpu_check.py")]])
def test_gpu_check_without_cuda_exits_2_with_one_line(how, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, *how, "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_targets_on_synthetic_numbers():
    from autr.benchmarks.gpu_check import TARGETS, check_targets, format_targets, result_path

    good = {"msda_forward_fp32_max_error": 3e-7, "msda_forward_fp16_max_error": 4e-4,
            "msda_forward_bf16_max_error": 4e-3, "msda_gradcheck": 1, "msda_bf16_autocast_backward": 1,
            "msda_kernel_speedup_model": 12.0, "msda_kernel_speedup_detr": 7.5,
            "msda_kernel_vs_detr_baseline_fp16": 1.8, "whole_model_speedup_small": 2.4,
            "whole_model_speedup_paper-r50": 3.1}
    res = check_targets(good)
    assert [t["name"] for t in res] == list(TARGETS) and all(t["passed"] for t in res)
    bad = dict(good, msda_kernel_speedup_detr=4.9, msda_forward_fp32_max_error=2e-5)
    del bad["whole_model_speedup_small"]
    res = {t["name"]: t["passed"] for t in check_targets(bad)}
    assert not res["msda_kernel_speedup_detr"] and not res["msda_forward_fp32_max_error"]
    assert not res["whole_model_speedup_small"] and res["msda_kernel_speedup_model"]
    text = format_targets(check_targets(bad))
    assert "FAIL  msda_kernel_speedup_detr: 4.9 (target >= 5.0)" in text
    assert "FAIL  whole_model_speedup_small: not measured" in text
    assert "PASS  msda_gradcheck" in text
    p = result_path(None, "NVIDIA H100 80GB HBM3", "2025-01-02T03:04:05+00:00")
    assert p.name == "gpu_nvidia-h100-80gb-hbm3_2025-01-02.json" and p.parent.name == "results"
    assert result_path("x/y.json", "gpu", "2025-01-02") == Path("x/y.json")


def test_gpu_check_writes_the_readme_gpu_section(tmp_path):
    """The README's GPU section is rendered from a result (synthetic rows here: the check itself needs a GPU)."""
    from autr.benchmarks.gpu_check import (README_END, README_START, check_targets, render_gpu_section,
                                           update_readme_section)

    kernel = [{"case": "deformable-detr", "dtype": dt, "impl": impl, "median_ms": ms, "bandwidth_gbs": 100.0,
               "speedup_vs_reference": round(2.0 / ms, 3), "speedup_vs_detr_baseline": round(0.5 / ms, 3)}
              for dt in ("fp32", "bf16") for impl, ms in (("reference", 2.0), ("kernel", 0.1), ("detr", 0.5))]
    row = lambda prec, var, t, p50, base=False: {"precision": prec, "variant": var, "frames": t, "status": "ok",  # noqa
                                                 "latency_ms": {"p50": p50}, "throughput_fps": t / p50 * 1e3,
                                                 "baseline": base}
    rows = [row("fp32", "eager, msda=reference", 5, 40.0, True), row("bf16", "cuda-graph, msda=cuda", 5, 10.0)]
    from autr.benchmarks import model_bench

    model_bench.add_ratios(rows)
    rows.append({"precision": "fp16", "variant": "eager, msda=cuda", "frames": 1, "status": "failed",
                 "reason": "RuntimeError: boom"})
    result = {"device_label": "NVIDIA H100 80GB HBM3", "date": "2026-12-01T00:00:00+00:00", "passed": False,
              "command": "python -m autr.benchmarks.gpu_check", "seconds": 301.5, "settings": {"size": 224},
              "targets": check_targets({"msda_gradcheck": 1}), "kernel": kernel, "whole_model": {"small": rows},
              "errors": {}}
    section = render_gpu_section(result, "benchmarks/results/gpu_x.json")
    assert "| deformable-detr | bf16 | kernel | 0.1000 | 100.0 | 20.00x | 5.00x |" in section
    assert "| bf16 | cuda-graph, msda=cuda | 5 | 10.00 | 500.0 | 4.00x |" in section
    assert "| fp16 | eager, msda=cuda | 1 | failed: RuntimeError: boom | | |" in section
    assert "| msda_gradcheck | 1 | == 1 | PASS |" in section and "Some targets FAILED" in section
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## GPU\n{README_START}\nstale rows\n{README_END}\ntail\n")
    assert update_readme_section(readme, section)
    text = readme.read_text()
    assert "stale rows" not in text and text.endswith(f"{README_END}\ntail\n") and section in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# no markers\n")
    assert not update_readme_section(plain, section) and plain.read_text() == "# no markers\n"


def test_torch_runner_returns_the_models_masks_and_scores_on_cpu():
    import numpy as np
    import torch

    import autr
    from autr.benchmarks.model_bench import TorchRunner

    model = autr.build_model("tiny", seed=3).eval()
    frames = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    log_mel = np.full((2, 1, 96, 64), np.log(0.01), np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(frames), torch.from_numpy(log_mel))
    masks, scores = TorchRunner(model, "cpu", size=SIZE).infer(frames, log_mel)
    assert masks.dtype == np.float32 and masks.shape == (2, SIZE, SIZE) and scores.shape == (2,)
    np.testing.assert_allclose(masks, ref["masks"].numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)


def test_torch_runner_refuses_what_the_cpu_cannot_do():
    import autr
    from autr.benchmarks.model_bench import TorchRunner

    model = autr.build_model("tiny", seed=0)
    for kwargs, words in (({"precision": "fp16"}, "CUDA autocast"), ({"msda": "cuda"}, "CUDA tensors"),
                          ({"graphs": True}, "CUDA graphs need")):
        with pytest.raises(RuntimeError, match=words):
            TorchRunner(model, "cpu", **kwargs)


def test_peak_rss_sees_an_allocation():
    import numpy as np

    from autr.benchmarks.core import PeakRss

    with PeakRss() as mem:
        x = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
        del x
    r = mem.result()
    assert r["peak_rss_delta_mb"] >= 48 and r["peak_rss_mb"] >= r["rss_start_mb"]


def test_trt_engines_are_built_per_precision_next_to_the_export(model_run, cache, monkeypatch):
    """Without --engine, the trt rows build engines through autr.export.trt.build_engine, one folder per
    precision linked to the export (stubbed here: no TensorRT)."""
    from autr.benchmarks import model_bench
    from autr.export import trt as export_trt

    export = exports_in(cache)[0]
    calls = []

    def fake_build(directory, fp16=False, log=None, **kwargs):
        calls.append((Path(directory).name, fp16, sorted(p.name for p in Path(directory).iterdir())))
        return {"engine_path": str(Path(directory) / "model.engine")}

    monkeypatch.setattr(export_trt, "build_engine", fake_build)
    path = model_bench.build_bench_engine(export, "fp32")
    assert path == export.parent / f"{export.name}.trt-fp32" / "model.engine"
    assert calls == [(f"{export.name}.trt-fp32", False, ["model.json", "model.plugin.onnx"])]
    assert (path.parent / "model.plugin.onnx").read_bytes() == (export / "model.plugin.onnx").read_bytes()
    with pytest.raises(model_bench.BenchError, match="model.plugin.fp16.onnx not found"):
        model_bench.build_bench_engine(export, "fp16")  # the test export has no float16 graphs


def test_benchmarks_called_from_python_check_their_arguments_as_the_cli_does():
    from autr.benchmarks.core import BenchError
    from autr.benchmarks.model_bench import run_model_bench
    from autr.benchmarks.msda_bench import run_msda_bench
    from autr.benchmarks.stream_bench import run_stream_bench

    for call, words in ((lambda: run_model_bench(backends=("torch", "magic")), "unknown backend 'magic'"),
                        (lambda: run_model_bench(frames=(1, 0)), "--frames must be >= 1"),
                        (lambda: run_model_bench(size=100), "multiple of 32"),
                        (lambda: run_msda_bench(dtypes=["fp8"]), "unknown dtype 'fp8'"),
                        (lambda: run_msda_bench(iters=0), "--iters >= 1"),
                        (lambda: run_stream_bench(modes=("slow",)), "unknown mode 'slow'"),
                        (lambda: run_stream_bench(threads=0), "--threads must be >= 1")):
        with pytest.raises(BenchError, match=words):
            call()


def test_cached_export_remade_when_the_exporter_changed(tmp_path, monkeypatch):
    """An export cached by a toolkit that traced other graphs (an older graph revision) is not reused."""
    import json

    import autr.export.onnx_export as onnx_export
    from autr.benchmarks import model_bench
    from autr.model import build_model

    model = build_model("tiny")
    digest = onnx_export.weights_digest(model)
    calls = []

    def fake_export(out, **kw):  # what the real exporter returns: the sidecar of what it wrote
        calls.append(kw)
        return {"weights_sha256": digest}

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    target = tmp_path / f"tiny-64-{digest[:12]}"
    target.mkdir()

    def cache(revision):
        (target / "model.json").write_text(json.dumps({
            "weights_sha256": digest, "input_size": [64, 64], "frames": {"max": 5}, "graphs": {},
            "exporter": {"graph_revision": revision}}))
        return model_bench.cached_export(model, 64, 5, False, cache_dir=tmp_path)

    assert cache(onnx_export.GRAPH_REVISION) == target and calls == []
    assert cache(onnx_export.GRAPH_REVISION - 1) == target and len(calls) == 1 and calls[0]["frames"] == 5


def test_passes_merge_into_one_row_with_median_ratios():
    """--rounds N: a row's latency pools every pass's samples; its ratios are the median of the passes' own
    (each pass compared with the baseline and floor measured around it); a row that failed once is reported."""
    from autr.benchmarks import model_bench

    def row(label, p50s, paired_base, status="ok"):
        r = {"label": label, "frames": 1, "status": status, "samples_ms": list(p50s),
             "latency_ms": {"p50": sorted(p50s)[len(p50s) // 2]},
             "paired": {"baseline_p50_ms": paired_base, "floor_ms_per_frame": 5.0}}
        return r if status == "ok" else {"label": label, "frames": 1, "status": status, "reason": "boom"}

    passes = [[row("ort", [10.0, 10.0, 10.0], 40.0), row("ov", [8.0], 30.0)],
              [row("ort", [20.0, 20.0, 20.0], 44.0), row("ov", [8.0], 30.0, status="failed")],
              [row("ort", [11.0, 11.0, 11.0], 33.0), row("ov", [8.0], 30.0)]]
    for rows in passes:
        model_bench.add_ratios(rows, 7.0)
    merged = model_bench.merge_passes(passes)
    ort = merged[0]
    assert len(ort["samples_ms"]) == 9 and ort["latency_ms"]["p50"] == 11.0
    assert [p["speedup_vs_baseline"] for p in ort["passes"]] == [4.0, 2.2, 3.0]
    assert ort["speedup_vs_baseline"] == 3.0 and ort["vs_floor"] == 2.2  # medians of 4/2.2/3 and 2/4/2.2
    assert merged[1]["status"] == "failed" and merged[1]["reason"] == "boom"
    assert model_bench.merge_passes(passes[:1]) is passes[0]


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_bf16_rows_are_openvinos_and_the_others_say_why_not(model_run, cache, tmp_path):
    """`--precision bf16`: OpenVINO computes the fp32 portable graph in bfloat16 where the CPU has the
    arithmetic; ONNX Runtime and TensorRT rows say in one line why they have none."""
    from autr.benchmarks import openvino_runner

    out = tmp_path / "bf16.json"
    result = run_cli(["model", "--preset", "tiny", "--size", str(SIZE), "--backend", "ort,openvino,trt",
                      "--precision", "bf16", "--frames", "1", "--warmup", "1", "--iters", "2", "--threads", "1",
                      "--cache", str(cache), "--quiet", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"] if not r.get("baseline")}
    assert set(rows) == {"ort", "openvino", "trt"} and all(r["precision"] == "bf16" for r in rows.values())
    assert rows["ort"]["status"] == "skipped" and "no bfloat16 one" in rows["ort"]["reason"]
    assert rows["trt"]["status"] == "skipped"
    ov = rows["openvino"]
    if not openvino_runner.available():
        assert ov["status"] == "skipped" and "openvino" in ov["reason"]
    elif _cpu_has_bf16():
        assert ov["status"] == "ok" and ov["config"]["INFERENCE_PRECISION_HINT"] == "bf16"
        assert ov["latency_ms"]["p50"] > 0 and ov["speedup_vs_baseline"] > 0
    else:
        assert ov["status"] == "skipped" and "no bf16 arithmetic" in ov["reason"]
