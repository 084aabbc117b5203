"""Accuracy of the exported precisions: fp32 / fp16 / int8 portable graphs on held-out SynthAVS clips.

    python -m autr.benchmarks.precision_accuracy --export DIR [--clips 200] [--seed 1000] [--mode s4] \\
        [--graphs portable,portable_fp16,portable_int8] [--torch] [--openvino fp32,bf16,int8] [--threads N] \\
        --json benchmarks/results/precision_accuracy_cpu.json

DIR is an `autr export onnx` directory (`--fp16 --int8` for all three graphs). Every graph runs in ONNX
Runtime on the CPU behind `autr.export.verify.OrtModel` and is scored by `autr.evaluation.evaluate_synthetic`,
the code of `autr eval --synthetic`: the same clips (SynthAVS `mode` test split of `seed`, generated in memory
at the export's input size), the same AVSBench mIoU / F-score (`autr.metrics`) and the same audio_swap test.
`--torch` adds the PyTorch model the export was made from (its weights digest is checked), i.e. exactly
`autr eval --synthetic`. `--openvino` adds OpenVINO's CPU rows (the optional extra,
`autr.benchmarks.openvino_runner`): the portable graph computed in float32 or bfloat16 (OpenVINO's inference
precision, on CPUs with bfloat16 arithmetic), and the int8 graph -- the precisions `autr bench model` times.

Each row has its metrics, their differences from the fp32 graph of its family (ONNX Runtime's), and for the
int8 and bf16 rows whether mIoU and audio_swap are within `TARGET` (0.01) of fp32. Refusals (no export, a
graph missing, bad numbers, OpenVINO or its bf16 missing here) are one line on stderr with exit status 2,
before any model loads.
"""
from __future__ import annotations

import argparse
import sys
import time

from .core import BenchError

GRAPHS = ("portable", "portable_fp16", "portable_int8")
PRECISION = {"portable": "fp32", "portable_fp16": "fp16", "portable_int8": "int8",
             "plugin": "fp32", "plugin_fp16": "fp16", "plugin_int8": "int8"}
TEST_SEED = 1000
TARGET = 0.01  # |int8 - fp32| (and |bf16 - fp32|) limit for mIoU and audio_swap
OPENVINO = {"fp32": ("portable", "f32"), "bf16": ("portable", "bf16"), "int8": ("portable_int8", "f32")}
METRICS = ("miou", "fscore", "miou_dataset", "audio_swap")
MODES = ("s4", "ms3")


def validate_args(export, clips: int, mode: str = "s4", graphs=GRAPHS, threads=None, openvino=()) -> tuple:
    """(directory, sidecar, size, t_max, graphs, openvino precisions) or BenchError / ExportError (one line);
    loads no model."""
    from autr.export.onnx_export import read_export

    from .core import parse_list

    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 2:
        raise BenchError(f"--clips must be an integer >= 2 (audio_swap pairs clips), got {clips!r}")
    if mode not in MODES:
        raise BenchError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    if export is None:
        raise BenchError("give --export DIR (an `autr export onnx --fp16 --int8` directory)")
    directory, sidecar, (size, _), (_, t_max) = read_export(export)
    graphs = parse_list(graphs, choices=tuple(PRECISION), what="graph")
    openvino = parse_list(openvino, choices=tuple(OPENVINO), what="OpenVINO precision") if openvino else []
    if openvino:
        from .openvino_runner import why_no_precision

        for precision in openvino:
            missing = why_no_precision(OPENVINO[precision][1])
            if missing:
                raise BenchError(f"--openvino {precision}: {missing}")
    records = sidecar.get("graphs") or {}
    for kind in dict.fromkeys([*graphs, *(OPENVINO[p][0] for p in openvino)]):
        if kind not in records or not (directory / records[kind]["file"]).is_file():
            flag = {"fp16": " --fp16", "int8": " --int8"}.get(PRECISION[kind], "")
            raise BenchError(f"{directory} has no {kind} graph; export it with `autr export onnx{flag} --out {directory}`")
    if t_max < 5:
        raise BenchError(f"the export takes at most {t_max} frames; SynthAVS clips have 5 (re-export with --frames 5)")
    return directory, sidecar, size, t_max, graphs, openvino


