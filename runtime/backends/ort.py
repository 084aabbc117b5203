"""ONNX Runtime backend: an export directory's graphs and their sidecar ``model.json``.

Which graph runs (``graph``):

* ``fused`` -- the plugin graph (``model.plugin.onnx``): every MSDA call one ``AutrMSDeformAttn`` node, run by
  the toolkit's ONNX Runtime custom-op library (``python -m autr.plugins build --ort``; registered with
  :func:`autr.plugins.register_msda`);
* ``portable`` -- the portable graph (``model.portable.onnx``): MSDA decomposed into GridSample and standard ops;
* ``auto`` (default) -- fused where the library is built and loads, else portable with one notice
  (:attr:`OrtBackend.notices`) saying why and how to build it.

``precision`` picks the float32 graphs, or the ``fp16`` / ``int8`` ones (``autr export onnx --fp16 / --int8``).
A graph file named directly runs as it is (a plugin graph needs the library). Runs on the CPU execution
provider, or CUDA's (``provider="cuda"``, needs ``onnxruntime-gpu``). Input size and T range come from the
sidecar and are checked against the graph's own input shapes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError, BackendUnavailable, one_line
from ..threads import available_cores
from .base import Backend, check_inputs
from .sidecar import parse_spec, read_sidecar

__all__ = ["OrtBackend", "resolve_onnx", "GRAPHS", "PRECISIONS"]

PORTABLE_NAME = "model.portable.onnx"
GRAPHS = ("auto", "fused", "portable")
PRECISIONS = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}  # precision -> suffix of the sidecar's graph kinds
_KIND_OF = {"fused": "plugin", "portable": "portable"}
# ONNX Runtime fusions left off on the CPU provider, each for a measured reason:
# SkipLayerNormFusion -- ORT's CPU SkipLayerNormalization kernel took 5.6x the time of the Add +
# LayerNormalization it replaces ([1, 336, 128]: 225 vs 40 us, one thread, onnxruntime 1.32; the default
# model has 23 of them, ~9 % of a frame)
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion",)
# and on the int8 graphs also MatMulAddFusion: it turns DQ -> MatMul -> Add into a float Gemm fed by
# DequantizeLinear before the QDQ fusions run, so the weights were dequantized on every call instead of
# MatMulIntegerToFloat running in int8 (default model, T = 1, two threads, calls interleaved: 25.4 -> 21.8 ms)
CPU_DISABLED_FUSIONS_INT8 = ("MatMulAddFusion",)


def resolve_onnx(path) -> Path:
    """The portable graph of ``path`` (a file, or an export directory holding ``model.portable.onnx``)."""
    p = Path(path)
    if p.is_dir():
        if not (p / PORTABLE_NAME).is_file():
            found = ", ".join(sorted(x.name for x in p.glob("*.onnx"))) or "no ONNX file"
            raise BackendError(f"{p} holds no {PORTABLE_NAME} (found: {found}); export with `autr export onnx`, or "
                               "name the graph file itself")
        return p / PORTABLE_NAME
    if not p.is_file():
        raise BackendError(f"ONNX model not found: {p}")
    return p


def _graphs(directory: Path, sidecar: dict) -> dict:
    """The sidecar's graph records; for a sidecar without them, the exporter's file names found in the folder
    (model.plugin.onnx, model.portable.fp16.onnx, ...)."""
    graphs = sidecar.get("graphs")
    if graphs:
        return graphs
    kinds = [g + suffix for g in _KIND_OF.values() for suffix in PRECISIONS.values()]
    return {kind: {"file": _file_name(kind)} for kind in kinds if (directory / _file_name(kind)).is_file()}


def _file_name(kind: str) -> str:
    """The exporter's file name of a graph kind: portable_int8 -> model.portable.int8.onnx."""
    return f"model.{kind.replace('_', '.')}.onnx"


def _graph_kind(graphs: dict, path: Path) -> str | None:
    """The sidecar's name for a graph file ("plugin", "portable_int8", ...), None when it is not listed."""
    return next((k for k, rec in graphs.items() if isinstance(rec, dict) and rec.get("file") == path.name), None)


