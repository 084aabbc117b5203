"""CUDA toolkit / driver / TensorRT / PyTorch version checks: one clear line each (standard library only).

The plugin libraries carry the CUDA runtime of the nvcc that built them, linked statically, so:
- the NVIDIA driver must support that CUDA major (CUDA 12: r525+, CUDA 13: r580+);
- TensorRT is built for one CUDA major (its wheels say which: ``tensorrt-cu12`` / ``tensorrt-cu13``), and the
  plugin should come from an nvcc of the same major;
- torch's extension builder refuses an nvcc whose major differs from ``torch.version.cuda``'s.
Each function returns None (fine, or cannot tell) or one line naming the versions and the fix.
"""
from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

# CUDA major -> the oldest driver branch that runs it (NVIDIA's CUDA toolkit release notes, table 3)
MIN_DRIVER = {11: "r450", 12: "r525", 13: "r580"}


def _major(version) -> int | None:
    match = re.match(r"\s*(\d+)", str(version or ""))
    return int(match.group(1)) if match else None


def driver_cuda_version(libcuda: str = "libcuda.so.1") -> tuple[int, int] | None:
    """(major, minor) of the newest CUDA the installed driver supports (cuDriverGetVersion); None without one."""
    try:
        lib = ctypes.CDLL(libcuda)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def tensorrt_cuda_major() -> int | None:
    """The CUDA major the installed TensorRT wheels are built for (``tensorrt-cu12`` -> 12), or None."""
    from importlib import metadata

    majors = set()
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        match = re.fullmatch(r"tensorrt-cu(\d+)(-.*)?", name)
        if match:
            majors.add(int(match.group(1)))
    return majors.pop() if len(majors) == 1 else None


def driver_problem(cuda_version: str, what: str, driver=None) -> str | None:
    """`what` (carrying the CUDA `cuda_version` runtime) cannot run on this driver: one line, else None."""
    need = _major(cuda_version)
    driver = driver if driver is not None else driver_cuda_version()
    if need is None or driver is None or driver[0] >= need:
        return None
    return (f"{what} carries the CUDA {cuda_version} runtime (static), which needs an NVIDIA driver "
            f"{MIN_DRIVER.get(need, 'for CUDA ' + str(need))}+, but this driver supports CUDA {driver[0]}.{driver[1]} "
            f"only: update the driver, or rebuild with a CUDA {driver[0]} nvcc (--nvcc)")


def tensorrt_problem(cuda_version: str, what: str, trt_major=None) -> str | None:
    """`what` built by a CUDA `cuda_version` nvcc beside a TensorRT built for another CUDA major: one line."""
    have = _major(cuda_version)
    trt_major = trt_major if trt_major is not None else tensorrt_cuda_major()
    if have is None or trt_major is None or trt_major == have:
        return None
    return (f"{what} was built with CUDA {cuda_version} but the installed TensorRT is built for CUDA {trt_major} "
            f"(tensorrt-cu{trt_major}): rebuild the plugin with a CUDA {trt_major} nvcc "
            f"(`python -m autr.plugins build --nvcc /usr/local/cuda-{trt_major}/bin/nvcc ...`) or install "
            f"tensorrt-cu{have}")


def torch_problem(torch_cuda, nvcc_version: str) -> str | None:
    """torch's extension builder refuses an nvcc of another CUDA major than torch's: one line, else None."""
    want, have = _major(torch_cuda), _major(nvcc_version)
    if want is None or have is None or want == have:
        return None
    return (f"nvcc is CUDA {nvcc_version} but this PyTorch is built for CUDA {torch_cuda}: torch.utils.cpp_extension "
            f"refuses to mix CUDA majors; point CUDA_HOME at a CUDA {want} toolkit or install a PyTorch built for "
            f"CUDA {have} (e.g. the cu{have}x wheels)")


def build_time_notes(cuda_version: str) -> list[str]:
    """Warnings printed by `python -m autr.plugins build` (the build itself still succeeds)."""
    notes = []
    for problem in (driver_problem(cuda_version, "the plugin library"),
                    tensorrt_problem(cuda_version, "the plugin library")):
        if problem:
            notes.append(f"warning: {problem}")
    return notes


def read_build_info(library) -> dict | None:
    """The JSON the builder wrote beside `library` (None for a library built otherwise, e.g. with CMake)."""
    path = Path(str(library) + ".json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def plugin_problem(library, driver=None, trt_major=None) -> str | None:
    """Why the TensorRT plugin `library` cannot run with this driver / TensorRT (one line), or None."""
    info = read_build_info(library)
    if not info or not info.get("cuda_version"):
        return None
    name = Path(library).name
    return (driver_problem(info["cuda_version"], name, driver)
            or tensorrt_problem(info["cuda_version"], name, trt_major))
