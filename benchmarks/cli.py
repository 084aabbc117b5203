"""`autr bench`: model, MSDA-op and streaming benchmarks (see benchmarks/README.md).

Importing this module loads click only; torch, onnxruntime and the runtime are imported when a command runs.
Every refusal (bad argument, missing file) is one line on stderr with exit status 2.
"""
from __future__ import annotations

import sys

import click

__all__ = ["bench"]


def _fail(message: str, code: int = 2) -> None:
    click.secho(f"autr: {' '.join(str(message).split())}", fg="red", err=True)
    sys.exit(code)


def _refusals():
    """The exception types that mean "cannot start" (one line, exit 2)."""
    from autr.runtime.errors import StreamError

    from .core import BenchError

    types = [BenchError, StreamError]
    try:
        from autr.export.errors import ExportError

        types.append(ExportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _outputs(ctx, kind: str, body: dict, settings: dict, json_out, plot_out, md_out, torch=None) -> dict:
    from .core import command_line, environment, envelope, write_result

    result = envelope(kind, command_line(ctx), settings, environment(torch))
    result.update(body)
    if json_out:
        click.echo(f"wrote {write_result(result, json_out)}")
    if plot_out:
        from .plots import plot

        try:
            click.echo(f"wrote {plot(result, plot_out)}")
        except ValueError as exc:
            click.secho(f"autr: no plot: {exc}", fg="yellow", err=True)
    if md_out:
        from pathlib import Path

        from .report import document

        Path(md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(md_out).write_text(document(result), encoding="utf-8")
        click.echo(f"wrote {md_out}")
    return result


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: click.secho(msg, err=True, dim=True))


_out_options = [
    click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the result JSON here."),
    click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Write a PNG plot here."),
    click.option("--markdown", "md_out", type=click.Path(dir_okay=False), help="Write a markdown table here."),
    click.option("--quiet", "-q", is_flag=True, help="No progress lines."),
]


def out_options(fn):
    for opt in reversed(_out_options):
        fn = opt(fn)
    return fn


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench():
    """Benchmarks: the whole model per backend, the MSDA op, the streaming runtime, serving many streams."""


@bench.command("model")
@click.option("--checkpoint", help="Checkpoint (.safetensors) or 'default' (the embedded model).")
@click.option("--preset", help="An untrained preset instead (tiny, small, paper-r50, paper-pvt).")
@click.option("--onnx", type=click.Path(), help="Export directory for the ort rows (default: export into the cache).")
@click.option("--engine", "engines", multiple=True, type=click.Path(), help="TensorRT engine(s) for the trt rows.")
@click.option("--backend", "backends", default="torch,ort", show_default=True,
              help="Comma list of torch, ort, openvino (the optional extra), trt.")
@click.option("--precision", "precisions", default="fp32", show_default=True, help="Comma list of fp32, fp16, bf16, int8 (bf16: OpenVINO's bfloat16 inference precision on CPUs that have it; int8: the static Q/DQ graphs of `autr export onnx --int8`).")
@click.option("--frames", default="1,5", show_default=True, help="Comma list of T (frames per call).")
@click.option("--size", type=int, help="Input size H = W (default: the model's / the export's).")
@click.option("--warmup", default=2, show_default=True, help="Untimed calls per row.")
@click.option("--iters", default=10, show_default=True, help="Timed calls per row.")
@click.option("--rounds", default=1, show_default=True,
              help="Passes over all rows; each ratio is the median over the passes (for hosts whose speed drifts).")
@click.option("--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: their defaults).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="ONNX Runtime execution provider (auto: CUDA on a CUDA run when ORT has it).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Where exports are cached (default $AUTR_BENCH_CACHE or ~/.cache/autr/bench).")
@out_options
@click.pass_context
def model_cmd(ctx, checkpoint, preset, onnx, engines, backends, precisions, frames, size, warmup, iters, rounds,
              threads, device, provider, cache_dir, json_out, plot_out, md_out, quiet):
    """Whole-model latency, throughput and memory per backend, precision and T, against the research-code
    baseline (PyTorch eager, reference MSDA, float32), which is always the first row."""
    from .core import BenchError

    try:
        from .model_bench import validate_model_args

        b, p, f = validate_model_args(backends, precisions, frames, onnx, engines, checkpoint, preset, size, warmup,
                                      iters, threads, rounds)
    except BenchError as exc:
        _fail(str(exc))
    refusals = _refusals()
    try:
        import torch

        from .model_bench import format_model, run_model_bench

        body = run_model_bench(b, p, f, checkpoint, preset, onnx, engines, size, warmup, iters, threads, device,
                               provider, cache_dir, log=_log(quiet), rounds=rounds)
    except refusals as exc:
        _fail(str(exc))
    settings = {"backends": b, "precisions": p, "frames": f, "size": body["size"], "warmup": warmup, "iters": iters,
                "rounds": rounds,
                "threads": threads, "device": body["device_used"], "provider": body["provider"],
                "engines": list(engines), "onnx": onnx}
    click.echo(format_model(body))
    _outputs(ctx, "model", body, settings, json_out, plot_out, md_out, torch)


@bench.command("msda")
@click.option("--preset", "presets", default="small,paper-r50", show_default=True,
              help="Comma list of presets whose MSDA sizes are timed.")
@click.option("--size", default=224, show_default=True, help="Input size the model sizes are derived at.")
@click.option("--frames", default=5, show_default=True, help="T: the batch N of the model's MSDA calls.")
@click.option("--cases", default="model,detr", show_default=True, help="model (the presets' sizes), detr, or both.")
@click.option("--impl", "impls", default="reference,ort,cuda,trt", show_default=True,
              help="Comma list of reference, ort (the ONNX Runtime custom-op library), cuda, trt.")
@click.option("--dtype", "dtypes", default="fp32,fp16", show_default=True, help="Comma list of fp32, fp16, fp64.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--warmup", default=3, show_default=True)
@click.option("--iters", default=20, show_default=True)
@click.option("--threads", type=int, help="torch intra-op threads.")
@out_options
@click.pass_context
def msda_cmd(ctx, presets, size, frames, cases, impls, dtypes, device, warmup, iters, threads, json_out, plot_out,
             md_out, quiet):
    """The MSDA op alone: time, bytes moved and achieved bandwidth per implementation, at the model's sizes and
    at Deformable-DETR size."""
    from .core import BenchError

    try:
        from .msda_bench import validate_msda_args

        pr, cs, im, dt = validate_msda_args(presets, size, frames, cases, impls, dtypes, warmup, iters, threads)
    except BenchError as exc:
        _fail(str(exc))
    refusals = _refusals()
    try:
        import torch

        from .msda_bench import format_msda, run_msda_bench

        body = run_msda_bench(pr, size, frames, cs, im, dt, device, warmup, iters, threads, log=_log(quiet))
    except refusals as exc:
        _fail(str(exc))
    settings = {"presets": pr, "size": size, "frames": frames, "cases": cs, "impls": im, "dtypes": dt,
                "device": body["device_used"], "warmup": warmup, "iters": iters, "threads": threads}
    click.echo(format_msda(body))
    _outputs(ctx, "msda", body, settings, json_out, plot_out, md_out, torch)


@bench.command("stream")
@click.option("--backend", default="ort", show_default=True, help="ort, torch, trt or fake (runtime overhead).")
@click.option("--checkpoint", help="Checkpoint or 'default' (ort: exported into the cache; torch: run directly).")
@click.option("--preset", help="An untrained preset instead.")
@click.option("--onnx", type=click.Path(), help="Export directory / portable graph for --backend ort.")
@click.option("--engine", type=click.Path(), help="TensorRT engine for --backend trt.")
@click.option("--input", "input_file", type=click.Path(), help="A media file (default: a SynthAVS video made here).")
@click.option("--seconds", default=5.0, show_default=True, help="Length of the generated video.")
@click.option("--fps", default=10, show_default=True, help="Frame rate of the generated video.")
@click.option("--video-size", default="224", show_default=True,
              help="Side (224) or WIDTHxHEIGHT (640x480) of the generated video.")
@click.option("--size", type=int, help="Model input size (default: the model's).")
@click.option("--window", default=1, show_default=True, help="T: frames per model call.")
@click.option("--modes", default="realtime,fast", show_default=True, help="realtime, fast, or both.")
@click.option("--threads", type=int, help="Inference threads.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), help="Export cache folder.")
@out_options
@click.pass_context
def stream_cmd(ctx, backend, checkpoint, preset, onnx, engine, input_file, seconds, fps, video_size, size, window,
               modes, threads, provider, device, cache_dir, json_out, plot_out, md_out, quiet):
    """The streaming runtime end to end on a file, paced in real time and as fast as possible: windows/s,
    end-to-end latency percentiles, drops."""
    from .core import BenchError

    try:
        from .stream_bench import validate_stream_args

        md = validate_stream_args(backend, checkpoint, preset, onnx, engine, input_file, seconds, fps, size, window,
                                  modes, threads, video_size)
    except BenchError as exc:
        _fail(str(exc))
    refusals = _refusals()
    try:
        from .stream_bench import format_stream, run_stream_bench

        body = run_stream_bench(backend, checkpoint, preset, onnx, engine, input_file, seconds, fps, video_size, size,
                                window, md, threads, provider, device, cache_dir, log=_log(quiet))
    except refusals as exc:
        _fail(str(exc))
    settings = {"backend": backend, "window": window, "modes": md, "threads": threads, "provider": provider,
                "device": device, "seconds": seconds, "fps": fps, "video_size": video_size}
    click.echo(format_stream(body))
    torch = sys.modules.get("torch")
    _outputs(ctx, "stream", body, settings, json_out, plot_out, md_out, torch)
    errors = [f"{m}: {r['error']}" for m, r in body["runs"].items() if r.get("error")]
    if errors:
        _fail("; ".join(errors), 1)


@bench.command("serve")
@click.option("--streams", default="1,2,4,8", show_default=True, help="Comma list of stream counts N.")
@click.option("--seconds", default=10.0, show_default=True, help="Timed span per N and path.")
@click.option("--warmup", default=2.0, show_default=True, help="Untimed seconds before each timed span.")
@click.option("--onnx", "export", default="default", show_default=True, type=click.Path(),
              help="Export directory (or 'default', the shipped export).")
@click.option("--paths", default="inprocess,server", show_default=True,
              help="inprocess (the runtime's batcher) and/or server (KServe ModelServer over gRPC on loopback).")
@click.option("--instances", type=int, default=None,
              help="ONNX Runtime sessions behind the batcher (default: the serving plan, "
                   "autr.runtime.threads.plan_instances: one session per core on one thread each when N >= 2).")
@click.option("--threads", type=int, help="Intra-op threads per session (default: the serving plan's).")
@click.option("--max-delay-ms", default=2.0, show_default=True, help="The batcher's queue delay.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the result JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Write a PNG plot here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def serve_cmd(ctx, streams, seconds, warmup, export, paths, instances, threads, max_delay_ms, json_out, plot_out,
              quiet):
    """Many streams on one model: aggregate windows/s and per-stream p50 / p99 for N closed-loop streams, batched
    in one process and through an Open Inference Protocol server."""
    from .core import BenchError

    try:
        from .serve_bench import validate_serve_args

        n, p = validate_serve_args(streams, seconds, warmup, instances, threads, export, paths)
    except BenchError as exc:
        _fail(str(exc))
    refusals = _refusals()
    try:
        from .serve_bench import format_serve, run_serve_bench

        body = run_serve_bench(n, seconds, warmup, export, instances, threads, max_delay_ms, p, log=_log(quiet))
    except refusals as exc:
        _fail(str(exc))
    settings = {"streams": n, "seconds": seconds, "warmup": warmup, "export": export, "paths": p,
                "instances": instances, "threads": threads, "max_delay_ms": max_delay_ms,
                "window": "T = 1 per stream, closed loop"}
    click.echo(format_serve(body))
    result = _outputs(ctx, "serve", body, settings, json_out, None, None)
    if plot_out:
        from .serve_bench import plot_serve

        click.echo(f"wrote {plot_serve(result, plot_out)}")
    errors = [e for r in body["rows"] for e in r["errors"]]
    if errors:
        _fail("; ".join(errors[:3]), 1)


@bench.command("readme")
@click.option("--readme", type=click.Path(dir_okay=False), help="README to update (default: the repository's).")
@click.option("--results", type=click.Path(file_okay=False), help="Results folder (default benchmarks/results).")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the section is out of date.")
def readme_cmd(readme, results, check):
    """Regenerate the README's performance section from the committed results (python -m autr.benchmarks.readme)."""
    from .readme import main

    argv = (["--readme", readme] if readme else []) + (["--results", results] if results else []) + \
        (["--check"] if check else [])
    code = main(argv)
    if code:
        sys.exit(code)
