"""Build the MSDA CUDA kernel and the TensorRT plugin library; locate and hash the built library.

Only the standard library is used here (no torch): the runtime imports `library_path()` and
`library_hash()` from this module.

Artifacts:
- ``ms_deform_attn.o``: the kernel compiled for sm_80/86/89/90/100/120 (+ compute_120 PTX), the compile check.
- ``libautr_trt_plugin.so``: kernel + TensorRT IPluginV3 ``AutrMSDeformAttn`` v1, exporting
  ``getCreators`` / ``setLoggerFinder``. Built with nvcc alone (no CMake, no TensorRT libraries: the
  plugin only uses TensorRT's interface classes), CUDA runtime linked statically; ``<library>.json`` beside
  it records the nvcc / CUDA version and archs (``toolkit.check_plugin_toolkit`` compares them at load time).

Library lookup (``library_path()``), first hit wins:
1. ``$AUTR_TRT_PLUGIN`` (path of the .so; an error if set but missing),
2. ``<this package>/lib/libautr_trt_plugin.so`` (a wheel or an in-tree build may ship it there),
3. ``default_build_dir()/libautr_trt_plugin.so``, where ``python -m autr.plugins build`` writes:
   ``$AUTR_PLUGIN_DIR``, else ``$XDG_CACHE_HOME/autr/plugins``, else ``~/.cache/autr/plugins``.

ONNX Runtime custom-op library (``python -m autr.plugins build --ort``, see ``build_ort_ops``):
- ``libautr_ort_ops.so``: the CPU kernel (csrc/ms_deform_attn_cpu.cpp) + its ONNX Runtime registration
  (ort/autr_ort_ops.cpp), compiled by the C++ compiler alone (no nvcc) against the ONNX Runtime C API
  headers (``find_ort_include``); exports ``RegisterCustomOps``.
- ``libautr_ort_ops_cuda.so`` (when nvcc is present): the same plus the CUDA kernel for the CUDA execution
  provider; CUDA runtime linked statically.
Lookup (``ort_library_path()``): ``$AUTR_ORT_OPS``, ``<this package>/lib/``, ``default_build_dir()``.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import BuildError, PluginLibraryNotFound

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC_DIR = PACKAGE_DIR / "csrc"
TRT_DIR = PACKAGE_DIR / "trt"
KERNEL_SOURCE = CSRC_DIR / "ms_deform_attn.cu"
KERNEL_SOURCES = (
    CSRC_DIR / "ms_deform_attn_problem.h",
    CSRC_DIR / "ms_deform_attn.h",
    CSRC_DIR / "ms_deform_attn.cuh",
    CSRC_DIR / "ms_deform_attn.cu",
)
PLUGIN_SOURCE = TRT_DIR / "ms_deform_attn_plugin.cpp"
PLUGIN_HEADER = TRT_DIR / "ms_deform_attn_plugin.h"
LIBRARY_NAME = "libautr_trt_plugin.so"
KERNEL_OBJECT_NAME = "ms_deform_attn.o"

ORT_DIR = PACKAGE_DIR / "ort"
ORT_SOURCE = ORT_DIR / "autr_ort_ops.cpp"
ORT_EXPORTS_MAP = ORT_DIR / "exports.map"  # linker version script: the symbols below stay global, the rest local
CPU_KERNEL_SOURCE = CSRC_DIR / "ms_deform_attn_cpu.cpp"
ORT_LIBRARY_NAME = "libautr_ort_ops.so"
ORT_CUDA_LIBRARY_NAME = "libautr_ort_ops_cuda.so"
# the only symbols the ORT libraries export (ORT_EXPORTS_MAP)
ORT_EXPORTS = ("RegisterCustomOps", "AutrOrtOpsApiVersion", "AutrOrtOpsHasCuda", "AutrOrtOpsCpuIsa")
ORT_HEADERS_DIRNAME = "ort-include"  # default_build_dir()/ort-include: where `make ort-headers` unpacks them

# Ampere, Ada, Hopper and Blackwell (sm_100 data centre, sm_120 consumer / workstation; nvcc 12.8+), + PTX of
# the newest for later GPUs. Defaults that the nvcc at hand does not know are left out with a note.
DEFAULT_ARCHS: tuple[str, ...] = ("80", "86", "89", "90", "100", "120")
BUILD_INFO_SUFFIX = ".json"  # libautr_trt_plugin.so.json: how the library was built (read by the loader)
NVCC_THREADS_ENV = "AUTR_NVCC_THREADS"  # nvcc --threads (default 0: one per CPU core)

PLUGIN_ENV = "AUTR_TRT_PLUGIN"  # explicit path of libautr_trt_plugin.so
PLUGIN_DIR_ENV = "AUTR_PLUGIN_DIR"  # where builds go / are looked up
TRT_INCLUDE_ENV = "AUTR_TRT_INCLUDE"  # TensorRT include directory
ORT_OPS_ENV = "AUTR_ORT_OPS"  # explicit path of the ONNX Runtime custom-op library
ORT_INCLUDE_ENV = "AUTR_ORT_INCLUDE"  # ONNX Runtime C API include directory (holds onnxruntime_c_api.h)

BUILD_HINT = (
    "build it with `python -m autr.plugins build --trt-include /path/to/TensorRT/include` "
    f"(or point ${PLUGIN_ENV} at an existing {LIBRARY_NAME})"
)
ORT_BUILD_HINT = "build it with `python -m autr.plugins build --ort` (`make install` does)"


# --------------------------------------------------------------------------------------- locations


def default_build_dir() -> Path:
    """Directory where builds are written and looked up (created on demand by the builders)."""
    env = os.environ.get(PLUGIN_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "autr" / "plugins"


def _find_library(name: str, env_var: str, hint: str) -> Path:
    """``$env_var`` (an error if set but missing), else ``<package>/lib/name``, else ``default_build_dir()/name``;
    PluginLibraryNotFound (one line, ending in `hint`) when none exists."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path.resolve()
        raise PluginLibraryNotFound(f"${env_var}={env} does not exist; unset it or {hint}")
    candidates = [PACKAGE_DIR / "lib" / name, default_build_dir() / name]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    searched = ", ".join(str(p) for p in candidates)
    raise PluginLibraryNotFound(f"{name} not found (searched {searched}); {hint}")


