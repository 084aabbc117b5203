"""`autr stream`: run a model live on a camera + microphone, a media file / network stream, or a synthetic scene.

Importing this module loads click only; the runtime (and, for --checkpoint only, torch) is imported when the
command runs. Register it in the main CLI with ``main.add_command(stream)``.
"""
from __future__ import annotations

import signal
import sys

import click

__all__ = ["stream"]


def _fail(message: str, code: int = 2) -> None:
    click.secho(f"autr: {message}", fg="red", err=True)
    sys.exit(code)


def _note(message: str) -> None:
    click.secho(f"autr: {message}", fg="yellow", err=True)


def _summary(rep: dict) -> str:
    lat = rep.get("latency_ms", {}).get("end_to_end", {})
    fps = rep.get("fps", {}).get("output")
    parts = [f"{rep['frames']['output']} frames in {rep.get('wall_seconds') or 0:.1f} s"]
    if fps:
        parts.append(f"{fps:.1f} FPS")
    if lat.get("count"):
        parts.append(f"end-to-end p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} / p99 {lat['p99']:.0f} / "
                     f"max {lat['max']:.0f} ms")
    parts.append(f"dropped {rep['frames']['dropped']['total']}")
    au = rep.get("audio", {})
    if au.get("overruns"):
        parts.append(f"audio overruns {au['overruns']}")
    return ", ".join(parts)


@click.command("stream", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", type=click.Path(dir_okay=False), help="TensorRT engine (.engine + its sidecar JSON).")
@click.option("--onnx", "onnx_path", type=click.Path(), help="Portable ONNX graph or export directory (+ model.json).")
@click.option("--checkpoint", help="Checkpoint (.safetensors) for the torch backend, or 'default'.")
@click.option("--camera", type=int, help="Camera index (OpenCV); pairs with --mic.")
@click.option("--mic", help="Microphone: PortAudio index or name substring (default input device if omitted).")
@click.option("--input", "input_", help="Media file, or a URL FFmpeg opens (tcp://, rtsp://, http://...).")
@click.option("--synthetic", is_flag=True, help="A live SynthAVS scene (clips looped, audio in real time).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the overlay video (mp4, with the audio).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON latency report.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), help="Write per-frame mask PNGs here.")
@click.option("--no-display", is_flag=True, help="Do not open a window.")
@click.option("--duration", type=float, help="Stop after this many seconds of stream time.")
@click.option("--realtime", is_flag=True, help="Pace a media file to its time stamps (live behaviour, drops frames).")
@click.option("--silent-audio", is_flag=True, help="Run on silence on purpose (no audio track / no microphone).")
@click.option("--window", "window", default=1, show_default=True, help="T: frames per model call (sliding window).")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, auto) / TensorRT GPU index.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="ONNX Runtime: which graphs of the export directory (fp16 / int8 need `autr export onnx --fp16 / "
                   "--int8`).")
@click.option("--graph", type=click.Choice(["auto", "fused", "portable"]), default="auto", show_default=True,
              help="ONNX Runtime: fused = the plugin graph with the MSDA custom-op library, portable = standard ops; "
                   "auto = fused where the library is built.")
@click.option("--threads", type=int, help="Inference threads (ONNX Runtime / torch); default: the thread plan's "
              "(one per available core, idle workers sleep; see runtime/README.md).")