def _row(name: str, precision: str, metrics: dict, seconds: float, **extra) -> dict:
    row = {"graph": name, "precision": precision, **extra}
    row.update({k: metrics.get(k) for k in (*METRICS, "audio_swap_pairs", "audio_swap_frames", "n_videos",
                                             "n_frames")})
    row["seconds"] = round(seconds, 1)
    return row


def run_precision_accuracy(export, clips: int = 200, mode: str = "s4", seed: int = TEST_SEED, graphs=GRAPHS,
                           threads: int | None = None, torch_row: bool = False, progress: bool = True,
                           log=None, openvino=()) -> dict:
    """The body of the result: settings, the export's facts, one row per graph (and PyTorch with `torch_row`)."""
    from autr.evaluation import evaluate_synthetic
    from autr.export.verify import ExportedModel, OrtModel

    say = log or (lambda msg: None)
    directory, sidecar, size, t_max, graphs, openvino = validate_args(export, clips, mode, graphs, threads, openvino)
    rows = []
    if torch_row:
        from autr.export.verify import model_for_export

        model = model_for_export(sidecar)
        say(f"pytorch fp32: {clips} clips")
        t0 = time.perf_counter()
        metrics = evaluate_synthetic(model, mode, seed, clips, size, "cpu", progress=progress)
        rows.append(_row("pytorch", "fp32", metrics, time.perf_counter() - t0, runtime="PyTorch eager (autr eval)"))
        say(_line(rows[-1]))
    for kind in graphs:
        rec = sidecar["graphs"][kind]
        say(f"{kind}: {clips} clips")
        model = OrtModel(directory / rec["file"], plugin=kind.startswith("plugin"), threads=threads, t_max=t_max)
        t0 = time.perf_counter()
        metrics = evaluate_synthetic(model, mode, seed, clips, size, "cpu", progress=progress)
        rows.append(_row(kind, PRECISION[kind], metrics, time.perf_counter() - t0, file=rec["file"],
                         sha256=rec.get("sha256"), runtime="ONNX Runtime CPU"))
        say(_line(rows[-1]))
    if openvino:
        from .openvino_runner import OpenVinoRunner
    for precision in openvino:
        kind, hint = OPENVINO[precision]
        rec = sidecar["graphs"][kind]
        say(f"openvino {precision} ({kind}): {clips} clips")
        runner = OpenVinoRunner(directory / rec["file"], threads=threads, precision=hint)
        try:
            t0 = time.perf_counter()
            metrics = evaluate_synthetic(ExportedModel(runner.infer, t_max), mode, seed, clips, size, "cpu",
                                         progress=progress)
        finally:
            runner.close()
        rows.append(_row(kind, precision, metrics, time.perf_counter() - t0, file=rec["file"],
                         sha256=rec.get("sha256"),
                         runtime=f"OpenVINO CPU (inference precision {runner.config['INFERENCE_PRECISION_HINT']})"))
        say(_line(rows[-1]))
    _compare(rows)
    quant = (sidecar["graphs"].get("portable_int8") or {}).get("quantization")
    return {"export": {"directory": str(directory), "checkpoint": sidecar.get("checkpoint"),
                       "weights_sha256": sidecar.get("weights_sha256"), "input_size": sidecar.get("input_size"),
                       "opset": sidecar.get("opset"), "int8_quantization": quant},
            "evaluation": {"data": f"SynthAVS {mode} test split, seed {seed}, clips 0..{clips - 1}, generated in memory "
                                   f"at {size}x{size} (autr.synth.dataset_clip)",
                           "code": "autr.evaluation.evaluate_synthetic (autr eval --synthetic): AVSBench mIoU / F-score "
                                   "(autr.metrics), audio_swap; graphs through autr.export.verify.OrtModel (and "
                                   "OpenVinoRunner behind autr.export.verify.ExportedModel)"},
            "target": {"int8_vs_fp32_max_abs_delta": TARGET, "bf16_vs_fp32_max_abs_delta": TARGET,
                       "metrics": ["miou", "audio_swap"]},
            "rows": rows}


