"""`autr bench stream`: the streaming runtime end to end on a media file.

The input is a SynthAVS video written here (`make_synth_media`: clips of `autr.synth.make_clip` back to back,
picture k of a clip shown during its second k, H.264 + AAC with the clip's 16 kHz audio), or any file
(`--input`). It runs twice through `autr.runtime.StreamRunner` + `MediaSource`:

    realtime -- the file paced to its time stamps, like a camera: queues drop the oldest frame when the
                model is slower than the source, so latency stays bounded and `dropped` counts the cost;
    fast     -- as fast as possible: blocking queues, nothing dropped; windows/s is the throughput, and end
                to end includes the time frames wait in the queues.

Each run reports windows/s (model calls per second of wall time = output frames / wall time), end-to-end
latency p50 / p90 / p99 / max (ms, from the frame's release by the decoder to the sinks being done), the
inference stage alone, frames captured / output / dropped -- all read from the runtime's own report, which
is kept whole under `report`.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from .core import BenchError

__all__ = ["make_synth_media", "run_stream_bench", "format_stream", "STREAM_BACKENDS"]

STREAM_BACKENDS = ("ort", "torch", "trt", "fake")
ISOLATED_RUNS = 20  # backend calls timed alone before each run: the in-pipeline vs isolated comparison


def parse_video_size(size) -> tuple[int, int]:
    """``224`` / ``"224"`` -> (224, 224); ``"640x480"`` -> (640, 480): width x height, even sides (yuv420p)."""
    text = str(size).lower().strip()
    try:
        w, h = (int(x) for x in text.split("x")) if "x" in text else (int(text), int(text))
    except ValueError:
        raise BenchError(f"--video-size {size!r}: give a side (224) or WIDTHxHEIGHT (640x480)") from None
    if w < 16 or h < 16:
        raise BenchError(f"--video-size {size!r}: sides must be at least 16 pixels")
    return w // 2 * 2, h // 2 * 2


def make_synth_media(path, seconds: float = 5.0, fps: int = 10, size=224, seed: int = 0) -> Path:
    """Write a SynthAVS mp4 (H.264 video, AAC 16 kHz mono audio) of `seconds` seconds; `size` is a side or
    ``"WxH"`` (a non-square video is the square scene resized)."""
    import av
    import numpy as np

    from autr.synth import CLIP_SAMPLES, SAMPLE_RATE, make_clip

    if seconds <= 0 or fps < 1:
        raise BenchError(f"need seconds > 0 and fps >= 1 (got {seconds}, {fps})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = parse_video_size(size)
    size = min(width, height)
    n_frames = max(1, int(round(seconds * fps)))
    n_samples = int(round(n_frames / fps * SAMPLE_RATE))
    clips = {}

    def clip(c):
        if c not in clips:
            clips.clear()
            clips[c] = make_clip(np.random.default_rng([seed, c]), mode="s4", size=size)
        return clips[c]

    audio = np.concatenate([clip(c).wav for c in range(n_samples // CLIP_SAMPLES + 1)])[:n_samples]
    container = av.open(str(path), mode="w")
    try:
        v = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(fps)})
        v.width, v.height = width, height
        v.pix_fmt = "yuv420p"
        a = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        pos, block = 0, 1024
        for i in range(n_frames):
            t = i / fps
            c, k = divmod(int(t), 5)
            picture = clip(c).frames[k]
            if picture.shape[:2] != (height, width):
                import cv2

                picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_LINEAR)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in v.encode(frame):
                container.mux(packet)
            while pos < min(n_samples, int(round((i + 1) * SAMPLE_RATE / fps))):
                x = audio[pos:pos + block].astype(np.float32)
                af = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, pos, Fraction(1, SAMPLE_RATE)
                for packet in a.encode(af):
                    container.mux(packet)
                pos += len(x)
        for stream in (v, a):
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return path


def _open(kind: str, artifact, plan, provider: str, device: str, model=None, size=None, window: int = 1):
    from autr.runtime import open_backend

    threads = plan.intra_op
    if kind == "torch":  # the model is resolved by run_stream_bench (checkpoint or preset)
        import torch

        from .model_bench import TorchRunner
        from .msda_bench import resolve_device

        if threads:
            torch.set_num_threads(threads)
        return TorchRunner(model, device=resolve_device(device), size=size)
    if kind == "fake":
        return open_backend("fake", input_size=(size, size))
    if kind == "ort":
        return open_backend("ort", artifact, provider=provider, threads=threads, spinning=plan.spinning,
                            frames=window)
    return open_backend("trt", artifact)


def _summary(rep: dict) -> dict:
    lat = rep.get("latency_ms", {})
    return {"windows_per_s": rep["fps"]["output"], "windows_per_s_steady": rep["fps"].get("output_steady"),
            "source_fps": rep["fps"].get("captured"), "end_to_end_ms": lat.get("end_to_end", {"count": 0}),
            "inference_ms": lat.get("inference", {"count": 0}), "captured": rep["frames"]["captured"],
            "output": rep["frames"]["output"], "dropped": rep["frames"]["dropped"]["total"],
            "dropped_by_queue": rep["frames"]["dropped"], "wall_seconds": rep.get("wall_seconds"),
            "stopped_by": rep.get("stopped_by"), "error": rep.get("error"),
            "inference_isolated_ms": rep.get("inference_isolated_ms"),
            "inference_in_pipeline_vs_isolated": rep.get("inference_in_pipeline_vs_isolated"),
            "inference_isolated_paced_ms": rep.get("inference_isolated_paced_ms"),
            "inference_in_pipeline_vs_isolated_paced": rep.get("inference_in_pipeline_vs_isolated_paced"),
            "threads": rep.get("threads")}


def validate_stream_args(backend, checkpoint, preset, onnx, engine, input_file, seconds, fps, size, window, modes,
                         threads=None, video_size=224) -> list:
    """Everything that can be refused before a model is loaded (BenchError, one line); returns the modes."""
    from autr.export.onnx_export import SIDECAR_FILE

    from .core import check_common, parse_list

    parse_list(backend, STREAM_BACKENDS, "backend")
    modes = parse_list(modes, ("realtime", "fast"), "mode")
    if checkpoint is not None and preset is not None:
        raise BenchError("give --checkpoint or --preset, not both")
    if seconds <= 0 or fps < 1 or window < 1:
        raise BenchError(f"need --seconds > 0, --fps >= 1 and --window >= 1 (got {seconds}, {fps}, {window})")
    check_common(size, threads=threads)
    if input_file is None:
        parse_video_size(video_size)
    if input_file is not None and not Path(input_file).is_file():
        raise BenchError(f"--input {input_file}: no such file")
    if onnx is not None and not (Path(onnx) / SIDECAR_FILE).is_file() and not Path(onnx).is_file():
        raise BenchError(f"--onnx {onnx}: not an export directory or ONNX file")
    if backend == "trt" and engine is None:
        raise BenchError("--backend trt needs --engine F")
    if engine is not None and not Path(engine).is_file():
        raise BenchError(f"--engine {engine}: no such file")
    return modes


def run_stream_bench(backend: str = "ort", checkpoint=None, preset=None, onnx=None, engine=None, input_file=None,
                     seconds: float = 5.0, fps: int = 10, video_size: int = 224, size=None, window: int = 1,
                     modes=("realtime", "fast"), threads=None, provider: str = "cpu", device: str = "cpu",
                     cache_dir=None, workdir=None, log=None) -> dict:
    """Both runs (`modes`) of the module docstring; returns {"runs": {mode: summary + report}, ...}."""
    import tempfile

    from autr.runtime import MediaSource, StreamRunner
    from autr.runtime.errors import StreamError

    say = log or (lambda msg: None)
    modes = validate_stream_args(backend, checkpoint, preset, onnx, engine, input_file, seconds, fps, size, window,
                                 modes, threads, video_size)
    from autr.runtime.threads import plan_threads

    plan = plan_threads(pipeline=True, threads=threads)
    cache_dir = Path(cache_dir) if cache_dir else None
    model_info = {"backend": backend}
    artifact, model = None, None
    if backend == "ort":
        if onnx is not None:
            artifact = Path(onnx)
        else:
            from .model_bench import cached_export, resolve_model_source

            model, source, _, notices = resolve_model_source(checkpoint, preset, None)
            for n in notices:
                say(n)
            size = int(size or model.cfg.image_size)
            artifact = cached_export(model, size, window, False, cache_dir, log=say, source=source)
            model_info.update(preset=model.cfg.name, source=source, notices=notices)
            model = None
    elif backend == "trt":
        artifact = Path(engine)
    elif backend == "torch":
        from .model_bench import resolve_model_source

        model, source, _, notices = resolve_model_source(checkpoint, preset, None)
        size = int(size or model.cfg.image_size)
        model_info.update(preset=model.cfg.name, source=source, notices=notices)
    elif backend == "fake":
        size = int(size or 224)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if input_file is None:
            w, h = parse_video_size(video_size)
            say(f"writing a {seconds:g} s SynthAVS video ({w}x{h}, {fps} fps)")
            media = make_synth_media(Path(tmp) / "synth.mp4", seconds, fps, video_size)
            input_desc = {"file": None, "synthavs": {"seconds": seconds, "fps": fps, "size": [w, h], "seed": 0}}
        else:
            media = Path(input_file)
            input_desc = {"file": str(media)}
        try:
            be = _open(backend, artifact, plan, provider, device, model, size, window)
        except StreamError as exc:
            raise BenchError(str(exc)) from None
        runs = {}
        try:
            for mode in modes:
                say(f"streaming ({mode})")
                source = MediaSource(media, realtime=(mode == "realtime"))
                report = StreamRunner(source, be, window=window, render=False, plan=plan,
                                      isolated_runs=ISOLATED_RUNS).run()
                runs[mode] = {**_summary(report), "report": report}
        finally:
            be.close()
        model_info["backend_describe"] = be.describe()
    return {"input": input_desc, "model": model_info, "window": window, "runs": runs,
            "method": "autr.runtime.StreamRunner(MediaSource(file, realtime=...), backend, window=T), no sinks; "
                      "windows/s = output frames / wall time; end to end from the decoder's release of a frame "
                      "to the end of its output stage; realtime paces the file like a camera (drop-oldest "
                      "queues), fast reads it as fast as the model takes it (blocking queues)"}


def format_stream(result: dict) -> str:
    lines = [f"{'run':<9} {'windows/s':>9} {'e2e p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'infer p50':>9} "
             f"{'alone':>6} {'out':>5} {'dropped':>7}"]
    for mode, r in result["runs"].items():
        e = r["end_to_end_ms"]
        inf = r["inference_ms"]
        if not e.get("count"):
            lines.append(f"{mode:<9} no output ({r.get('error') or r.get('stopped_by')})")
            continue
        lines.append(f"{mode:<9} {r['windows_per_s'] or 0:>9.2f} {e['p50']:>8.1f} {e['p90']:>8.1f} {e['p99']:>8.1f} "
                     f"{e['max']:>8.1f} {inf.get('p50', 0):>9.1f} "
                     f"{(r.get('inference_isolated_ms') or {}).get('p50', float('nan')):>6.1f} {r['output']:>5} "
                     f"{r['dropped']:>7}")
    return "\n".join(lines)