def choose_graph(path, graphs: dict, graph: str = "auto", precision: str = "fp32", register=None):
    """(graph file, sidecar kind, notice or None) for ``path`` (an export directory or a graph file).

    ``register()`` registers the MSDA custom op and returns None, or a one-line reason it cannot."""
    if graph not in GRAPHS:
        raise BackendError(f"unknown graph {graph!r}; choose {', '.join(GRAPHS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    p = Path(path)
    if not p.is_dir():
        kind = _graph_kind(graphs, resolve_onnx(p))
        if kind is not None and kind.startswith("plugin"):
            reason = register()
            if reason:
                raise BackendError(f"{p.name} is the plugin graph (AutrMSDeformAttn nodes) and the custom-op library "
                                   f"is not usable: {reason}; or run the portable graph ({PORTABLE_NAME})")
        return p, kind, None
    suffix = PRECISIONS[precision]
    flag = {"fp16": " --fp16", "int8": " --int8"}.get(precision, "")
    reason = None
    if graph in ("auto", "fused"):
        kind = "plugin" + suffix
        reason = f"the export has no {kind} graph" if kind not in graphs else register()
        if reason is None:
            return p / graphs[kind]["file"], kind, None
        if graph == "fused":
            raise BackendError(f"cannot run the fused graph: {reason}")
    kind = "portable" + suffix
    if kind not in graphs:
        found = ", ".join(sorted(x.name for x in p.glob("*.onnx"))) or "no ONNX file"
        raise BackendError(f"{p} holds no {_file_name(kind)} (found: {found}); export it with "
                           f"`autr export onnx{flag}`, or name the graph file itself")
    notice = None if reason is None else f"fused MSDA unavailable ({reason}); running the portable graph"
    return p / graphs[kind]["file"], kind, notice


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu "
                                 "(CUDA)") from None
    return ort


