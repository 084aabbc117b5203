"""`autr demo`: the main job with no camera — a live synthetic scene through the streaming runtime.

The embedded default runs from the export shipped inside the package (`autr/assets/autr-small-synth-onnx`,
checked against the shipped checkpoint's sha256; nothing imports PyTorch); another checkpoint is exported to
ONNX once, into `OUT/model/` (re-exported only when the checkpoint changes). The graph runs in ONNX
Runtime on a real-time SynthAVS scene: a sounding object among silent, often larger and brighter,
distractors. Writes `OUT/demo.mp4` (overlay + the scene's audio) and `OUT/report.json` (latency per
stage, FPS, drops, and the mean IoU with the sounding object's ground truth), and returns a summary.
"""
from __future__ import annotations

import json
from pathlib import Path

from autr.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, file_sha256, resolve_checkpoint
from autr.export.errors import ExportError

EXPORT_DIR = "model"
ISOLATED_RUNS = 20  # backend calls timed alone before the scene starts (the in-pipeline comparison)


class DemoError(Exception):
    """The demo could not start (a missing checkpoint, a failed export); one line for the CLI."""


def shipped_default(log=None) -> Path | None:
    """The export shipped with the package when it was made from the shipped default checkpoint (same sha256);
    None when this install has none or it is stale (then the demo exports the checkpoint itself)."""
    from autr.runtime.backends import shipped_export
    from autr.runtime.errors import BackendError

    try:
        target = shipped_export()
        made_from = json.loads((target / "model.json").read_text()).get("checkpoint", {}).get("sha256")
    except (BackendError, OSError, ValueError):
        return None
    if DEFAULT_CHECKPOINT.is_file() and made_from != file_sha256(DEFAULT_CHECKPOINT):
        if log:
            log(f"the shipped export {target.name} was not made from the shipped checkpoint (sha256 differs): "
                "exporting the checkpoint instead (`make default-export` refreshes it)")
        return None
    return target


def export_for_demo(checkpoint, out: Path, log=None) -> Path:
    """The export the demo runs: for "default", the one shipped with the package (see `shipped_default`);
    otherwise `out/model/` holding a T = 1 export of `checkpoint` (a file, or "untrained"), reused when its
    sidecar names the same checkpoint (sha256) or the same untrained preset. Raises DemoError."""
    if checkpoint == "default":
        shipped = shipped_default(log)
        if shipped is not None:
            return shipped
    try:
        return _export_for_demo(checkpoint, out, log)
    except (CheckpointError, ExportError) as exc:
        raise DemoError(str(exc)) from None


def _export_for_demo(checkpoint, out: Path, log=None) -> Path:
    from autr.export.onnx_export import export_onnx

    target = out / EXPORT_DIR
    if checkpoint == "untrained":
        want, kwargs = {"source": "preset", "preset": "small", "seed": 0}, {"preset": "small", "seed": 0}
    else:
        path = resolve_checkpoint(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist; pass --checkpoint FILE, or 'default'")
        want, kwargs = {"sha256": file_sha256(path)}, {"checkpoint": str(path)}
    sidecar = target / "model.json"
    if sidecar.is_file():
        try:
            have = json.loads(sidecar.read_text()).get("checkpoint", {})
        except (OSError, ValueError):
            have = {}
        if all(have.get(k) == v for k, v in want.items()):
            return target
    if log:
        log(f"exporting the model to ONNX once, into {target}/ ...")
    export_onnx(target, frames=1, log=None, **kwargs)
    return target


def run_demo(checkpoint="default", out="autr-demo", seconds: float = 10.0, fps: float = 15.0, seed: int = 7,
             threads: int | None = None, log=None) -> dict:
    """Stream `seconds` of a synthetic scene at `fps` through ONNX Runtime; returns the runtime's report."""
    from autr.runtime import Mp4Sink, StreamRunner, SyntheticSource, open_backend, write_report
    from autr.runtime.threads import plan_threads

    plan = plan_threads(pipeline=True, threads=threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = export_for_demo(checkpoint, out, log=log)
    backend = open_backend("ort", model_dir, provider="cpu", threads=plan.intra_op, spinning=plan.spinning, frames=1)
    for notice in backend.notices:
        if log:
            log(notice)
    try:
        source = SyntheticSource(fps=fps, seed=seed, size=224, realtime=True)
        source.start()
        sink = Mp4Sink(out / "demo.mp4", threads=plan.encoder)
        report = StreamRunner(source, backend, sinks=[sink], duration=seconds, isolated_runs=ISOLATED_RUNS,
                              plan=plan).run()
    finally:
        backend.close()
    report["demo"] = {"checkpoint": str(checkpoint), "export": str(model_dir), "video": str(sink.path),
                      "video_frames": sink.frames, "report": str(out / "report.json")}
    write_report(report, out / "report.json")
    return report


def summarize(report: dict) -> str:
    """A few lines for the terminal."""
    lat = report["latency_ms"]["end_to_end"]
    stages = report["latency_ms"]
    lines = [f"{report['frames']['output']} frames in {report['wall_seconds']:.1f} s: "
             f"{report['fps']['output']:.1f} windows/s (source {report['fps'].get('captured') or 0:.1f} fps), "
             f"{report['frames']['dropped']['total']} dropped",
             f"end to end p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} / p99 {lat['p99']:.0f} / "
             f"max {lat['max']:.0f} ms; inference p50 {stages['inference']['p50']:.0f} ms"]
    iso, paced = report.get("inference_isolated_ms"), report.get("inference_isolated_paced_ms")
    if iso:
        lines[-1] += (f" in the pipeline vs {iso['p50']:.0f} ms alone back to back "
                      f"({report['inference_in_pipeline_vs_isolated']:.2f}x)")
    if paced:
        lines[-1] += (f", {paced['p50']:.0f} ms alone at the pipeline's pace of one call per "
                      f"{paced['period_ms']:.0f} ms ({report['inference_in_pipeline_vs_isolated_paced']:.2f}x)")
    th = report.get("threads") or {}
    if th.get("backend"):
        b = th["backend"]
        graph = report["backend"].get("graph")
        lines.append(f"ONNX Runtime, {graph} graph ({report['backend'].get('msda')} MSDA); threads: inference "
                     f"{b['intra_op']} (spinning {'on' if b['spinning'] else 'off'}), BLAS {th['blas']}, "
                     f"OpenCV {th['opencv']}, encoder {th['encoder']}, on {th['cores']} cores")
    gt = report.get("synthetic_gt")
    if gt:
        lines.append(f"mean IoU with the sounding object: {gt['mean_iou']:.3f} over {gt['frames_with_sound']} "
                     "frames with sound")
    demo = report["demo"]
    lines.append(f"wrote {demo['video']} and {demo['report']}")
    return "\n".join(lines)
