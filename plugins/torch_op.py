"""PyTorch binding of the MSDA CUDA kernel (built on demand with torch.utils.cpp_extension).

    from autr.plugins.torch_op import ms_deform_attn_cuda   # raises PluginUnavailable if it cannot work here
    out = ms_deform_attn_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

Importing this module is cheap (torch is imported inside functions). Importing the *name*
`ms_deform_attn_cuda` (or `MSDeformAttnFunction`) loads the extension first, compiling it into
`default_build_dir()/torch_ext/<tag>` on first use, so that `from ... import ms_deform_attn_cuda`
inside a try/except is a complete availability test. `load_extension()` and `is_available()` do the
same explicitly.

Semantics: DESIGN.md's MSDA contract. value / sampling_locations / attention_weights: float32,
float16, bfloat16 or float64 CUDA tensors (locations and weights are cast to value's dtype; float16 and
bfloat16 accumulate in float32); spatial_shapes and level_start_index: int64 or int32 tensors, read by the
kernel as they are (no conversion per call). Backward runs in float32 (float64 for float64 inputs);
float16 / bfloat16 inputs are upcast for it.

A prebuilt module `autr.plugins._C` (e.g. a CUDAExtension added to setup.py with sources
csrc/torch_binding.cpp + csrc/ms_deform_attn.cu) is used instead of the JIT build when present.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from pathlib import Path

from .build import CSRC_DIR, default_build_dir
from .errors import PluginUnavailable

__all__ = [
    "PluginUnavailable",
    "load_extension",
    "build_extension",
    "is_available",
    "extension_build_dir",
]  # ms_deform_attn_cuda / MSDeformAttnFunction: importing them loads the extension (see __getattr__)

EXTENSION_NAME = "autr_msda_ext"
EXTENSION_SOURCES = (CSRC_DIR / "torch_binding.cpp", CSRC_DIR / "ms_deform_attn.cu")
_DEPENDENCIES = (*EXTENSION_SOURCES, CSRC_DIR / "ms_deform_attn.h", CSRC_DIR / "ms_deform_attn.cuh")
# Used when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset (e.g. building ahead of time); Blackwell
# (10.0, 12.0) where the CUDA toolkit has it (12.8+).
DEFAULT_TORCH_ARCH_LIST = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
PRE_BLACKWELL_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"

_lock = threading.Lock()
_extension = None
_failure: PluginUnavailable | None = None
_function_class = None


def _import_torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a project dependency
        raise PluginUnavailable(f"PyTorch is not installed ({exc}); the MSDA CUDA extension needs it") from exc
    return torch


def extension_build_dir() -> Path:
    """Cache directory of the JIT build, keyed by torch/CUDA/Python versions and the source hash."""
    torch = _import_torch()
    digest = hashlib.sha256()
    for path in _DEPENDENCIES:
        digest.update(path.read_bytes())
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    tag = f"torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda or 'none'}-{py}-{digest.hexdigest()[:12]}"
    return default_build_dir() / "torch_ext" / tag


def _check_cuda_runtime(torch) -> None:
    if torch.version.cuda is None:
        raise PluginUnavailable(
            f"PyTorch {torch.__version__} is a CPU-only build; the MSDA CUDA extension needs a CUDA build of "
            "PyTorch and an NVIDIA GPU (the grid_sample reference works everywhere)"
        )
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        detail = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        raise PluginUnavailable(
            f"CUDA is not available: torch.cuda.is_available() is False (no NVIDIA GPU or driver visible{detail}); "
            "the MSDA CUDA extension only runs on CUDA tensors"
        )


def _check_toolchain():
    try:
        from torch.utils import cpp_extension
    except Exception as exc:  # pragma: no cover
        raise PluginUnavailable(f"torch.utils.cpp_extension cannot be imported ({exc})") from exc
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = Path(cuda_home) / "bin" / "nvcc" if cuda_home else None
    if nvcc is None or not nvcc.exists():
        raise PluginUnavailable(
            "nvcc was not found (torch.utils.cpp_extension.CUDA_HOME="
            f"{cuda_home!r}): install the CUDA toolkit matching torch.version.cuda and set CUDA_HOME, "
            "or install a prebuilt autr.plugins._C"
        )
    header = Path(cuda_home) / "include" / "cuda_runtime_api.h"
    if not header.exists():
        # e.g. nvcc reached through a /usr/local/bin symlink makes torch guess CUDA_HOME=/usr/local
        homes = [Path(os.path.realpath(nvcc)).parent.parent, Path("/usr/local/cuda")]
        found = [h for h in homes if (h / "include" / "cuda_runtime_api.h").exists()]
        hint = f" (e.g. CUDA_HOME={found[0]})" if found else ""
        raise PluginUnavailable(
            f"CUDA_HOME={cuda_home} has no include/cuda_runtime_api.h: set CUDA_HOME to the CUDA toolkit root{hint}"
        )
    if not cpp_extension.is_ninja_available():
        raise PluginUnavailable("ninja is not installed (`pip install ninja`); torch.utils.cpp_extension needs it")
    import torch

    from .build import nvcc_version
    from .toolkit import torch_problem

    problem = torch_problem(torch.version.cuda, nvcc_version(str(nvcc)))
    if problem:  # torch's builder would refuse it after a long traceback
        raise PluginUnavailable(problem)
    return cpp_extension


def _default_arch_list(nvcc_release: str) -> str:
    major, _, minor = nvcc_release.partition(".")
    new_enough = major.isdigit() and (int(major), int(minor or 0)) >= (12, 8)
    return DEFAULT_TORCH_ARCH_LIST if new_enough else PRE_BLACKWELL_ARCH_LIST


def build_extension(verbose: bool = False, build_dir: str | os.PathLike | None = None, arch_list: str | None = None):
    """Compile (or reuse) the extension and import it, without requiring a GPU.

    Needs torch, nvcc and ninja. `arch_list` uses TORCH_CUDA_ARCH_LIST syntax ("8.0;9.0+PTX"); with
    no GPU visible and neither `arch_list` nor TORCH_CUDA_ARCH_LIST set, compiles for
    DEFAULT_TORCH_ARCH_LIST. Raises PluginUnavailable.
    """
    torch = _import_torch()
    if torch.version.cuda is None:
        _check_cuda_runtime(torch)  # raises: CPU-only torch cannot build CUDA extensions
    cpp_extension = _check_toolchain()
    directory = Path(build_dir) if build_dir is not None else extension_build_dir()
    directory.mkdir(parents=True, exist_ok=True)

    previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if arch_list is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    elif previous is None and not torch.cuda.is_available():
        from .build import nvcc_version

        os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list(
            nvcc_version(str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc")))
    try:
        return cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(p) for p in EXTENSION_SOURCES],
            extra_include_paths=[str(CSRC_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
            build_directory=str(directory),
            verbose=verbose,
        )
    except Exception as exc:
        # one line (the compiler output is in the build directory / with verbose=True)
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise PluginUnavailable(
            f"building the MSDA CUDA extension failed in {directory}: {type(exc).__name__}: {first} "
            "(rerun with `python -m autr.plugins build --torch --verbose` for the compiler output)"
        ) from exc
    finally:
        if previous is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = previous


def load_extension(verbose: bool = False):
    """The compiled extension module (forward/backward); builds it on first use.

    Raises PluginUnavailable with the reason (no CUDA build of torch, no GPU, no nvcc, no ninja,
    compile error). A failure is remembered for the life of the process.
    """
    global _extension, _failure
    if _extension is not None:
        return _extension
    with _lock:
        if _extension is not None:
            return _extension
        if _failure is not None:
            raise _failure
        try:
            torch = _import_torch()
            _check_cuda_runtime(torch)
            try:
                module = importlib.import_module(f"{__package__}._C")
            except ImportError:
                module = build_extension(verbose=verbose)
            _extension = module
        except PluginUnavailable as exc:
            _failure = exc
            raise
    return _extension


def is_available() -> bool:
    """True when the CUDA extension loads here (may compile it on first call)."""
    try:
        load_extension()
    except PluginUnavailable:
        return False
    return True


def _make_function_class():
    torch = _import_torch()
    from torch.autograd.function import once_differentiable

    class MSDeformAttnFunction(torch.autograd.Function):
        """Autograd function over the CUDA kernel (forward + analytic backward)."""

        @staticmethod
        def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
            ext = load_extension()
            output = ext.forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
            ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
            return output

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_output):
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
            compute = value.dtype if value.dtype in (torch.float32, torch.float64) else torch.float32
            grad_value, grad_locations, grad_weights = load_extension().backward(
                value.to(compute),
                spatial_shapes,
                level_start_index,
                sampling_locations.to(compute),
                attention_weights.to(compute),
                grad_output.to(compute).contiguous(),
            )
            return (
                grad_value.to(value.dtype),
                None,
                None,
                grad_locations.to(sampling_locations.dtype),
                grad_weights.to(attention_weights.dtype),
            )

    return MSDeformAttnFunction


def _get_function_class():
    global _function_class
    if _function_class is None:
        _function_class = _make_function_class()
    return _function_class


def _ms_deform_attn_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """MSDA on CUDA tensors with the compiled kernel; differentiable w.r.t. value, locations and weights.
    Under autocast the inputs are cast to value's dtype (float16 / bfloat16 run natively, fp32 accumulation)."""
    load_extension()
    if not value.is_cuda:
        raise ValueError("ms_deform_attn_cuda needs CUDA tensors; use the grid_sample reference on CPU")
    if sampling_locations.dtype != value.dtype:
        sampling_locations = sampling_locations.to(value.dtype)
    if attention_weights.dtype != value.dtype:
        attention_weights = attention_weights.to(value.dtype)
    return _get_function_class().apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def forward_variant(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                    impl: str = "kernel"):
    """Forward only, for benchmarks: impl "kernel" (what ms_deform_attn_cuda runs), "generic" (the kernel
    without its (L, P) specialisation) or "detr" (Deformable-DETR's one-thread-per-channel layout)."""
    codes = {"kernel": 0, "generic": 1, "detr": 2}
    if impl not in codes:
        raise ValueError(f"impl must be one of {', '.join(codes)}, got {impl!r}")
    return load_extension().forward(value, spatial_shapes, level_start_index, sampling_locations.to(value.dtype),
                                    attention_weights.to(value.dtype), codes[impl])


_ms_deform_attn_cuda.__name__ = "ms_deform_attn_cuda"
_ms_deform_attn_cuda.__qualname__ = "ms_deform_attn_cuda"


def __getattr__(name):
    # Importing these names loads the extension, so `from ... import ms_deform_attn_cuda` fails with
    # PluginUnavailable (an ImportError-free, explicit reason) where the kernel cannot run.
    if name == "ms_deform_attn_cuda":
        load_extension()
        return _ms_deform_attn_cuda
    if name == "MSDeformAttnFunction":
        load_extension()
        return _get_function_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