class OrtBackend(Backend):
    """Run an ONNX graph with ONNX Runtime.

    Args:
        path: the ``.onnx`` file, or the export directory.
        provider: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        graph: ``"auto"``, ``"fused"`` or ``"portable"`` (see the module docstring); for an export directory.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``; for an export directory.
        threads: intra-op threads, the calling thread included (None: one per available core).
        spinning: let idle intra-op workers busy-wait between operators (None: off). Off is what a live
            pipeline wants: a spinning worker holds a core that preprocessing and rendering need
            (runtime/threads.py, "thread plan").
        frames: specialise the session to clips of exactly this T (a live stream's window): ONNX Runtime's
            free-dimension override makes the graph's T axis static, so the session folds the shape arithmetic
            that a dynamic T keeps at run time (for the default model, CPU time per single-threaded call
            26.5 -> 25.3 ms at T = 1 and 125 -> 117 ms at T = 5, measured side by side on the 2-core CI machine,
            2026-12-07). None: any T in
            the sidecar's range.
    """

    name = "ort"

    def __init__(self, path, provider: str = "cpu", threads: int | None = None, spinning: bool | None = None,
                 graph: str = "auto", precision: str = "fp32", frames: int | None = None):
        ort = _import_ort()
        p = Path(path)
        side_path, data = read_sidecar(p / PORTABLE_NAME if p.is_dir() else resolve_onnx(p))
        spec = parse_spec(data, where=f"sidecar {side_path}")
        super().__init__(spec.input_size, spec.t_min, spec.t_max)
        self.sidecar = side_path
        available = ort.get_available_providers()
        provider = (provider or "cpu").lower()
        if provider == "auto":
            provider = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if provider == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable("ONNX Runtime here has no CUDA execution provider (available: "
                                         f"{', '.join(available)}); pip install onnxruntime-gpu, or use --provider cpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif provider == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendError(f"unknown provider {provider!r}; use cpu, cuda or auto")
        intra = available_cores() if threads is None else int(threads)
        if intra < 1:
            raise BackendError(f"threads must be >= 1; got {threads}")
        spin = bool(spinning)
        if frames is not None and not (spec.t_min <= int(frames) <= (spec.t_max or int(frames))):
            raise BackendError(f"the model takes {spec.t_min}..{spec.t_max} frames per call (its sidecar says so); "
                               f"--window {frames} is outside that range")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = intra
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.threads = {"intra_op": intra, "inter_op": 1, "spinning": spin}
        self.msda_library = None
        self.frames_static = None
        if frames is not None:  # a dynamic T made static for this session (a name the graph lacks is ignored)
            opts.add_free_dimension_override_by_name(str((data.get("frames") or {}).get("axis_name") or "T"),
                                                     int(frames))
            self.frames_static = int(frames)

        def register():
            from autr.plugins import register_msda
            from autr.plugins.ort_ops import select_ort_library

            reason = register_msda(opts, cuda=provider == "cuda")
            if reason is None:
                self.msda_library = str(select_ort_library(cuda=provider == "cuda"))
            return reason

        graphs = _graphs(p if p.is_dir() else p.parent, data)
        onnx_path, self.graph_kind, notice = choose_graph(p, graphs, graph, precision, register)
        self.notices = [notice] if notice else []
        try:
            self._open(ort, onnx_path, opts, providers, provider)
        except BackendError as exc:
            if not (p.is_dir() and graph == "auto" and self.msda_library):
                raise
            # the fused graph did not load (a float16 plugin graph on a library without float16, say): portable
            self.notices = [f"the fused graph did not load ({str(exc)[:200]}); running the portable graph"]
            self.msda_library = None
            onnx_path, self.graph_kind, _ = choose_graph(p, graphs, "portable", precision)
            self._open(ort, onnx_path, opts, providers, provider)

    def _open(self, ort, onnx_path, opts, providers, provider) -> None:
        disabled = []
        if provider == "cpu":
            disabled = list(CPU_DISABLED_FUSIONS)
            disabled += list(CPU_DISABLED_FUSIONS_INT8) if (self.graph_kind or "").endswith("int8") else []
        self.disabled_optimizers = disabled
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers,
                                                disabled_optimizers=disabled)
        except Exception as exc:
            msg = one_line(exc)
            if "AutrMSDeformAttn" in msg and not self.msda_library:
                raise BackendError(f"{onnx_path} is the TensorRT plugin graph (custom AutrMSDeformAttn nodes); "
                                   f"give ONNX Runtime the portable graph ({PORTABLE_NAME})") from None
            raise BackendError(f"ONNX Runtime cannot load {onnx_path}: {msg}") from None
        self._check(onnx_path, provider)

    def _check(self, onnx_path, provider) -> None:
        """The session's inputs and outputs against the model contract and the sidecar."""
        self.artifact = onnx_path
        self.device = f"{provider} ({self.session.get_providers()[0]})"
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"frames", "log_mel"}:
            raise BackendError(f"{onnx_path} has inputs {sorted(inputs)}; the model contract is frames, log_mel")
        if not {"masks", "scores"} <= set(outputs):
            raise BackendError(f"{onnx_path} has outputs {outputs}; the model contract is masks, scores")
        shape = inputs["frames"].shape
        h, w = self.input_size
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], (3, h, w))):
            raise BackendError(f"{onnx_path}: graph input frames is {shape} but the sidecar says input size {h}x{w}")
        if isinstance(shape[0], int) and not (self.t_min <= shape[0] and (self.t_max is None or shape[0] <= self.t_max)):
            raise BackendError(f"{onnx_path}: graph input frames has fixed T = {shape[0]} outside the sidecar's "
                               f"range {self.t_min}..{self.t_max}")
        if isinstance(shape[0], int):
            self.t_min = self.t_max = shape[0]
        if self.frames_static is not None:
            self.t_min = self.t_max = self.frames_static
        self.provider = provider

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        masks, scores = self.session.run(["masks", "scores"], {"frames": np.ascontiguousarray(frames, np.float32),
                                                               "log_mel": np.ascontiguousarray(log_mel, np.float32)})
        return masks.astype(np.float32, copy=False), scores.astype(np.float32, copy=False).reshape(-1)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"sidecar": str(self.sidecar), "providers": self.session.get_providers(), "threads": self.threads,
                  "disabled_optimizers": self.disabled_optimizers,
                  "graph": self.graph_kind, "msda": "fused custom op" if self.msda_library else "standard ops",
                  "msda_library": self.msda_library, "notices": self.notices,
                  "frames": f"static T = {self.t_min}" if self.t_min == self.t_max else f"T {self.t_min}..{self.t_max}"})
        return d

    def versions(self) -> dict:
        ort = _import_ort()
        return {"onnxruntime": ort.__version__}
