"""The ONNX Runtime custom-op library of the MSDA node: register it on a session, or say why not.

    import onnxruntime as ort
    from autr.plugins import register_msda

    options = ort.SessionOptions()
    reason = register_msda(options)  # None: AutrMSDeformAttn is registered on `options`
    onnx_file = "model.plugin.onnx" if reason is None else "model.portable.onnx"
    if reason:
        print(f"MSDA custom op unavailable ({reason}); running the portable graph")
    session = ort.InferenceSession(onnx_file, options, providers=[...])

`register_msda` never raises for a missing, broken or mismatched library: it returns a one-line reason
(with the command that fixes it) so that the caller can fall back to the portable graph with a single
notice. Only the standard library is imported here (onnxruntime inside the function); no torch.

Which library: `library=` when given, else `$AUTR_ORT_OPS`, else the CUDA-enabled sibling
(libautr_ort_ops_cuda.so) when this onnxruntime offers the CUDA execution provider and it is built,
else libautr_ort_ops.so (see `autr.plugins.build.ort_library_path`).
"""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from .build import (
    ORT_BUILD_HINT,
    ORT_LIBRARY_NAME,
    ORT_OPS_ENV,
    ort_library_path,
)
from .errors import PluginError, PluginLibraryNotFound

__all__ = ["OrtOpsError", "describe_ort_library", "library_facts", "onnxruntime_api_version", "register_msda",
           "select_ort_library"]

CUDA_PROVIDER = "CUDAExecutionProvider"


class OrtOpsError(PluginError):
    """A file that cannot serve as the AuTR ONNX Runtime custom-op library; the message is one line."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def library_facts(path: str | os.PathLike) -> dict:
    """What a built library says about itself: {"api_version": int, "cuda": bool, "cpu_isa": str}.

    Loads it with ctypes (no ONNX Runtime involved). Raises OrtOpsError (one line) for a file that is not
    a loadable shared library or not an AuTR ONNX Runtime library."""
    path = Path(path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise OrtOpsError(f"cannot load {path} ({_one_line(exc)}); {ORT_BUILD_HINT}") from None
    try:
        api = lib.AutrOrtOpsApiVersion
        has_cuda = lib.AutrOrtOpsHasCuda
        isa = lib.AutrOrtOpsCpuIsa
    except AttributeError:
        raise OrtOpsError(f"{path} is not an AuTR ONNX Runtime custom-op library (no AutrOrtOpsApiVersion); "
                          f"point ${ORT_OPS_ENV} at {ORT_LIBRARY_NAME} or {ORT_BUILD_HINT}") from None
    api.restype = ctypes.c_int
    has_cuda.restype = ctypes.c_int
    isa.restype = ctypes.c_char_p
    return {"api_version": int(api()), "cuda": bool(has_cuda()), "cpu_isa": isa().decode()}


def onnxruntime_api_version(version: str) -> int | None:
    """Highest ONNX Runtime C API version an onnxruntime release serves (1.x serves up to x); None if
    the version text cannot be read or the major version is not 1 (then no limit is assumed)."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if not match or match.group(1) != "1":
        return None
    return int(match.group(2))


def select_ort_library(cuda: bool | None = None) -> Path:
    """The library `register_msda` would use. `cuda=None`: the CUDA-enabled sibling when onnxruntime offers
    the CUDA execution provider and the sibling is built, else the CPU library. Raises
    PluginLibraryNotFound (one line)."""
    if os.environ.get(ORT_OPS_ENV):
        return ort_library_path()
    if cuda is None:
        try:
            import onnxruntime

            cuda = CUDA_PROVIDER in onnxruntime.get_available_providers()
        except Exception:  # no / broken onnxruntime: register_msda reports it
            cuda = False
    if cuda:
        try:
            return ort_library_path(cuda=True)
        except PluginLibraryNotFound:
            pass  # the CPU library still runs the node (on the CPU execution provider)
    return ort_library_path()


def register_msda(session_options, library: str | os.PathLike | None = None, cuda: bool | None = None) -> str | None:
    """Register the AutrMSDeformAttn custom op (domain "autr") on an onnxruntime.SessionOptions.

    Returns None when registered, else a one-line reason (library not built / not loadable / built for a
    newer ONNX Runtime / refused by onnxruntime) that names the fix, so the caller can fall back to the
    portable graph. `library`: an explicit .so; `cuda`: see `select_ort_library`."""
    try:
        import onnxruntime
    except ImportError as exc:
        return f"onnxruntime is not installed ({_one_line(exc)}); pip install onnxruntime"
    try:
        path = Path(library) if library is not None else select_ort_library(cuda)
    except PluginLibraryNotFound as exc:
        return _one_line(exc)
    if not path.is_file():
        return f"{path} does not exist; {ORT_BUILD_HINT}"
    try:
        facts = library_facts(path)
    except OrtOpsError as exc:
        return _one_line(exc)
    runtime_api = onnxruntime_api_version(getattr(onnxruntime, "__version__", ""))
    if runtime_api is not None and facts["api_version"] > runtime_api:
        return (f"{path.name} was built for ONNX Runtime C API {facts['api_version']} (onnxruntime >= "
                f"1.{facts['api_version']}) but onnxruntime {onnxruntime.__version__} is installed; upgrade "
                "onnxruntime, or rebuild against its headers: `python -m autr.plugins build --ort --ort-include DIR`")
    try:
        session_options.register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own Fail / RuntimeError types
        return f"onnxruntime refused {path.name}: {_one_line(exc)}"
    return None


def describe_ort_library(cuda: bool = False) -> str:
    """One line for `python -m autr.plugins info`: where the library is and what it says about itself."""
    try:
        path = ort_library_path(cuda=cuda)
    except PluginLibraryNotFound as exc:
        return _one_line(exc)
    try:
        facts = library_facts(path)
    except OrtOpsError as exc:
        return _one_line(exc)
    kind = "CPU + CUDA kernels" if facts["cuda"] else f"CPU kernel, {facts['cpu_isa']} path on this CPU"
    return f"{path} (C API {facts['api_version']}, {kind})"
