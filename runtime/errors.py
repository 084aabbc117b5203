"""Errors of the streaming runtime: each one is a single clear line, never a traceback storm.

Every error the runtime raises on purpose is a :class:`StreamError` (a ``RuntimeError``); the
``autr stream`` command prints its message on one line and exits with status 2.
"""
from __future__ import annotations


class StreamError(RuntimeError):
    """A fault of the stream (its input, its device, its model or its outputs), one line."""


class SourceError(StreamError):
    """An input that cannot be opened or read."""


class NoAudioError(SourceError):
    """An input without sound where the model needs sound (``--silent-audio`` runs it on silence)."""


class DeviceError(SourceError):
    """A camera or microphone that is missing, busy or gone."""


class BackendError(StreamError):
    """A model artifact that cannot be loaded or run."""


class BackendUnavailable(BackendError):
    """A backend whose Python packages (or hardware) are missing here; the message says how to install."""


class SidecarError(BackendError):
    """A missing or inconsistent ``model.json`` / engine sidecar."""


class SinkError(StreamError):
    """An output (window, mp4, PNG folder, report) that cannot be written."""


def one_line(exc: BaseException) -> str:
    """The message of an exception squeezed onto one line (FFmpeg / PortAudio messages can be long)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