def library_path() -> Path:
    """Path of the built TensorRT plugin library; raises PluginLibraryNotFound saying how to build it."""
    return _find_library(LIBRARY_NAME, PLUGIN_ENV, BUILD_HINT)


find_plugin_library = library_path


def library_hash(path: str | os.PathLike | None = None) -> str:
    """sha256 (hex) of the plugin library (default: `library_path()`), for the engine cache key."""
    target = Path(path) if path is not None else library_path()
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sources_hash() -> str:
    """sha256 of the kernel/plugin sources (identifies a build configuration)."""
    digest = hashlib.sha256()
    for path in (*KERNEL_SOURCES, PLUGIN_HEADER, PLUGIN_SOURCE, CSRC_DIR / "torch_binding.cpp"):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------- tools


def find_nvcc(nvcc: str | os.PathLike | None = None) -> str:
    """Locate nvcc: argument, $CUDACXX, $CUDA_HOME/$CUDA_PATH, PATH, /usr/local/cuda."""
    if nvcc:
        path = Path(nvcc)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(str(nvcc)) if os.sep not in str(nvcc) else None
        if found:
            return found
        raise BuildError(f"nvcc not found at {nvcc}")
    candidates: list[str] = []
    if os.environ.get("CUDACXX"):
        candidates.append(os.environ["CUDACXX"])
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            candidates.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    which = shutil.which("nvcc")
    if which:
        candidates.append(which)
    candidates.append("/usr/local/cuda/bin/nvcc")
    for cand in candidates:
        if os.sep not in cand:
            resolved = shutil.which(cand)
        else:
            resolved = cand if Path(cand).is_file() and os.access(cand, os.X_OK) else None
        if resolved:
            return resolved
    raise BuildError(
        "nvcc (the CUDA compiler) was not found: install the CUDA toolkit (11.8 or newer for sm_90) "
        "and put it on PATH, or set CUDA_HOME / CUDACXX"
    )


def nvcc_version(nvcc: str) -> str:
    """'13.0' style release of an nvcc binary ('' when it cannot be read)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else ""


def nvcc_archs(nvcc: str) -> set[str] | None:
    """{'75', '80', ...}: the real architectures `nvcc --list-gpu-arch` knows (None when it cannot say)."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = set(re.findall(r"compute_(\d+)", out))
    return found or None


