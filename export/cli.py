"""`autr export ...`: the click group of the export room (registered by `autr.cli`).

Importing this module is light (click only): every command imports torch / onnx when it runs.
"""
from __future__ import annotations

import json
import sys

import click

from autr.export.int8 import CALIB_SEED as INT8_CALIB_SEED  # these modules import torch / onnx only when they run
from autr.export.int8 import DEFAULT_CLIPS as INT8_DEFAULT_CLIPS
from autr.export.int8 import EXCLUDE_CHOICES as INT8_EXCLUDE
from autr.export.int8 import METHODS as INT8_METHODS
from autr.export.onnx_export import DEFAULT_OPSET
from autr.export.trt import DEFAULT_WORKSPACE_GB


def _fail(message: str, code: int = 2) -> None:
    """One clear line on stderr, exit status 2, no traceback."""
    click.secho(f"autr: {message}", fg="red", err=True)
    sys.exit(code)


def _log(quiet: bool):
    return None if quiet else (lambda msg: click.echo(msg, err=True))


@click.group("export")
def export():
    """Export to ONNX (plugin + portable graphs), check parity, benchmark, build TensorRT engines."""


@export.command("onnx")
@click.option("--checkpoint", default=None,
              help="Checkpoint file, or 'default' (the embedded model; the default without --preset).")
@click.option("--preset", default=None, help="Export an untrained preset instead (for testing the pipeline).")
@click.option("--seed", default=0, show_default=True, help="Initialisation seed with --preset.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (replaced atomically).")
@click.option("--frames", "t_max", type=int, default=None,
              help="T_MAX: the longest clip the graphs accept (1..max_frames; default max_frames).")
@click.option("--size", type=int, default=None, help="Input size H = W (default: the model's image_size).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset (17 or newer).")
@click.option("--fp16", is_flag=True,
              help="Also write float16 graphs (model.plugin.fp16.onnx, model.portable.fp16.onnx).")
@click.option("--int8", is_flag=True,
              help="Also write static INT8 QDQ graphs (model.portable.int8.onnx, model.plugin.int8.onnx), "
                   "calibrated on SynthAVS clips.")
@click.option("--int8-clips", type=int, default=None,
              help=f"Calibration clips of 5 frames (default {INT8_DEFAULT_CLIPS}; SynthAVS seed {INT8_CALIB_SEED}).")
@click.option("--int8-method", default=None, help=f"Calibration: {', '.join(INT8_METHODS)} (default minmax).")
@click.option("--int8-exclude", default=None, metavar="LIST",
              help=f"Leave in float32 (comma-separated): {', '.join(INT8_EXCLUDE)}.")
@click.option("--fp16-weights", is_flag=True,
              help="Store the float32 graphs' weights as float16 (half the files; float32 compute, checked for "
                   "parity with PyTorch).")
@click.option("--skip-check", is_flag=True,
              help="Skip the parity check against PyTorch (the fp16 and int8 errors are still measured).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def export_onnx_cmd(checkpoint, preset, seed, out, t_max, size, opset, fp16, int8, int8_clips, int8_method,
                    int8_exclude, fp16_weights, skip_check, quiet):
    """Write DIR/model.plugin.onnx, DIR/model.portable.onnx and the sidecar DIR/model.json."""
    from autr.export.errors import ExportError
    from autr.export.onnx_export import export_onnx

    try:
        sidecar = export_onnx(out, checkpoint=checkpoint, preset=preset, seed=seed, size=size, frames=t_max,
                              opset=opset, fp16=fp16, int8=int8, int8_clips=int8_clips, int8_method=int8_method,
                              int8_exclude=int8_exclude or (), check=not skip_check, weights_fp16=fp16_weights,
                              log=_log(quiet))
    except ExportError as exc:
        _fail(str(exc))
    click.echo(f"{'graph':<15} {'file':<26} {'MiB':>7} {'nodes (exported → final)':>25} {'MSDA':>5}")
    for kind, rec in sidecar["graphs"].items():
        n = rec["nodes"]
        click.echo(f"{kind:<15} {rec['file']:<26} {rec['bytes'] / 2 ** 20:>7.2f} "
                   f"{str(n['exported']) + ' → ' + str(n['final']):>25} {rec['msda_nodes']:>5}")
    for kind, rows in (sidecar.get("parity") or {}).items():
        if isinstance(rows, dict):
            worst = max(r["max_abs"] for r in rows.values())
            iou = min(r["iou_min"] for r in rows.values())
            click.echo(f"parity {kind:<15} max|Δ| logits {worst:.2e}  mask IoU {iou:.5f}  ({', '.join(rows)})")
        else:
            click.echo(f"parity {kind:<15} {rows}")
    for kind in ("portable_int8", "plugin_int8"):
        rec = sidecar["graphs"].get(kind)
        if rec is None:
            continue
        err = rec["error_vs_fp32_graph"]
        if isinstance(err, dict):
            click.echo(f"int8 {kind:<17} vs fp32 graph: max|Δ| logits {err['max_abs']:.2e}  mean {err['mean_abs']:.2e}  "
                       f"mask IoU min {err['iou_min']:.4f} mean {err['iou_mean']:.4f}  ({err['clips']})")
        else:
            click.echo(f"int8 {kind:<17} {err}")
    if "portable_int8" in sidecar["graphs"]:
        q = sidecar["graphs"]["portable_int8"]["quantization"]
        ops = ", ".join(f"{op} {c['quantized']}/{c['quantized'] + c['float']}" for op, c in q["quantized_ops"].items())
        cal = q["calibration"]
        click.echo(f"int8: quantized {ops}; {cal['method']} on {cal['frames']} frames (SynthAVS seed {cal['seed']}), "
                   f"{q['quantize_seconds']:.1f} s")
    click.echo(f"opset {sidecar['opset']}, T 1..{sidecar['frames']['max']}, input {sidecar['input_size'][0]}x"
               f"{sidecar['input_size'][1]}, {sidecar['export_seconds']:.1f} s; sidecar {out}/model.json")


