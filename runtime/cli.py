"""`autr stream`: run a model live on a camera + microphone, a media file / network stream, or a synthetic scene.

Importing this module loads click only; the runtime (and, for --checkpoint only, torch) is imported when the
command runs. Register it in the main CLI with ``main.add_command(stream)``.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time

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


def _model_t_range(kind: str, artifact: str):
    """(t_min, t_max) from an ONNX export's / engine's sidecar, read without loading the model; None where it
    cannot be read here (the backend then says why, in its own words)."""
    if kind not in ("ort", "trt"):
        return None
    import json
    from pathlib import Path

    try:
        from autr.runtime.backends.sidecar import ONNX_SIDECAR, parse_spec, read_sidecar

        p = Path(artifact)
        if p.is_dir():
            side = p / ONNX_SIDECAR
            if not side.is_file():
                return None
            data = json.loads(side.read_text(encoding="utf-8"))
        else:
            _, data = read_sidecar(p)
        spec = parse_spec(data)
        return spec.t_min, spec.t_max
    except Exception:  # noqa: BLE001 - a broken sidecar is the backend's to report
        return None


def _describe_model(backend, kind: str, precision: str, window: int) -> str:
    d = backend.describe()
    what = [kind]
    if d.get("graph"):
        what.append(str(d["graph"]))
    if kind == "ort":
        what.append(precision)
    elif d.get("preset"):
        what.append(str(d["preset"]))
    h, w = backend.input_size
    extra = [f"{h}x{w}", f"T={window}", str(d.get("device") or "cpu")]
    threads = d.get("threads")
    if isinstance(threads, dict):
        threads = threads.get("intra_op")
    if threads:
        extra.append(f"{threads} threads")
    art = d.get("artifact")
    if art:
        extra.insert(0, os.path.basename(str(art)))
    return f"{' '.join(what)} ({', '.join(extra)})"


def _describe_audio(a) -> str:
    if not a:
        return "silent"
    rate = a.get("sample_rate")
    ch = a.get("channels")
    parts = [str(a.get("codec") or a.get("device") or "audio")]
    if rate:
        parts.append(f"{rate:g} Hz" if isinstance(rate, float) else f"{rate} Hz")
    if ch:
        parts.append(f"{ch} ch")
    return " ".join(parts)


def _describe_input(source) -> str:
    d = source.describe()
    kind = d.get("kind")
    if kind in ("file", "network"):
        v = d.get("video") or {}
        text = f"{d.get('input')} {v.get('width')}x{v.get('height')}"
        if v.get("fps"):
            text += f" {v['fps']:.4g} fps"
        if v.get("rotation"):
            text += f" (turned upright: {v['rotation']} deg)"
        if d.get("duration"):
            text += f" {d['duration']:.1f} s"
        return text + ", audio " + ("silent (--silent-audio)" if d.get("silent_audio") else
                                    _describe_audio(d.get("audio")))
    if kind == "synthetic":
        return (f"synthetic scene {d.get('size')}x{d.get('size')} {d.get('fps'):g} fps, audio "
                + ("16000 Hz 1 ch" if d.get("audio") == "scene" else "silent"))
    if kind == "live":
        v = d.get("video") or {}
        text = f"camera {v.get('camera')}"
        if v.get("width"):
            text += f" {v['width']}x{v['height']}"
        if v.get("fps"):
            text += f" {v['fps']:.4g} fps"
        a = d.get("audio")
        return text + ", audio " + (f"{a.get('device')} {a.get('sample_rate')} Hz {a.get('channels')} ch" if a
                                    else "silent (--silent-audio)")
    return str(kind)


class _StatusLine:
    """The live status line on a terminal: frames, windows/s, drops, end-to-end latency, and for an input of
    known length a bar with the time left. It is the runner's ``on_packet`` hook, so it runs in the output
    thread, reads counters the output stage keeps anyway, and redraws at most ``1 / interval`` times a second."""

    def __init__(self, runner, stream, total_seconds=None, interval: float = 0.25):
        self.runner = runner
        self.stream = stream
        self.total = total_seconds if total_seconds and total_seconds > 0 else None
        self.interval = float(interval)
        self._next = 0.0
        self.drawn = 0
        try:  # the terminal the line goes to (stderr), not stdout's
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        self.width = max(40, (columns or shutil.get_terminal_size((100, 24)).columns) - 1)

    def line(self, s: dict) -> str:
        parts = [f"{s['frames']} frames"]
        if s.get("windows_per_s"):
            parts.append(f"{s['windows_per_s']:.1f} windows/s")
        parts.append(f"dropped {s['dropped']}")
        if s.get("latency_ms") is not None:
            parts.append(f"latency {s['latency_ms']:.0f} ms")
        text = "  ".join(parts)
        t, elapsed = s.get("stream_t"), s.get("elapsed")
        if self.total and t is not None:  # the bar and the time left first: a narrow terminal cuts the end
            frac = min(1.0, max(0.0, t / self.total))
            bar = "#" * int(round(20 * frac))
            head = f"[{bar:<20}] {100 * frac:3.0f}%"
            if elapsed and t > 0:
                left = max(0.0, (self.total - t) * elapsed / t)
                head += f"  ETA {int(left // 60)}:{int(left % 60):02d}"
            text = head + "  " + text
        return text

    def __call__(self, packet) -> None:
        t = time.monotonic()
        if t < self._next:
            return
        self._next = t + self.interval
        try:
            self.stream.write("\r" + self.line(self.runner.progress())[: self.width] + "\x1b[K")
            self.stream.flush()
            self.drawn += 1
        except (OSError, ValueError):  # the terminal went away: stop drawing, never stop the stream
            self._next = float("inf")

    def close(self) -> None:
        if self.drawn:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass


@click.command("stream", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", type=click.Path(dir_okay=False), help="TensorRT engine (.engine + its sidecar JSON).")
@click.option("--onnx", "onnx_path", type=click.Path(),
              help="Portable ONNX graph, export directory (+ model.json), or 'default' (the export shipped with the "
                   "package: no PyTorch needed).")
@click.option("--checkpoint", help="Checkpoint (.safetensors) for the torch backend, or 'default'.")
@click.option("--server", help="An Open Inference Protocol server, grpc://HOST:PORT (Triton, KServe); with --model.")
@click.option("--model", "model_name", help="The model's name on --server.")
@click.option("--sidecar", help="With --server: the model's sidecar (model.json, the folder holding it -- an export "
              "directory or the model's folder in a Triton repository --, or 'default' for the shipped export's).")
@click.option("--server-timeout", default=10.0, show_default=True, help="With --server: deadline of each call, s.")
@click.option("--camera", type=int, help="Camera index (OpenCV); pairs with --mic.")
@click.option("--mic", help="Microphone: PortAudio index or name substring (default input device if omitted).")
@click.option("--input", "input_", multiple=True,
              help="Media file, or a URL FFmpeg opens (tcp://, rtsp://, http://...). Repeat it for several streams on "
                   "one model: their windows are batched into one call; outputs and reports per stream.")
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
@click.option("--sounding-threshold", default=0.5, show_default=True,
              help="Sounding probability below which a frame shows 'nothing sounding' (no mask painted); 0 paints "
                   "every mask.")
@click.option("--list-devices", is_flag=True, help="List the audio input devices and exit.")
def stream(engine, onnx_path, checkpoint, server, model_name, sidecar, server_timeout, camera, mic, input_, synthetic,
           out, report_path, masks_dir, no_display,
           duration, realtime, silent_audio, window, provider, device, precision, graph, threads, queue_size, fps, seed,
           threshold, sounding_threshold, list_devices):
    """Segment the sounding object live and measure latency.

    \b
    Model (one):  --engine F | --onnx F|default | --checkpoint F|default | --server grpc://H:P --model NAME --sidecar S
    Input (one):  --camera N [--mic DEV] | --input FILE_OR_URL [--input ...] | --synthetic
    """
    if list_devices:
        from autr.runtime.errors import StreamError
        from autr.runtime.sources import list_input_devices

        try:
            devices = list_input_devices()
        except StreamError as exc:
            _fail(str(exc))
        if not devices:
            click.echo("no audio input device found: plug in a microphone or start the sound server "
                       "(PulseAudio / PipeWire), or stream without sound on purpose with --silent-audio")
        for i, name, ch, rate in devices:
            click.echo(f"{i:>3}  {name}  ({ch} ch, {rate:g} Hz)")
        return
    # ---- every argument is checked here, before a device, a file or a model is opened
    if (model_name or sidecar) and not server:
        _fail("--model and --sidecar name a model on a server: give --server grpc://HOST:PORT too")
    models = [(k, v) for k, v in (("trt", engine), ("ort", onnx_path), ("torch", checkpoint), ("remote", server)) if v]
    if len(models) != 1:
        _fail("choose one model: --engine FILE (TensorRT), --onnx FILE (ONNX Runtime) or --checkpoint FILE|default "
              "(PyTorch), or --server grpc://HOST:PORT --model NAME (a model server)")
    if server:
        from autr.runtime.backends.remote import parse_server_url
        from autr.runtime.errors import BackendError

        try:
            parse_server_url(server)
        except BackendError as exc:
            _fail(str(exc))
        if not model_name:
            _fail("--server needs --model NAME (the model's name on the server)")
        if not sidecar:
            _fail("--server needs the model's sidecar (the runtime never guesses input size, T range or "
                  "preprocessing): --sidecar REPO/MODEL (its folder in the Triton repository), an export directory, "
                  "a model.json, or default (the shipped export's)")
        if sidecar != "default" and not os.path.exists(sidecar):
            _fail(f"sidecar not found: {sidecar}")
        if not server_timeout > 0:
            _fail(f"--server-timeout must be positive; got {server_timeout}")
    inputs = [x for x in (camera is not None, bool(input_), synthetic) if x]
    if len(inputs) != 1:
        _fail("choose one input: --camera N [--mic DEV], --input FILE_OR_URL or --synthetic")
    if mic is not None and camera is None:
        _fail("--mic goes with --camera (a file or stream brings its own audio; the synthetic scene its own sound)")
    if len(input_) > 1 and (out or masks_dir) and not all(s and "{i}" in s for s in (out, masks_dir) if s):
        _fail("several --input streams write one output each: put {i} (the stream's index) in --out / --masks, e.g. "
              "--out overlay-{i}.mp4")
    if realtime and not input_:
        _fail("--realtime paces a media file (--input); cameras and the synthetic scene are live already")
    if window < 1:
        _fail(f"--window must be >= 1; got {window}")
    if queue_size < 1:
        _fail(f"--queue must be >= 1 (frames each stage may hold); got {queue_size}")
    if duration is not None and not duration > 0:
        _fail(f"--duration must be positive; got {duration}")
    if synthetic and not (fps > 0 and fps <= 240):
        _fail(f"--fps must be in (0, 240] frames per second; got {fps}")
    if not 0.0 <= sounding_threshold <= 1.0:
        _fail(f"--sounding-threshold is a probability in [0, 1]; got {sounding_threshold}")
    if threshold != threshold or abs(threshold) == float("inf"):
        _fail(f"--threshold must be a finite logit; got {threshold}")
    kind, artifact = models[0]
    if kind == "ort" and artifact == "default":
        from autr.runtime.backends import shipped_export
        from autr.runtime.errors import BackendError

        try:
            artifact = str(shipped_export())
        except BackendError as exc:
            _fail(str(exc))
    if kind == "remote":
        artifact = server
    if kind != "ort" and (precision != "fp32" or graph != "auto"):
        _fail("--precision and --graph choose among an ONNX export's graphs (--onnx DIR); an engine or a checkpoint "
              "has its own precision")
    if kind != "remote" and not (kind == "torch" and artifact == "default") and not os.path.exists(artifact):
        what = {"trt": "engine", "ort": "ONNX model", "torch": "checkpoint"}[kind]
        _fail(f"{what} not found: {artifact}")
    t_range = _model_t_range(kind, artifact) if kind != "remote" else _model_t_range("ort", _sidecar_dir(sidecar))
    if t_range is not None and not (t_range[0] <= window <= t_range[1]):
        _fail(f"the model takes {t_range[0]}..{t_range[1]} frames per call (its sidecar says so); --window {window} "
              "is outside that range")
    if len(input_) > 1:
        for path in input_:
            if "://" not in path and not os.path.exists(path):
                _fail(f"input not found: {path}")
        return _stream_many(kind, artifact, input_, realtime, silent_audio, queue_size, out, masks_dir, report_path,
                            duration, window, threshold, sounding_threshold, threads,
                            dict(provider=provider, device=device, precision=precision, graph=graph, model=model_name,
                                 sidecar=sidecar, timeout=server_timeout))
    from autr.runtime.threads import plan_threads

    try:
        plan = plan_threads(pipeline=True, threads=threads)
    except ValueError as exc:
        _fail(str(exc))

    from autr.runtime import (DisplaySink, LiveSource, MaskPngSink, MediaSource, MicrophoneSource, Mp4Sink,
                              StreamError, StreamRunner, SyntheticSource, WebcamSource, display_problem, open_backend,
                              write_report)

    sinks, source, backend = [], None, None
    phase = {"running": False}
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum, frame):  # before the stream runs: stop opening things; while it runs: the runner's
        if not phase["running"]:
            raise KeyboardInterrupt("SIGTERM")

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        previous = None
    try:
        try:
            # the input and the outputs first: a missing file, an audio-only file, a missing camera or an
            # unwritable output costs no model load (torch takes seconds to import and load)
            if synthetic:
                source = SyntheticSource(fps=fps, seed=seed, size=224, realtime=True, audio=not silent_audio,
                                         queue_size=queue_size)
            elif input_:
                source = MediaSource(input_[0], realtime=realtime, silent_audio=silent_audio, queue_size=queue_size)
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
            extra = {"frames": window} if kind == "ort" else {}  # a live stream's T: the session specialises to it
            if kind == "remote":
                extra = {"model": model_name, "sidecar": sidecar, "timeout": server_timeout}
            backend = open_backend(kind, artifact, provider=provider, device=device, threads=plan.intra_op,
                                   spinning=plan.spinning, precision=precision, graph=graph, **extra)
            for notice in getattr(backend, "notices", ()):
                _note(notice)
            runner = StreamRunner(source, backend, sinks=sinks, window=window, queue_size=queue_size,
                                  duration=duration, threshold=threshold, plan=plan,
                                  sounding_threshold=sounding_threshold)
        except (StreamError, KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - one line, never a traceback
            for s in sinks:
                try:
                    s.close()
                except Exception:  # noqa: BLE001
                    pass
            if source is not None:
                source.stop()
            if isinstance(exc, KeyboardInterrupt):
                term = "SIGTERM" in str(exc)
                _fail(("terminated (SIGTERM)" if term else "interrupted (Ctrl-C)") + " before the stream started",
                      code=143 if term else 130)
            if not isinstance(exc, StreamError):
                from autr.runtime.errors import one_line

                _fail(f"could not start the stream: {type(exc).__name__}: {one_line(exc)}")
            _fail(str(exc))

        outputs = [f"out {out}"] * bool(out) + [f"masks {masks_dir}/"] * bool(masks_dir) + \
            [f"report {report_path}"] * bool(report_path) + ["window"] * any(isinstance(s, DisplaySink) for s in sinks)
        click.echo(f"autr: model {_describe_model(backend, kind, precision, window)} | input {_describe_input(source)} "
                   f"| {', '.join(outputs) or 'no outputs (add --out / --masks / --report)'}", err=True)
        for w in source.warnings:
            _note(w)
        shown = set(source.warnings)
        status = None
        if sys.stderr.isatty():
            total = getattr(source, "duration", None) if isinstance(source, MediaSource) and not source.network \
                else None
            if duration:
                total = min(total, duration) if total else duration
            status = _StatusLine(runner, sys.stderr, total)
            runner.on_packet = status
        phase["running"] = True
        try:
            rep = runner.run()
        finally:
            if status is not None:
                status.close()
        wrote = [f"{s.path} ({s.frames} frames)" for s in sinks if isinstance(s, Mp4Sink) and s.frames]
        wrote += [f"{s.dir}/ ({s.count} masks)" for s in sinks if isinstance(s, MaskPngSink)]
        if report_path:
            try:
                wrote.append(str(write_report(rep, report_path)))
            except OSError as exc:
                _fail(f"cannot write the report {report_path}: {exc}", code=1)
        click.echo(_summary(rep) + (f"; wrote {', '.join(wrote)}" if wrote else ""))
        kept = f" (kept {', '.join(wrote)})" if wrote else ""
        for w in rep.get("warnings", []):
            if w not in (rep.get("error"), rep.get("input_fault")) and w not in shown:
                _note(w)
        if rep.get("error"):
            _fail(rep["error"] + kept, code=1)
        if rep.get("input_fault"):
            _fail(rep["input_fault"] + kept, code=1)
        if rep.get("stopped_by") == "interrupt":
            _note("stopped (Ctrl-C); outputs finalised")
        elif rep.get("stopped_by") == "terminated":
            _note("stopped (SIGTERM); outputs finalised")
    finally:
        if backend is not None:
            backend.close()
        if previous is not None:
            try:
                signal.signal(signal.SIGTERM, previous)
            except (ValueError, TypeError):
                pass


def _sidecar_dir(sidecar: str) -> str:
    """The directory whose model.json --sidecar names (for the --window check before the server is asked)."""
    if sidecar == "default":
        from autr.runtime.backends import shipped_export

        try:
            return str(shipped_export())
        except Exception:  # noqa: BLE001 - the backend says it in its own words
            return sidecar
    return os.path.dirname(sidecar) if sidecar.endswith(".json") else sidecar


def _stream_many(kind, artifact, inputs, realtime, silent_audio, queue_size, out, masks_dir, report_path, duration,
                 window, threshold, sounding_threshold, threads, options) -> None:
    """Several inputs on one model (runtime.multi): one StreamRunner per input, their windows batched into one call."""
    from autr.runtime import MaskPngSink, MediaSource, Mp4Sink, StreamError, open_backend, write_report
    from autr.runtime.errors import one_line
    from autr.runtime.multi import BatchingBackend, MultiStreamRunner
    from autr.runtime.threads import plan_instances, plan_threads

    try:
        plan = plan_threads(pipeline=True, threads=threads)
        sessions, per_session = plan_instances(len(inputs), threads=threads) if kind != "remote" else (1, None)
    except ValueError as exc:
        _fail(str(exc))
    sources, sinks, batcher = [], [], None
    try:
        for i, path in enumerate(inputs):
            src = MediaSource(path, realtime=realtime, silent_audio=silent_audio, queue_size=queue_size)
            sources.append(src)
            src.start()
            sk = [Mp4Sink(out.replace("{i}", str(i)))] if out else []
            sk += [MaskPngSink(masks_dir.replace("{i}", str(i)))] if masks_dir else []
            sinks.append(sk)
        extra = {"model": options["model"], "sidecar": options["sidecar"], "timeout": options["timeout"]} \
            if kind == "remote" else {}
        # the serving plan: one session per core on one thread each once there are streams to keep them busy
        backends = [open_backend(kind, artifact, provider=options["provider"], device=options["device"],
                                 threads=per_session or plan.intra_op, spinning=plan.spinning,
                                 precision=options["precision"], graph=options["graph"], **extra)
                    for _ in range(sessions)]
        for notice in getattr(backends[0], "notices", ()):
            _note(notice)
        batcher = BatchingBackend(backends)
        runner = MultiStreamRunner(sources, batcher, sinks=sinks, plan=plan, window=window, queue_size=queue_size,
                                   duration=duration, threshold=threshold, sounding_threshold=sounding_threshold)
    except (StreamError, Exception) as exc:  # noqa: BLE001 - one line, never a traceback
        for sk in sinks:
            for s in sk:
                try:
                    s.close()
                except Exception:  # noqa: BLE001
                    pass
        for src in sources:
            src.stop()
        if batcher is not None:
            batcher.close()
        _fail(str(exc) if isinstance(exc, StreamError) else f"could not start the streams: {type(exc).__name__}: "
              f"{one_line(exc)}")
    b, backend = batcher.describe(), backends[0]
    click.echo(f"autr: model {kind} {os.path.basename(str(backend.artifact))} ({backend.input_size[0]}x"
               f"{backend.input_size[1]}, T={window}), {len(inputs)} streams batched into calls of up to "
               f"{b['max_frames']} frames" + ("" if b["stacking"] else " (not stacked: the clip query rule)")
               + f" on {sessions} session(s)", err=True)
    try:
        rep = runner.run()
    finally:
        batcher.close()
    for i, r in enumerate(rep["per_stream"]):
        click.echo(f"stream {i} ({inputs[i]}): {_summary(r)}")
    click.echo(f"{len(inputs)} streams: {rep['windows_output']} windows, {rep['windows_per_s'] or 0:.1f} windows/s, "
               f"{rep['batching']['mean_frames_per_call'] or 0:.2f} frames per call, dropped {rep['dropped']}")
    if report_path:
        try:
            click.echo(f"wrote {write_report(rep, report_path)}")
        except OSError as exc:
            _fail(f"cannot write the report {report_path}: {exc}", code=1)
    if rep["errors"]:
        _fail("; ".join(rep["errors"]), code=1)


def main(argv=None):  # `python -m autr.runtime` (the same command as `autr stream`)
    stream.main(args=argv, prog_name="autr stream")
