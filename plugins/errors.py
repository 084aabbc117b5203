"""Exceptions of `autr.plugins` (no third-party imports)."""
from __future__ import annotations


class PluginError(RuntimeError):
    """Base class of the errors raised by `autr.plugins`."""


class PluginUnavailable(PluginError):
    """The PyTorch CUDA extension cannot be used here; the message says why and what to do."""


class BuildError(PluginError):
    """A compile step failed or a required tool (nvcc, TensorRT headers) is missing."""


class PluginLibraryNotFound(PluginError, FileNotFoundError):
    """No built `libautr_trt_plugin.so` was found; the message says how to build one."""
