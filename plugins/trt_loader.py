"""Register the MSDA plugin library with TensorRT once per process (standard library only; `trt` is passed in).

TensorRT's ``IPluginRegistry::loadLibrary`` (Python: ``registry.load_library(path)``) returns null / None when
any plugin of the library is already registered (NvInferRuntimeCommon.h), so a second load in one process --
a second engine build, build then run, fp32 then fp16 in one benchmark -- fails. ``load_plugin_library``
looks the creator up first (``registry.get_creator(name, version, namespace)``) and loads only when it is
not registered yet, remembering which library it loaded: asking for another library while ours is
registered is one clear error (TensorRT cannot hold two creators of the same name).
"""
from __future__ import annotations

import threading
from pathlib import Path

from .errors import PluginError
from .toolkit import plugin_problem

PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "AutrMSDeformAttn", "1", ""

_lock = threading.Lock()
_loaded: dict = {}  # resolved library path -> (sha256, handle) of the library this process registered


def _sha256(path: Path) -> str:
    from .build import library_hash

    return library_hash(path)


def load_plugin_library(trt, path, registry=None, errors=None):
    """Make sure `path`'s AutrMSDeformAttn v1 creator is registered; returns the library handle (None when the
    creator was registered by someone else, e.g. ``trtexec --dynamicPlugins``). Raises PluginError (one line):
    the library is built for another driver / TensorRT CUDA major, TensorRT refuses it, or another build of
    the plugin is already registered in this process. `errors()` may return TensorRT's logged errors."""
    path = Path(path).resolve()
    registry = registry if registry is not None else trt.get_plugin_registry()
    with _lock:
        registered = registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None
        if registered:
            if str(path) in _loaded:
                return _loaded[str(path)][1]
            ours = [(p, h) for p, (h, _) in _loaded.items()]
            if ours:
                digest = _sha256(path)
                for other, other_hash in ours:
                    if other_hash == digest:  # the same build under another path
                        return _loaded[other][1]
                raise PluginError(
                    f"the {PLUGIN_NAME} plugin of {ours[0][0]} is already registered in this process and TensorRT "
                    f"cannot register {path} beside it: use one plugin library per process (restart to switch)")
            return None  # registered outside this module: TensorRT refuses a second registration anyway
        _loaded.clear()  # not registered (any more): a fresh registry
        problem = plugin_problem(path)
        if problem:
            raise PluginError(problem)
        handle = registry.load_library(str(path))
        if handle is None:
            detail = " | ".join(errors() if errors else []) or "no message from TensorRT"
            raise PluginError(f"TensorRT could not load the plugin library {path}: {detail}")
        _loaded[str(path)] = (_sha256(path), handle)
        return handle