def supported_archs(nvcc: str, archs, explicit: bool) -> tuple[tuple[str, ...], list[str]]:
    """(archs this nvcc can build, notes). An explicit arch it does not know is a BuildError (one line); a
    default one is left out with a note (e.g. sm_100 / sm_120 need nvcc 12.8+)."""
    archs = parse_archs(archs)
    known = nvcc_archs(nvcc)
    if known is None:
        return archs, []
    missing = [a for a in archs if a not in known]
    if missing and explicit:
        raise BuildError(f"nvcc {nvcc_version(nvcc) or '?'} ({nvcc}) cannot build sm_{', sm_'.join(missing)} "
                         f"(it knows sm_{', sm_'.join(sorted(known, key=int))}); use a newer CUDA toolkit or --arch")
    kept = tuple(a for a in archs if a in known)
    if not kept:
        raise BuildError(f"nvcc {nvcc_version(nvcc) or '?'} ({nvcc}) knows none of sm_{', sm_'.join(archs)}")
    notes = [f"nvcc {nvcc_version(nvcc) or '?'} cannot build sm_{', sm_'.join(missing)} (CUDA 12.8+ needed for "
             "Blackwell): left out"] if missing else []
    return kept, notes


def parse_archs(archs: str | Iterable[str] | None) -> tuple[str, ...]:
    """'80,86' / ['8.0', 'sm_86'] -> ('80', '86')."""
    if archs is None:
        return DEFAULT_ARCHS
    items = archs.replace(";", ",").split(",") if isinstance(archs, str) else list(archs)
    out = []
    for item in items:
        item = str(item).strip().lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not item:
            continue
        if not item.isdigit():
            raise BuildError(f"invalid CUDA architecture {item!r}; use e.g. 80,86,89,90")
        out.append(item)
    if not out:
        raise BuildError("no CUDA architecture given")
    return tuple(dict.fromkeys(out))


def gencode_flags(archs: Sequence[str], ptx: bool = True) -> list[str]:
    """-gencode flags: SASS for every arch, plus PTX of the newest one (JIT on newer GPUs)."""
    flags = []
    archs = parse_archs(archs)
    for i, arch in enumerate(archs):
        code = f"sm_{arch}"
        if ptx and i == len(archs) - 1:
            code = f"[sm_{arch},compute_{arch}]"
        flags += ["-gencode", f"arch=compute_{arch},code={code}"]
    return flags


def find_trt_include(explicit: str | os.PathLike | None = None) -> Path | None:
    """TensorRT include dir: argument, $AUTR_TRT_INCLUDE, $TensorRT_ROOT/include, system locations."""
    candidates: list[Path] = []
    if explicit:
        path = Path(explicit).expanduser()
        if not (path / "NvInferRuntime.h").is_file():
            raise BuildError(f"{path} does not contain NvInferRuntime.h (expected the TensorRT include directory)")
        return path.resolve()
    if os.environ.get(TRT_INCLUDE_ENV):
        candidates.append(Path(os.environ[TRT_INCLUDE_ENV]).expanduser())
    for var in ("TensorRT_ROOT", "TENSORRT_ROOT", "TRT_ROOT"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]).expanduser() / "include")
    candidates += [
        Path("/usr/include/x86_64-linux-gnu"),
        Path("/usr/include/aarch64-linux-gnu"),
        Path("/usr/local/TensorRT/include"),
        Path("/opt/tensorrt/include"),
        Path("/usr/include"),
    ]
    for path in candidates:
        if (path / "NvInferRuntime.h").is_file():
            return path.resolve()
    return None


def trt_version(include_dir: str | os.PathLike) -> str:
    """TensorRT version 'MAJOR.MINOR.PATCH' declared by include_dir/NvInferVersion.h."""
    text = (Path(include_dir) / "NvInferVersion.h").read_text(errors="replace")
    defines = dict(re.findall(r"^\s*#\s*define\s+(\w+)\s+(\w+)", text, flags=re.M))

    def resolve(name: str) -> str:
        value, seen = defines.get(name, ""), set()
        while value in defines and value not in seen:
            seen.add(value)
            value = defines[value]
        return value

    parts = [resolve(f"NV_TENSORRT_{p}") for p in ("MAJOR", "MINOR", "PATCH")]
    if not all(p.isdigit() for p in parts):
        raise BuildError(f"cannot read the TensorRT version from {include_dir}/NvInferVersion.h")
    return ".".join(parts)


