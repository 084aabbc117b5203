"""autr.runtime: the lean streaming runtime (never imports torch; see DESIGN.md "Runtime shape").

    capture threads -> window assembler -> preprocess -> backend (trt | ort | torch | remote) -> overlay -> sinks

Several streams on one model: :class:`MultiStreamRunner` + :class:`BatchingBackend` (their windows stacked on T into
one call); a model on an Open Inference Protocol server: ``open_backend("remote", "grpc://HOST:PORT", model=...,
sidecar=...)``.

Quick use::

    from autr.runtime import StreamRunner, open_backend, MediaSource, Mp4Sink, write_report

    source = MediaSource("clip.mp4")
    backend = open_backend(artifact="export/model.portable.onnx")        # ort, from the artifact
    runner = StreamRunner(source, backend, sinks=[Mp4Sink("out.mp4")])   # the mp4 gets the source's audio
    write_report(runner.run(), "report.json")

Importing this package loads numpy and :mod:`autr.preprocess` only; PyAV, OpenCV, sounddevice, ONNX Runtime,
TensorRT are imported by the source / sink / backend that needs them, and torch only by the torch backend.
"""
from __future__ import annotations

from .backends import Backend, backend_kind_for, open_backend
from .errors import (BackendError, BackendUnavailable, DeviceError, NoAudioError, SidecarError, SinkError, SourceError,
                     StreamError)
from .frames import Frame, Packet
from .multi import BatchingBackend, MultiStreamRunner
from .pipeline import StreamRunner, write_report
from .queues import BoundedQueue, Closed
from .ring import AudioRingBuffer
from .sinks import DisplaySink, MaskPngSink, Mp4Sink, display_problem
from .sources import (LiveSource, MediaSource, MicrophoneSource, Source, SyntheticSource, WebcamSource, is_url,
                      list_input_devices)
from .stats import LatencyRecorder, now

__all__ = [
    "AudioRingBuffer", "Backend", "BackendError", "BatchingBackend", "BackendUnavailable", "BoundedQueue", "Closed", "DeviceError",
    "DisplaySink", "Frame", "LatencyRecorder", "LiveSource", "MaskPngSink", "MediaSource", "MicrophoneSource",
    "Mp4Sink", "MultiStreamRunner", "NoAudioError", "Packet", "SidecarError", "SinkError", "Source", "SourceError", "StreamError",
    "StreamRunner", "SyntheticSource", "WebcamSource", "backend_kind_for", "display_problem", "is_url",
    "list_input_devices", "now", "open_backend", "write_report",
]
