"""autr.plugins: the MSDA CUDA kernel, its TensorRT plugin and its PyTorch extension.

Importing this package is light (standard library only; torch is imported inside functions).

- TensorRT: ``python -m autr.plugins build --trt-include DIR`` builds ``libautr_trt_plugin.so``
  (plugin ``AutrMSDeformAttn`` version ``"1"``, namespace ``""``); ``library_path()`` finds it,
  ``library_hash()`` fingerprints it for the engine cache. Load it into TensorRT with
  ``trt.get_plugin_registry().load_library(str(library_path()))`` before parsing ONNX or
  deserialising an engine (or ``trtexec --dynamicPlugins=...``).
- PyTorch: ``load_extension()`` / ``is_available()``; ``from autr.plugins.torch_op import
  ms_deform_attn_cuda`` raises ``PluginUnavailable`` (with the reason) where the kernel cannot run.
- ONNX Runtime: ``python -m autr.plugins build --ort`` builds ``libautr_ort_ops.so`` (CPU kernel; plus
  ``libautr_ort_ops_cuda.so`` for the CUDA execution provider where nvcc is present);
  ``register_msda(session_options)`` registers op ``AutrMSDeformAttn`` (domain ``autr``) and returns None,
  or returns a one-line reason to fall back to the portable graph. ``ort_library_path()`` /
  ``ort_library_hash()`` locate and fingerprint the library.
"""
from __future__ import annotations

from .build import (
    DEFAULT_ARCHS,
    LIBRARY_NAME,
    ORT_CUDA_LIBRARY_NAME,
    ORT_LIBRARY_NAME,
    build_all,
    build_ort_ops,
    build_trt_plugin,
    compile_kernel,
    default_build_dir,
    fatbin_archs,
    find_nvcc,
    find_plugin_library,
    find_ort_include,
    find_trt_include,
    library_hash,
    library_path,
    ort_library_hash,
    ort_library_path,
    trt_version,
)
from .errors import BuildError, PluginError, PluginLibraryNotFound, PluginUnavailable
from .ort_ops import register_msda
from .torch_op import build_extension, is_available, load_extension

PLUGIN_NAME = "AutrMSDeformAttn"  # TensorRT plugin name == ONNX op_type
PLUGIN_VERSION = "1"  # == ONNX attribute plugin_version
PLUGIN_NAMESPACE = ""  # the ONNX parser's default plugin_namespace
ONNX_DOMAIN = "autr"

__all__ = [
    "BuildError",
    "DEFAULT_ARCHS",
    "LIBRARY_NAME",
    "ONNX_DOMAIN",
    "ORT_CUDA_LIBRARY_NAME",
    "ORT_LIBRARY_NAME",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "PluginError",
    "PluginLibraryNotFound",
    "PluginUnavailable",
    "build_all",
    "build_extension",
    "build_ort_ops",
    "build_trt_plugin",
    "compile_kernel",
    "default_build_dir",
    "fatbin_archs",
    "find_nvcc",
    "find_ort_include",
    "find_plugin_library",
    "find_trt_include",
    "is_available",
    "library_hash",
    "library_path",
    "load_extension",
    "ort_library_hash",
    "ort_library_path",
    "register_msda",
    "trt_version",
]
