"""TensorRT backend: a serialized engine plus the MSDA plugin library, run with pycuda.

Written against the TensorRT 10/11 Python API (named I/O tensors: ``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). One CUDA stream; inputs are copied from
page-locked host buffers into device buffers sized for the engine profile's largest T, asynchronously on
that stream, then the outputs come back the same way and the stream is synchronised once per call.

``tensorrt`` and ``pycuda`` are imported only when this backend is opened; where they are missing the error
says how to install them. Before the engine is deserialised, its sidecar is checked against this machine
(TensorRT version, GPU name and compute capability, plugin library hash): a plan built elsewhere is
refused with the reason instead of failing obscurely inside TensorRT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError, BackendUnavailable, SidecarError, one_line
from .base import Backend, check_inputs
from .sidecar import parse_spec, read_sidecar

__all__ = ["TrtBackend", "check_engine_sidecar", "cuda_device", "import_tensorrt", "INSTALL_HINT"]

INSTALL_HINT = ("pip install 'tensorrt>=10' 'pycuda>=2024.1' (needs an NVIDIA GPU, its driver and the CUDA toolkit for "
                "pycuda's build), then build the plugin with `python -m autr.plugins build --trt-include DIR`")


def import_tensorrt(user: str = "the trt backend", error=BackendUnavailable):
    """(tensorrt 10+, pycuda.driver), or ``error`` -- one line naming what is missing and how to install it.
    ``user`` names who needs them in that line (``autr export trt`` uses this too)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: a TensorRT / CUDA shared library that will not load
        raise error(f"{user} needs TensorRT, which is not installed here ({one_line(exc)}); {INSTALL_HINT}") from None
    try:
        major = int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        major = 0
    if major < 10:
        raise error(f"TensorRT {getattr(trt, '__version__', '?')} is too old: {user} uses the TensorRT 10+ API; "
                    f"{INSTALL_HINT}")
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        raise error(f"{user} needs pycuda, which is not installed here ({one_line(exc)}); {INSTALL_HINT}") from None
    return trt, cuda


def cuda_device(cuda, index: int = 0):
    """(pycuda Device, its name, its compute capability (major, minor)); the exporter records the same name and
    capability that the backend later compares. Raises whatever pycuda raises where there is no such GPU."""
    cuda.init()
    dev = cuda.Device(int(index))
    major, minor = dev.compute_capability()
    return dev, str(dev.name()), (int(major), int(minor))


def cc_text(cc) -> str | None:
    """A compute capability as \"9.0\" from (9, 0), \"90\", \"sm_90\" or \"9.0\"."""
    if cc is None:
        return None
    if isinstance(cc, (list, tuple)):
        return ".".join(str(int(x)) for x in cc)
    return str(cc).replace("sm_", "").replace("_", ".") if "." in str(cc) or "_" in str(cc) else \
        (f"{str(cc)[:-1]}.{str(cc)[-1]}" if str(cc).isdigit() and len(str(cc)) >= 2 else str(cc))


def check_engine_sidecar(data: dict, trt_version: str, gpu_name: str, compute_capability, plugin_hash: str | None,
                         where: str = "the engine sidecar") -> None:
    """Refuse an engine built for another TensorRT, GPU or plugin build.

    An engine plan is specific to the TensorRT version and GPU architecture it was built with, and to the
    plugin library it was built against; `autr export trt` records all four in the engine's sidecar. A
    mismatch is one SidecarError listing every difference (``plugin_hash=None``: not checked).
    """
    facts = (("tensorrt_version", "TensorRT", trt_version, str),
             ("compute_capability", "compute capability", compute_capability, cc_text),
             ("gpu_name", "GPU", gpu_name, lambda v: repr(str(v))),
             ("plugin_library_hash", "plugin library", plugin_hash, lambda v: f"{str(v)[:12]}..."))
    missing = [key for key, *_ in facts if data.get(key) in (None, "")]
    if missing:
        raise SidecarError(f"{where} does not record {', '.join(missing)}; rebuild the engine with `autr export trt`")
    norm = {"compute_capability": cc_text}
    bad = [f"{label} {show(data[key])} (here {show(ours)})" for key, label, ours, show in facts
           if ours is not None and norm.get(key, str)(data[key]) != norm.get(key, str)(ours)]
    if bad:
        raise SidecarError(f"{where}: this engine was built for {'; '.join(bad)} -- rebuild it on this machine "
                           "with `autr export trt`")