def _compare(rows: list) -> None:
    """Differences from the fp32 graph of the same family (portable / plugin; ONNX Runtime's, the first such
    row), and the int8 / bf16 target."""
    for row in rows:
        family = row["graph"].split("_")[0]
        ref = next((r for r in rows if r["graph"] == family), None)
        if ref is None or ref is row:
            continue
        row["delta_vs_fp32"] = {k: (None if row[k] is None or ref[k] is None else row[k] - ref[k]) for k in METRICS}
        if row["precision"] in ("int8", "bf16"):
            d = row["delta_vs_fp32"]
            row["within_target"] = all(d[k] is not None and abs(d[k]) <= TARGET for k in ("miou", "audio_swap"))


def _fmt(value, digits=4, signed=False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _line(row: dict) -> str:
    return (f"{row['graph']} {row['precision']} ({row.get('runtime', '')}): mIoU {_fmt(row['miou'])}  "
            f"F {_fmt(row['fscore'])}  audio_swap {_fmt(row['audio_swap'])}  ({row['seconds']:.0f} s)")


def format_table(result: dict) -> str:
    """A markdown table of the rows."""
    lines = ["| graph | runtime | precision | mIoU | F-score | dataset mIoU | audio_swap | Δ mIoU | Δ audio_swap "
             "| seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        d = r.get("delta_vs_fp32") or {}
        mark = {True: " ✓", False: " ✗"}.get(r.get("within_target"), "")
        lines.append(f"| {r['graph']} | {r.get('runtime', '')} | {r['precision']}{mark} | {_fmt(r['miou'])} | "
                     f"{_fmt(r['fscore'])} | {_fmt(r['miou_dataset'])} | {_fmt(r['audio_swap'])} | {_fmt(d.get('miou'), signed=True)} | "
                     f"{_fmt(d.get('audio_swap'), signed=True)} | {r['seconds']:.0f} |")
    s = result["settings"]
    lines.append(f"\nSynthAVS {s['mode']} seed {s['seed']}, {s['clips']} clips; ✓ / ✗: int8 / bf16 mIoU and "
                 f"audio_swap within {TARGET} of fp32 (ONNX Runtime's graph).")
    return "\n".join(lines)


def main(argv=None) -> int:
    from autr.export.errors import ExportError

    from .core import command_line, environment, envelope, write_result

    ap = argparse.ArgumentParser(prog="python -m autr.benchmarks.precision_accuracy",
                                 description="mIoU / F-score / audio_swap of the fp32, fp16 and int8 graphs of an "
                                             "export, through ONNX Runtime, with the code of `autr eval`.")
    ap.add_argument("--export", required=True, help="an `autr export onnx --fp16 --int8` directory")
    ap.add_argument("--clips", type=int, default=200, help="held-out SynthAVS clips (default 200)")
    ap.add_argument("--seed", type=int, default=TEST_SEED, help="SynthAVS seed of the test split (default 1000)")
    ap.add_argument("--mode", default="s4", help="s4 (default) or ms3")
    ap.add_argument("--graphs", default=",".join(GRAPHS), help=f"comma-separated (default {','.join(GRAPHS)})")
    ap.add_argument("--torch", action="store_true", help="also score the PyTorch model the export was made from")
    ap.add_argument("--openvino", default="", help="also score OpenVINO's CPU rows: comma-separated of fp32, bf16, "
                                                   "int8 (the optional openvino extra)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime / OpenVINO intra-op threads "
                                                               "(default: their own)")
    ap.add_argument("--json", dest="json_out", help="write the result here")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    log = None if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        body = run_precision_accuracy(a.export, a.clips, a.mode, a.seed, a.graphs, a.threads, a.torch,
                                      progress=not a.quiet, log=log, openvino=a.openvino)
    except (BenchError, ExportError) as exc:
        print(f"autr: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    import torch

    settings = {"export": a.export, "clips": a.clips, "seed": a.seed, "mode": a.mode, "graphs": a.graphs,
                "torch": a.torch, "openvino": a.openvino, "threads": a.threads}
    result = envelope("precision_accuracy", command_line(argv=[
        "python -m autr.benchmarks.precision_accuracy", *(sys.argv[1:] if argv is None else argv)]),
        settings, environment(torch))
    result.update(body)
    print(format_table(result))
    if a.json_out:
        print(f"wrote {write_result(result, a.json_out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