def _run(cmd: Sequence[str], verbose: bool) -> None:
    cmd = [str(c) for c in cmd]
    if verbose:
        print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if verbose and (proc.stdout or proc.stderr):
        print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise BuildError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def _atomic_move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


# --------------------------------------------------------------------------------------- builders


@dataclass
class BuildResult:
    out_dir: Path
    archs: tuple[str, ...]
    nvcc: str
    nvcc_version: str
    kernel_object: Path | None = None
    library: Path | None = None
    trt_include: Path | None = None
    trt_version: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"nvcc {self.nvcc_version or '?'} ({self.nvcc}), archs sm_{', sm_'.join(self.archs)}"]
        if self.kernel_object:
            found = ", ".join(sorted(fatbin_archs(self.kernel_object)))
            lines.append(f"kernel object : {self.kernel_object} [{found}]")
        if self.library:
            lines.append(f"TRT plugin    : {self.library} (TensorRT {self.trt_version} headers: {self.trt_include})")
            lines.append(f"sha256        : {library_hash(self.library)}")
        lines += self.notes
        return "\n".join(lines)


def _common_nvcc_flags() -> list[str]:
    threads = os.environ.get(NVCC_THREADS_ENV, "0").strip() or "0"
    if not threads.isdigit():
        raise BuildError(f"${NVCC_THREADS_ENV}={threads!r} must be a number of threads (0: one per core)")
    return ["-std=c++17", "-O3", "--threads", threads, "-Xcompiler", "-fPIC,-fvisibility=hidden", "-I", str(CSRC_DIR)]


def build_info_path(library: str | os.PathLike) -> Path:
    """The JSON written beside a built library: nvcc / CUDA version, archs, TensorRT headers."""
    return Path(str(library) + BUILD_INFO_SUFFIX)


def write_build_info(library: Path, nvcc: str, archs, trt_headers: str | None) -> Path:
    """Record how `library` was built (the loader compares its CUDA major with the driver's and TensorRT's)."""
    import json

    version = nvcc_version(nvcc)
    info = {"library": library.name, "sha256": library_hash(library), "nvcc": nvcc, "cuda_version": version,
            "cuda_major": int(version.split(".")[0]) if version else None, "cudart": "static",
            "archs": [f"sm_{a}" for a in parse_archs(archs)], "tensorrt_headers": trt_headers}
    path = build_info_path(library)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _kernel_command(nvcc: str, archs, output: Path) -> list:
    return [nvcc, *_common_nvcc_flags(), *gencode_flags(parse_archs(archs)), "-c", KERNEL_SOURCE, "-o", output]


def compile_kernel(
    out_dir: str | os.PathLike | None = None,
    archs: str | Iterable[str] | None = None,
    nvcc: str | None = None,
    verbose: bool = False,
) -> Path:
    """Compile ms_deform_attn.cu (one translation unit) for the given archs; returns the .o path."""
    nvcc = find_nvcc(nvcc)
    out = Path(out_dir) if out_dir is not None else default_build_dir()
    out.mkdir(parents=True, exist_ok=True)
    target = out / KERNEL_OBJECT_NAME
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_obj = Path(tmp) / KERNEL_OBJECT_NAME
        _run(_kernel_command(nvcc, archs, tmp_obj), verbose)
        _atomic_move(tmp_obj, target)
    return target


def build_trt_plugin(
    trt_include: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    archs: str | Iterable[str] | None = None,
    nvcc: str | None = None,
    kernel_object: str | os.PathLike | None = None,
    verbose: bool = False,
) -> Path:
    """Build libautr_trt_plugin.so (kernel + plugin); reuses `kernel_object` when given."""
    nvcc = find_nvcc(nvcc)
    include = find_trt_include(trt_include)
    out = Path(out_dir) if out_dir is not None else default_build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_dir = Path(tmp)
        if kernel_object is None:
            kernel_object = tmp_dir / KERNEL_OBJECT_NAME
            _run(_kernel_command(nvcc, archs, kernel_object), verbose)
        plugin_obj = tmp_dir / "ms_deform_attn_plugin.o"
        _run(
            [nvcc, *_common_nvcc_flags(), "-isystem", include, "-Xcompiler", "-Wall",
             "-c", PLUGIN_SOURCE, "-o", plugin_obj],
            verbose,
        )
        tmp_lib = tmp_dir / LIBRARY_NAME
        _run(
            [
                nvcc, "-shared", "-o", tmp_lib, plugin_obj, kernel_object,
                "-Xlinker", "--no-undefined", "-Xlinker", "--exclude-libs,ALL",
                "-ldl",  # the load-time registrar's dlopen / dlsym (part of libc since glibc 2.34)
            ],
            verbose,
        )
        target = out / LIBRARY_NAME
        _atomic_move(tmp_lib, target)
    write_build_info(target, nvcc, archs, trt_version(include))
    return target