@export.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", default=None, help="Checkpoint to compare with (default: the one in the sidecar).")
@click.option("--frames", "t", type=int, default=None, help="Only this clip length (default: 1 and T_MAX).")
@click.option("--runs", default=5, show_default=True, help="Timed runs per latency figure (after one warm-up).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random and SynthAVS clips.")
@click.option("--no-synth", is_flag=True, help="Skip the SynthAVS clip.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the rows as JSON here.")
def verify_cmd(directory, checkpoint, t, runs, seed, no_synth, json_out):
    """Run the same clips through PyTorch and the exported graphs in ONNX Runtime; print the agreement."""
    from autr.export.errors import ExportError
    from autr.export.verify import format_table, verify_export

    try:
        result = verify_export(directory, checkpoint=checkpoint, frames=t, runs=runs, seed=seed,
                               synth=not no_synth)
    except ExportError as exc:
        _fail(str(exc))
    click.echo(format_table(result))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=2)
        click.echo(f"wrote {json_out}")
    if not result["ok"]:
        _fail("parity check failed: an fp32 graph disagrees with PyTorch beyond the limits above", code=1)


@export.command("bench")
@click.option("--preset", default="small", show_default=True, help="Untrained preset to export and time.")
@click.option("--checkpoint", default=None, help="Time this checkpoint (file or 'default') instead of --preset.")
@click.option("--size", default=224, show_default=True, help="Input size (H = W).")
@click.option("--runs", default=10, show_default=True, help="Timed runs per figure (after --warmup runs).")
@click.option("--warmup", default=2, show_default=True)
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--fp16", is_flag=True, help="Also export (and report) the float16 graphs.")
@click.option("--threads", type=int, multiple=True,
              help="Thread count for PyTorch and ONNX Runtime (repeatable; 0 = their defaults; default: 0).")
@click.option("--out", "json_out", type=click.Path(dir_okay=False),
              help="Write JSON here (e.g. benchmarks/results/export_cpu.json).")
def bench_cmd(preset, checkpoint, size, runs, warmup, opset, fp16, threads, json_out):
    """Export time, file sizes, node counts, ONNX Runtime vs PyTorch CPU latency at T=1 and T=5."""
    from autr.export.bench import format_bench, run_bench, write_json
    from autr.export.errors import ExportError

    try:
        result = run_bench(preset=preset, checkpoint=checkpoint, size=size, runs=runs, warmup=warmup, opset=opset, fp16=fp16,
                           threads=tuple(t or None for t in threads) or (None,), log=_log(False))
    except ExportError as exc:
        _fail(str(exc))
    click.echo(format_bench(result))
    if json_out:
        click.echo(f"wrote {write_json(result, json_out)}")


@export.command("trt")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--fp16", is_flag=True,
              help="Build from model.plugin.fp16.onnx (the float16 graph; strongly typed network).")
@click.option("--workspace", "workspace_gb", type=float, default=DEFAULT_WORKSPACE_GB, show_default=True, metavar="GB",
              help="Builder workspace memory limit, GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file: read when present, written back after the build.")
