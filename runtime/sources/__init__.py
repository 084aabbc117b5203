"""Sources: media files and network streams (PyAV), a live synthetic scene, a camera, a microphone.

Each module imports its heavy dependency (av, cv2, sounddevice, autr.synth) only when a source is opened.
"""
from __future__ import annotations

from .base import Source
from .live import LiveSource
from .media import MediaSource, is_url
from .microphone import MicrophoneSource, list_input_devices
from .synthetic import SyntheticSource
from .webcam import WebcamSource

__all__ = ["Source", "LiveSource", "MediaSource", "MicrophoneSource", "SyntheticSource", "WebcamSource", "is_url",
           "list_input_devices"]