def build_all(
    out_dir: str | os.PathLike | None = None,
    trt_include: str | os.PathLike | None = None,
    kernel_only: bool = False,
    archs: str | Iterable[str] | None = None,
    nvcc: str | None = None,
    verbose: bool = False,
) -> BuildResult:
    """Kernel compile check, and the TensorRT plugin library when TensorRT headers are available."""
    from .toolkit import build_time_notes

    nvcc = find_nvcc(nvcc)
    archs, notes = supported_archs(nvcc, archs, explicit=archs is not None)
    out = Path(out_dir) if out_dir is not None else default_build_dir()
    result = BuildResult(out_dir=out, archs=archs, nvcc=nvcc, nvcc_version=nvcc_version(nvcc), notes=notes)
    result.notes += build_time_notes(result.nvcc_version)
    result.kernel_object = compile_kernel(out, archs, nvcc, verbose)
    if kernel_only:
        return result
    include = find_trt_include(trt_include)
    if include is None:
        result.notes.append(
            "TensorRT headers not found: only the kernel was compiled. Pass --trt-include DIR "
            f"(or set ${TRT_INCLUDE_ENV}) to build {LIBRARY_NAME}."
        )
        return result
    result.trt_include = include
    result.trt_version = trt_version(include)
    result.library = build_trt_plugin(include, out, archs, nvcc, result.kernel_object, verbose)
    return result


# --------------------------------------------------------------------------------------- ONNX Runtime


def ort_headers_cache_dir() -> Path:
    """Where `make ort-headers` unpacks the ONNX Runtime C API headers (looked up by `find_ort_include`)."""
    return default_build_dir() / ORT_HEADERS_DIRNAME


def _has_ort_headers(path: Path) -> bool:
    return (path / "onnxruntime_c_api.h").is_file()


def find_ort_include(explicit: str | os.PathLike | None = None) -> Path | None:
    """ONNX Runtime C API include dir: argument, $AUTR_ORT_INCLUDE, `ort_headers_cache_dir()` (filled by
    `make ort-headers`), /usr/include/onnxruntime, /usr/local/include/onnxruntime. None when none has
    onnxruntime_c_api.h; an explicit directory without it is a BuildError."""
    if explicit:
        path = Path(explicit).expanduser()
        if not _has_ort_headers(path):
            raise BuildError(f"{path} does not contain onnxruntime_c_api.h (expected the ONNX Runtime include "
                             "directory, e.g. /usr/include/onnxruntime)")
        return path.resolve()
    candidates: list[Path] = []
    if os.environ.get(ORT_INCLUDE_ENV):
        candidates.append(Path(os.environ[ORT_INCLUDE_ENV]).expanduser())
    candidates += [ort_headers_cache_dir(), Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]
    for path in candidates:
        if _has_ort_headers(path):
            return path.resolve()
    return None


def ort_api_version(include_dir: str | os.PathLike) -> int:
    """ORT_API_VERSION declared by include_dir/onnxruntime_c_api.h (21 for ONNX Runtime 1.21)."""
    text = (Path(include_dir) / "onnxruntime_c_api.h").read_text(errors="replace")
    match = re.search(r"^\s*#\s*define\s+ORT_API_VERSION\s+(\d+)", text, flags=re.M)
    if not match:
        raise BuildError(f"cannot read ORT_API_VERSION from {include_dir}/onnxruntime_c_api.h")
    return int(match.group(1))