@click.option("--queue", "queue_size", default=1, show_default=True, help="Capacity of each stage queue.")
@click.option("--fps", default=10.0, show_default=True, help="Frame rate of the synthetic scene.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic scene.")
@click.option("--threshold", default=0.0, show_default=True, help="Mask logit threshold.")
@click.option("--list-devices", is_flag=True, help="List the audio input devices and exit.")
def stream(engine, onnx_path, checkpoint, camera, mic, input_, synthetic, out, report_path, masks_dir, no_display,
           duration, realtime, silent_audio, window, provider, device, precision, graph, threads, queue_size, fps, seed,
           threshold, list_devices):
    """Segment the sounding object live and measure latency.

    \b
    Model (one):  --engine F | --onnx F | --checkpoint F|default
    Input (one):  --camera N [--mic DEV] | --input FILE_OR_URL | --synthetic
    """
    if list_devices:
        from autr.runtime.errors import StreamError
        from autr.runtime.sources import list_input_devices

        try:
            for i, name, ch, rate in list_input_devices():
                click.echo(f"{i:>3}  {name}  ({ch} ch, {rate:g} Hz)")
        except StreamError as exc:
            _fail(str(exc))
        return
    models = [(k, v) for k, v in (("trt", engine), ("ort", onnx_path), ("torch", checkpoint)) if v]
    if len(models) != 1:
        _fail("choose one model: --engine FILE (TensorRT), --onnx FILE (ONNX Runtime) or --checkpoint FILE|default "
              "(PyTorch)")
    inputs = [x for x in (camera is not None, bool(input_), synthetic) if x]
    if len(inputs) != 1:
        _fail("choose one input: --camera N [--mic DEV], --input FILE_OR_URL or --synthetic")
    if mic is not None and camera is None:
        _fail("--mic goes with --camera (a file or stream brings its own audio; the synthetic scene its own sound)")
    if realtime and not input_:
        _fail("--realtime paces a media file (--input); cameras and the synthetic scene are live already")
    if window < 1:
        _fail(f"--window must be >= 1; got {window}")
    if duration is not None and duration <= 0:
        _fail(f"--duration must be positive; got {duration}")
    from autr.runtime.threads import plan_threads

    try:
        plan = plan_threads(pipeline=True, threads=threads)
    except ValueError as exc:
        _fail(str(exc))

    from autr.runtime import (DisplaySink, LiveSource, MaskPngSink, MediaSource, MicrophoneSource, Mp4Sink,
                              StreamError, StreamRunner, SyntheticSource, WebcamSource, display_problem, open_backend,
                              write_report)

    kind, artifact = models[0]
    sinks, source, backend = [], None, None
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum, frame):  # SIGTERM finalises like Ctrl-C
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        previous = None
    try:
        try:
            if kind != "ort" and (precision != "fp32" or graph != "auto"):
                raise StreamError("--precision and --graph choose among an ONNX export's graphs (--onnx DIR); an engine "
                                  "or a checkpoint has its own precision")
            backend = open_backend(kind, artifact, provider=provider, device=device, threads=plan.intra_op,
                                   spinning=plan.spinning, precision=precision, graph=graph)
            for notice in getattr(backend, "notices", ()):
                _note(notice)
            if synthetic:
                source = SyntheticSource(fps=fps, seed=seed, size=224, realtime=True, audio=not silent_audio,
                                         queue_size=queue_size)
            elif input_:
                source = MediaSource(input_, realtime=realtime, silent_audio=silent_audio, queue_size=queue_size)
            else:
                video = WebcamSource(camera, queue_size=queue_size)
                audio = None if silent_audio else MicrophoneSource(mic)
                source = LiveSource(video, audio)
            source.start()
            if out:
                sinks.append(Mp4Sink(out))  # audio and frame rate: the source's, attached when the stream starts
            if masks_dir:
                sinks.append(MaskPngSink(masks_dir))
            if not no_display:
                problem = display_problem()
                if problem:
                    _note(f"{problem}: running without a window (pass --no-display to silence this)")
                else:
                    sinks.append(DisplaySink())
        except StreamError as exc:
            for s in sinks:
                s.close()
            if source is not None:
                source.stop()
            _fail(str(exc))
        except KeyboardInterrupt:
            if source is not None:
                source.stop()
            _fail("interrupted before the stream started", code=130)

        runner = StreamRunner(source, backend, sinks=sinks, window=window, queue_size=queue_size, duration=duration,
                              threshold=threshold, plan=plan)
        rep = runner.run()
        wrote = [f"{s.path} ({s.frames} frames)" for s in sinks if isinstance(s, Mp4Sink) and s.frames]
        wrote += [f"{s.dir}/ ({s.count} masks)" for s in sinks if isinstance(s, MaskPngSink)]
        if report_path:
            try:
                wrote.append(str(write_report(rep, report_path)))
            except OSError as exc:
                _fail(f"cannot write the report {report_path}: {exc}")
        click.echo(_summary(rep) + (f"; wrote {', '.join(wrote)}" if wrote else ""))
        kept = f" (kept {', '.join(wrote)})" if wrote else ""
        for w in rep.get("warnings", []):
            if w not in (rep.get("error"), rep.get("input_fault")):
                _note(w)
        if rep.get("error"):
            _fail(rep["error"] + kept, code=1)
        if rep.get("input_fault"):
            _fail(rep["input_fault"] + kept, code=1)
        if rep.get("stopped_by") == "interrupt":
            _note("stopped (Ctrl-C); outputs finalised")
    finally:
        if backend is not None:
            backend.close()
        if previous is not None:
            try:
                signal.signal(signal.SIGTERM, previous)
            except (ValueError, TypeError):
                pass


def main(argv=None):  # `python -m autr.runtime` (the same command as `autr stream`)
    stream.main(args=argv, prog_name="autr stream")