@click.option("--profile", default=None, metavar="MIN,OPT,MAX",
              help="Optimisation profile over T (default 1,1,T_MAX from DIR/model.json).")
@click.option("--plugin", "plugin_library", type=click.Path(exists=True, dir_okay=False),
              help="MSDA plugin library (default: autr.plugins.library_path()).")
@click.option("--force", is_flag=True, help="Rebuild even when the cached engine is up to date.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def trt_cmd(directory, fp16, workspace_gb, timing_cache, profile, plugin_library, force, quiet):
    """Build DIR/model.engine (+ sidecar DIR/model.engine.json) with TensorRT and the MSDA plugin.

    An engine whose sidecar matches this machine and export (GPU, compute capability, TensorRT,
    plugin library, precision, profile, ONNX sha256, toolkit version) is reused; anything else is rebuilt.
    """
    from autr.export.errors import ExportError
    from autr.export.trt import build_engine

    try:
        info = build_engine(directory, fp16=fp16, workspace_gb=workspace_gb, timing_cache=timing_cache,
                            profile=profile, force=force, log=_log(quiet), plugin_library=plugin_library)
    except ExportError as exc:
        _fail(str(exc))
    p = info["t_profile"]
    facts = (f"TensorRT {info['tensorrt_version']}, {info['gpu_name']} (sm {info['compute_capability']}), "
             f"{info['precision']}, T {p['min']}/{p['opt']}/{p['max']}, input {info['input_size'][0]}x"
             f"{info['input_size'][1]}")
    if info["status"] == "up to date":
        click.echo(f"up to date: {info['engine_path']} ({facts})")
    else:
        click.echo(f"built {info['engine_path']} ({info['engine_bytes'] / 2 ** 20:.1f} MiB in "
                   f"{info['build_seconds']:.1f} s; {facts}); sidecar {info['sidecar_path']}")


@export.command("triton")
@click.argument("directory", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The model repository to write.")
@click.option("--name", default="autr", show_default=True, help="Model name prefix: NAME_onnx, NAME_onnx_fp16, NAME_trt.")
@click.option("--max-batch", type=int, default=None,
              help="Frames per call Triton may batch (T is the batch axis; default: the export's T_MAX).")
@click.option("--preferred", default=None, metavar="LIST",
              help="Preferred batch sizes, comma-separated (default: 2, 4 and the max batch, where they fit).")
@click.option("--delay-us", type=int, default=2000, show_default=True,
              help="Dynamic batcher's max queue delay, microseconds.")
@click.option("--instances", type=int, default=1, show_default=True, help="Instances per ONNX Runtime model.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Where the ONNX Runtime models' instances run (the TensorRT model always on the GPU).")
@click.option("--engine", type=click.Path(), default=None,
              help="TensorRT engine for the tensorrt_plan model (default: DIRECTORY/model.engine where it exists).")
def triton_cmd(directory, out, name, max_batch, preferred, delay_us, instances, kind, engine):
    """Write a Triton model repository from DIRECTORY (an `autr export onnx` directory): ONNX Runtime models
    (portable graph; fp16 / int8 where exported), a TensorRT model where there is an engine, dynamic batching over
    the frame axis, the sidecar beside each model, and a README saying how to start tritonserver."""
    from autr.export.errors import ExportError
    from autr.export.triton import export_triton

    pref = None
    if preferred is not None:
        try:
            pref = [int(x) for x in preferred.split(",") if x.strip()]
        except ValueError:
            _fail(f"--preferred must be comma-separated integers; got {preferred!r}")
    try:
        info = export_triton(directory, out, name=name, max_batch=max_batch, preferred=pref, delay_us=delay_us,
                             instances=instances, kind=kind, engine=engine)
    except ExportError as exc:
        _fail(str(exc))
    for m in info["models"]:
        click.echo(f"{m['name']:<18} {m['platform']:<17} {m['precision']:<5} {m['graph']}")
    if info["batching"]:
        click.echo(f"dynamic batching over T: max_batch_size {info['max_batch_size']}, preferred "
                   f"{info['preferred_batch_size']}, queue delay {info['max_queue_delay_microseconds']} us, "
                   f"{info['instances']} instance(s)")
    else:
        click.echo("no dynamic batching: the model's query rule is 'clip' (frames of different streams must not mix)")
    if info["engine"] is None:
        click.echo("no TensorRT model (no engine in the export directory: `autr export trt DIR` on the serving GPU, "
                   "then run this again)")
    click.echo(f"wrote {info['repository']} (README.md says how to start tritonserver)")