class TrtBackend(Backend):
    """Run a TensorRT engine.

    Args:
        engine: the ``.engine`` / ``.plan`` file (its sidecar JSON next to it).
        plugin_library: the MSDA plugin ``.so`` (default: :func:`autr.plugins.library_path`).
        device: CUDA device index.
    """

    name = "trt"

    def __init__(self, engine, plugin_library=None, device: int = 0):
        engine = Path(engine)
        if not engine.is_file():
            raise BackendError(f"TensorRT engine not found: {engine}")
        side, data = read_sidecar(engine)
        spec = parse_spec(data, f"sidecar {side}")
        trt, cuda = import_tensorrt()
        import autr.plugins as plugins

        if plugin_library is None:
            try:
                plugin_library = plugins.library_path()
            except Exception as exc:
                raise BackendUnavailable(f"the MSDA TensorRT plugin is not built ({one_line(exc)}); build it with "
                                         "`python -m autr.plugins build --trt-include DIR`") from None
        plugin_library = Path(plugin_library)
        try:
            dev, gpu_name, cc = cuda_device(cuda, device)
            self._ctx = dev.retain_primary_context()  # the context TensorRT's CUDA runtime uses too
        except Exception as exc:  # pycuda raises its own LogicError / RuntimeError types
            raise BackendUnavailable(f"no usable CUDA device {device}: {one_line(exc)}") from None
        check_engine_sidecar(data, trt.__version__, gpu_name, cc, plugins.library_hash(plugin_library),
                             where=f"sidecar {side}")
        super().__init__(spec.input_size, spec.t_min, spec.t_max, device=f"cuda:{device} ({gpu_name}, sm_{cc[0]}{cc[1]})")
        self.artifact = engine
        self.sidecar = side
        self.plugin_library = plugin_library
        self._trt, self._cuda = trt, cuda
        self._ctx.push()
        try:
            self._load(engine)
        finally:
            self._ctx.pop()

    def _load(self, engine: Path) -> None:
        trt, cuda = self._trt, self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        from autr.plugins import PluginError
        from autr.plugins.trt_loader import load_plugin_library

        try:  # once per process: TensorRT refuses to register the library a second time
            self._plugin_handle = load_plugin_library(trt, self.plugin_library)
        except PluginError as exc:
            raise BackendError(str(exc)) from None
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise {engine} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if set(self.inputs) != {"frames", "log_mel"} or not {"masks", "scores"} <= set(self.outputs):
            raise BackendError(f"{engine} has inputs {self.inputs} and outputs {self.outputs}; the model contract is "
                               "frames, log_mel -> masks, scores")
        # profile 0's largest shapes size the buffers; the sidecar's range must fit inside the profile
        lo, _, hi = self.engine.get_tensor_profile_shape("frames", 0)
        if self.t_max is None or self.t_max > hi[0]:
            self.t_max = int(hi[0])
        self.t_min = max(self.t_min, int(lo[0]))
        h, w = self.input_size
        if (int(hi[2]), int(hi[3])) != (h, w):
            raise BackendError(f"{engine}: profile input size {int(hi[2])}x{int(hi[3])} differs from the sidecar's {h}x{w}")
        tm = self.t_max
        max_shapes = {"frames": (tm, 3, h, w), "log_mel": (tm, 1, 96, 64), "masks": (tm, h, w), "scores": (tm,)}
        self.stream = cuda.Stream()
        self.host, self.dev, self.dtypes = {}, {}, {}
        for n in self.inputs + self.outputs:
            dt = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            shape = max_shapes.get(n)
            if shape is None:  # an extra output: size it from the context once inputs are set
                self.context.set_input_shape("frames", max_shapes["frames"])
                self.context.set_input_shape("log_mel", max_shapes["log_mel"])
                shape = tuple(int(x) for x in self.context.get_tensor_shape(n))
            self.host[n] = cuda.pagelocked_empty(int(np.prod(shape)), dt)
            self.dev[n] = cuda.mem_alloc(max(self.host[n].nbytes, 1))
            self.dtypes[n] = dt
            self.context.set_tensor_address(n, int(self.dev[n]))

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        cuda = self._cuda
        t = frames.shape[0]
        self._ctx.push()
        try:
            feeds = {"frames": frames, "log_mel": log_mel}
            for n in self.inputs:
                x = feeds[n]
                view = self.host[n][:x.size].reshape(x.shape)
                np.copyto(view, x, casting="same_kind")
                if not self.context.set_input_shape(n, tuple(x.shape)):
                    raise BackendError(f"TensorRT refused input shape {list(x.shape)} for {n}")
                cuda.memcpy_htod_async(self.dev[n], view, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed")
            shapes = {n: tuple(int(s) for s in self.context.get_tensor_shape(n)) for n in ("masks", "scores")}
            views = {}
            for n in ("masks", "scores"):
                size = int(np.prod(shapes[n]))
                views[n] = self.host[n][:size]
                cuda.memcpy_dtoh_async(views[n], self.dev[n], self.stream)
            self.stream.synchronize()
        finally:
            self._ctx.pop()
        masks = views["masks"].reshape(shapes["masks"]).astype(np.float32, copy=True)
        scores = views["scores"].reshape(t).astype(np.float32, copy=True)
        return masks, scores

    def describe(self) -> dict:
        d = super().describe()
        d.update({"sidecar": str(self.sidecar), "plugin_library": str(self.plugin_library)})
        return d

    def versions(self) -> dict:
        return {"tensorrt": self._trt.__version__, "pycuda": getattr(self._cuda, "get_version", lambda: None)() and
                ".".join(map(str, self._cuda.get_version()))}

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        ctx.push()
        try:
            for buf in getattr(self, "dev", {}).values():
                buf.free()
            self.dev = {}
            self.context = None
            self.engine = None
        finally:
            ctx.pop()
        ctx.detach()
        self._ctx = None