def find_cxx(cxx: str | os.PathLike | None = None) -> str:
    """Locate a C++17 compiler: argument, $CXX, g++, c++, clang++."""
    names = [str(cxx)] if cxx else ([os.environ["CXX"]] if os.environ.get("CXX") else []) + ["g++", "c++", "clang++"]
    for name in names:
        path = Path(name)
        if os.sep in name and path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(name)
        if found:
            return found
        if cxx:
            raise BuildError(f"C++ compiler not found at {cxx}")
    raise BuildError("no C++ compiler found (g++, c++, clang++): install one (apt-get install g++) or set CXX")


def cxx_version(cxx: str) -> str:
    """First line of `cxx --version` ('' when it cannot be read)."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.splitlines()[0].strip() if out else ""


def ort_library_path(cuda: bool = False) -> Path:
    """Path of the built ONNX Runtime custom-op library (`cuda=True`: the CUDA-enabled sibling);
    `$AUTR_ORT_OPS` overrides both. Raises PluginLibraryNotFound with a one-line reason."""
    if cuda:
        return _find_library(ORT_CUDA_LIBRARY_NAME, ORT_OPS_ENV,
                             "`python -m autr.plugins build --ort` builds it where nvcc is present")
    return _find_library(ORT_LIBRARY_NAME, ORT_OPS_ENV, ORT_BUILD_HINT)


def ort_library_hash(path: str | os.PathLike | None = None) -> str:
    """sha256 (hex) of the ONNX Runtime custom-op library (default: `ort_library_path()`)."""
    return library_hash(path if path is not None else ort_library_path())


def _ort_cxx_flags() -> list[str]:
    # -ffp-contract=fast: multiply-adds become FMA in the AVX2 functions (ISO C++ mode would forbid it);
    # -Wno-psabi: the 32-byte vector types never cross a function boundary (all inlined), the ABI note is moot.
    return ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
            "-ffp-contract=fast", "-Wall", "-Wextra", "-Wno-psabi", "-I", str(CSRC_DIR)]


@dataclass
class OrtBuildResult:
    out_dir: Path
    cxx: str
    ort_include: Path
    api_version: int
    library: Path | None = None
    cuda_library: Path | None = None
    nvcc: str | None = None
    archs: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"C++ compiler  : {self.cxx} ({cxx_version(self.cxx) or '?'})",
                 f"ORT headers   : {self.ort_include} (C API {self.api_version}: runs on onnxruntime >= "
                 f"1.{self.api_version})"]
        if self.library:
            lines.append(f"ORT library   : {self.library}")
            lines.append(f"sha256        : {library_hash(self.library)}")
        if self.cuda_library:
            found = ", ".join(sorted(fatbin_archs(self.cuda_library)))
            lines.append(f"ORT CUDA lib  : {self.cuda_library} [{found}]")
            lines.append(f"sha256        : {library_hash(self.cuda_library)}")
        lines += self.notes
        return "\n".join(lines)


def build_ort_ops(
    ort_include: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    cxx: str | None = None,
    cuda: bool | None = None,
    archs: str | Iterable[str] | None = None,
    nvcc: str | None = None,
    verbose: bool = False,
) -> OrtBuildResult:
    """Build libautr_ort_ops.so (CPU kernel, C++ compiler only) and, with `cuda` (None: when nvcc is found),
    libautr_ort_ops_cuda.so (CPU + CUDA kernels, nvcc). Raises BuildError with what to do."""
    include = find_ort_include(ort_include)
    if include is None:
        raise BuildError(
            "ONNX Runtime C API headers not found (onnxruntime_c_api.h): run `make ort-headers` (unpacks Debian's "
            f"libonnxruntime-dev into {ort_headers_cache_dir()}), or pass --ort-include DIR / set ${ORT_INCLUDE_ENV}")
    compiler = find_cxx(cxx)
    out = Path(out_dir) if out_dir is not None else default_build_dir()
    out.mkdir(parents=True, exist_ok=True)
    result = OrtBuildResult(out_dir=out, cxx=compiler, ort_include=include, api_version=ort_api_version(include))
    nvcc_path = None
    if cuda or cuda is None:
        try:
            nvcc_path = find_nvcc(nvcc)
        except BuildError as exc:
            if cuda:
                raise
            result.notes.append(f"nvcc not found: {ORT_CUDA_LIBRARY_NAME} (CUDA execution provider) not built ({exc})")
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_dir = Path(tmp)
        link_flags = ["-Wl,--no-undefined", f"-Wl,--version-script={ORT_EXPORTS_MAP}"]
        cpu_obj = tmp_dir / "ms_deform_attn_cpu.o"
        _run([compiler, *_ort_cxx_flags(), "-c", CPU_KERNEL_SOURCE, "-o", cpu_obj], verbose)
        ops_obj = tmp_dir / "autr_ort_ops.o"
        _run([compiler, *_ort_cxx_flags(), "-isystem", include, "-c", ORT_SOURCE, "-o", ops_obj], verbose)
        tmp_lib = tmp_dir / ORT_LIBRARY_NAME
        _run([compiler, "-shared", "-o", tmp_lib, ops_obj, cpu_obj, *link_flags], verbose)
        result.library = out / ORT_LIBRARY_NAME
        _atomic_move(tmp_lib, result.library)
        if nvcc_path:
            result.nvcc = nvcc_path
            result.archs, arch_notes = supported_archs(nvcc_path, archs, explicit=archs is not None)
            result.notes += arch_notes
            kernel_obj = tmp_dir / KERNEL_OBJECT_NAME
            _run(_kernel_command(nvcc_path, result.archs, kernel_obj), verbose)
            cuda_ops_obj = tmp_dir / "autr_ort_ops_cuda.o"
            _run([nvcc_path, *_common_nvcc_flags(), "-DAUTR_ORT_WITH_CUDA", "-isystem", include,
                  "-Xcompiler", "-Wall", "-c", ORT_SOURCE, "-o", cuda_ops_obj], verbose)
            tmp_cuda_lib = tmp_dir / ORT_CUDA_LIBRARY_NAME
            _run([nvcc_path, "-shared", "-o", tmp_cuda_lib, cuda_ops_obj, cpu_obj, kernel_obj,
                  "-Xlinker", "--no-undefined", "-Xlinker", f"--version-script={ORT_EXPORTS_MAP}",
                  "-Xlinker", "--exclude-libs,ALL"], verbose)
            result.cuda_library = out / ORT_CUDA_LIBRARY_NAME
            _atomic_move(tmp_cuda_lib, result.cuda_library)
    return result


# --------------------------------------------------------------------------------------- inspection


_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_KIND = {1: "compute", 2: "sm"}


def _elf_section(data: bytes, name: str) -> bytes | None:
    """Contents of a named section of a little-endian ELF64 file (None when absent)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if e_shoff == 0 or e_shnum == 0:
        return None

    def header(i: int) -> tuple[int, int, int, int]:
        base = e_shoff + i * e_shentsize
        sh_name, sh_type = struct.unpack_from("<II", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 0x18)
        return sh_name, sh_type, sh_offset, sh_size

    _, _, str_off, str_size = header(e_shstrndx)
    strtab = data[str_off : str_off + str_size]
    for i in range(e_shnum):
        sh_name, sh_type, off, size = header(i)
        end = strtab.find(b"\0", sh_name)
        if strtab[sh_name:end].decode(errors="replace") == name and sh_type != 8:  # 8 = SHT_NOBITS
            return data[off : off + size]
    return None


def fatbin_archs(path: str | os.PathLike) -> set[str]:
    """Device code embedded in an object / shared library / .fatbin: {'sm_80', ..., 'compute_90'}.

    Reads the `.nv_fatbin` ELF section (or a raw fatbin) and walks the fatbin entry headers
    (kind 2 = SASS cubin, 1 = PTX; the target architecture sits at byte 28 of each entry header),
    so no `cuobjdump` is needed.
    """
    data = Path(path).read_bytes()
    blob = _elf_section(data, ".nv_fatbin")
    if blob is None:
        blob = data
    found: set[str] = set()
    pos = 0
    while pos + 16 <= len(blob):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", blob, pos)
        if magic != _FATBIN_MAGIC:
            # fatbins are 8-byte aligned inside the section; skip padding
            pos += 8
            continue
        entry = pos + header_size
        end = entry + fat_size
        while entry + 32 <= end:
            kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", blob, entry)
            (arch,) = struct.unpack_from("<I", blob, entry + 28)
            if kind in _FATBIN_KIND and arch:
                found.add(f"{_FATBIN_KIND[kind]}_{arch}")
            if entry_header == 0:
                break
            entry += entry_header + payload
        pos = end
    return found
