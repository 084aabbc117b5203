"""OpenVINO on the exported portable graph: the CPU runtime a deployer would pick instead of ONNX Runtime.

:class:`OpenVinoRunner` compiles ``DIR/model.portable.onnx`` (the sidecar ``DIR/model.json`` gives the input
size and T range, read with the runtime's own sidecar reader) with ``openvino.Core().compile_model(model,
"CPU", config)``, config ``INFERENCE_NUM_THREADS`` = threads, ``PERFORMANCE_HINT`` = ``LATENCY`` (one stream),
``INFERENCE_PRECISION_HINT`` = ``f32`` (no silent bf16 on CPUs that have it), and runs
``frames [T,3,H,W]`` + ``log_mel [T,1,96,64]`` -> ``(masks [T,H,W], scores [T])`` as numpy, with the
interface of :class:`autr.runtime.backends.base.Backend` (``infer``, ``describe``, ``versions``, ``close``), so a
benchmark times it exactly as it times the ONNX Runtime backend.

OpenVINO is optional (``pip install autr[openvino]``). :func:`why_unavailable` says in one line why it cannot
run here (None when it can); constructing the runner then raises
:class:`autr.runtime.errors.BackendUnavailable` with that line.

``python -m autr.benchmarks.openvino_runner DIR`` checks OpenVINO against ONNX Runtime on the same graph
(max |mask logit difference|, mask IoU, max |score difference| on a SynthAVS clip) and times both side by
side (median of ``--iters`` calls after warm-up, for each ``--threads`` count).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from autr.runtime.backends.base import Backend, check_inputs
from autr.runtime.errors import BackendError, BackendUnavailable, one_line

__all__ = ["OpenVinoRunner", "available", "why_unavailable", "why_no_precision", "synth_inputs", "parity", "compare",
           "main"]

INSTALL_HINT = "pip install 'autr[openvino]' (or: pip install openvino)"
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


def _import_openvino():
    """The ``openvino`` module, or BackendUnavailable with one line saying why not."""
    try:
        import openvino
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing and missing.split(".")[0] != "openvino":
            raise BackendUnavailable(f"openvino is installed but cannot load ({missing} is missing: "
                                     f"{one_line(exc)}); reinstall it: {INSTALL_HINT}") from None
        raise BackendUnavailable(f"openvino is not installed: {INSTALL_HINT}") from None
    except Exception as exc:  # a broken install (missing shared library, ABI mismatch) raises other errors
        raise BackendUnavailable(f"openvino is installed but cannot load: {one_line(exc)}") from None
    if not hasattr(openvino, "Core"):
        raise BackendUnavailable(f"the openvino module here has no Core (version "
                                 f"{getattr(openvino, '__version__', '?')}); {INSTALL_HINT}")
    return openvino


def why_unavailable() -> Optional[str]:
    """None when OpenVINO can run here, else the reason in one line (with the install hint)."""
    try:
        ov = _import_openvino()
        devices = ov.Core().available_devices
    except BackendUnavailable as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - Core() itself failed
        return f"openvino cannot start: {one_line(exc)}"
    if "CPU" not in devices:
        return f"openvino here has no CPU device (devices: {', '.join(devices) or 'none'})"
    return None


def why_no_precision(precision: str) -> Optional[str]:
    """None when OpenVINO's CPU plugin computes in `precision` here (f32 always; bf16 / f16 where the CPU's
    OPTIMIZATION_CAPABILITIES list them: AVX-512 BF16 or AMX for bf16), else the reason in one line. Asks the
    plugin, compiles nothing: a bf16 hint on a CPU without the arithmetic silently computes in f32."""
    missing = why_unavailable()
    if missing:
        return missing
    hint = PRECISIONS.get(str(precision).lower())
    if hint is None:
        return f"unknown precision {precision!r}; use f32, bf16 or f16"
    if hint == "f32":
        return None
    capabilities = _import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if hint.upper() not in capabilities:
        return (f"this CPU has no {hint} arithmetic for OpenVINO (its capabilities: {', '.join(capabilities)}); "
                "it would compute in f32")
    return None


def _plain(value) -> str:
    """A compiled model's property as text; element types as OpenVINO names them (f32, bf16), not str()'s
    "<Type: 'float32'>"."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def available() -> bool:
    """True when OpenVINO imports here and has its CPU device."""
    return why_unavailable() is None


def _resolve(path) -> Path:
    from autr.runtime.backends.ort import resolve_onnx

    return resolve_onnx(path)


class OpenVinoRunner(Backend):
    """Run the exported portable graph with OpenVINO on the CPU.

    Args:
        path: the export directory (``model.portable.onnx`` + ``model.json``), or the ``.onnx`` file itself
            (its sidecar ``model.json`` beside it).
        threads: ``INFERENCE_NUM_THREADS`` (None: one per core this process may use).
        precision: ``INFERENCE_PRECISION_HINT``: ``f32`` (default; what ONNX Runtime computes), ``bf16`` or
            ``f16`` (OpenVINO falls back to f32 where the CPU lacks them).
        frames: compile for this T only (static shapes, often faster); None keeps T dynamic over the
            sidecar's range.

    Attributes:
        config: the compile config as the compiled model reports it back.
        compile_seconds: time spent in ``read_model`` + ``compile_model``.
    """

    name = "openvino"

    def __init__(self, path, threads: Optional[int] = None, precision: str = "f32", frames: Optional[int] = None):
        ov = _import_openvino()
        from autr.runtime.backends.sidecar import parse_spec, read_sidecar
        from autr.runtime.threads import available_cores

        onnx_path = _resolve(path)
        side_path, data = read_sidecar(onnx_path)
        spec = parse_spec(data, where=f"sidecar {side_path}")
        super().__init__(spec.input_size, spec.t_min, spec.t_max, device="cpu (OpenVINO)")
        self.artifact = onnx_path
        self.sidecar = side_path
        n_threads = available_cores() if threads is None else int(threads)
        if n_threads < 1:
            raise BackendError(f"threads must be >= 1; got {threads}")
        hint = PRECISIONS.get(str(precision).lower())
        if hint is None:
            raise BackendError(f"unknown precision {precision!r}; use f32, bf16 or f16")
        if frames is not None:
            frames = int(frames)
            if not self.supports(frames):
                raise BackendError(f"frames = {frames} is outside the export's T range {self.t_min}..{self.t_max}")
        t0 = time.perf_counter()
        core = ov.Core()
        try:
            model = core.read_model(str(onnx_path))
        except Exception as exc:
            msg = one_line(exc)
            if "AutrMSDeformAttn" in msg:
                raise BackendError(f"{onnx_path} is the TensorRT plugin graph (custom AutrMSDeformAttn nodes); give "
                                   "OpenVINO the portable graph (model.portable.onnx)") from None
            raise BackendError(f"OpenVINO cannot read {onnx_path}: {msg}") from None
        self._check_graph(model, onnx_path)
        h, w = self.input_size
        if frames is not None:
            model.reshape({"frames": [frames, 3, h, w], "log_mel": [frames, 1, 96, 64]})
            self.t_min = self.t_max = frames
        config = {"INFERENCE_NUM_THREADS": n_threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": hint}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot compile {onnx_path} for the CPU: {one_line(exc)}") from None
        self.compile_seconds = time.perf_counter() - t0
        self.config = {k: _plain(self.compiled.get_property(k)) for k in
                       ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS")}
        self.threads = n_threads
        self.precision = hint
        self._request = self.compiled.create_infer_request()
        self._masks = self.compiled.output("masks")
        self._scores = self.compiled.output("scores")
        self._version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()

    def _check_graph(self, model, onnx_path) -> None:
        inputs = {p.get_any_name(): p.get_partial_shape() for p in model.inputs}
        outputs = {p.get_any_name() for p in model.outputs}
        if set(inputs) != {"frames", "log_mel"}:
            raise BackendError(f"{onnx_path} has inputs {sorted(inputs)}; the model contract is frames, log_mel")
        if not {"masks", "scores"} <= outputs:
            raise BackendError(f"{onnx_path} has outputs {sorted(outputs)}; the model contract is masks, scores")
        shape = inputs["frames"]
        h, w = self.input_size
        if shape.rank.is_static and shape.rank.get_length() == 4:
            dims = [d.get_length() if d.is_static else None for d in shape]
            if any(d is not None and d != e for d, e in zip(dims[1:], (3, h, w))):
                raise BackendError(f"{onnx_path}: graph input frames is {dims} but the sidecar says input size "
                                   f"{h}x{w}")
        else:
            raise BackendError(f"{onnx_path}: graph input frames has shape {shape}; expected [T, 3, {h}, {w}]")

    def infer(self, frames: np.ndarray, log_mel: np.ndarray):
        check_inputs(frames, log_mel, self.input_size, self.t_min, self.t_max)
        feeds = {"frames": np.ascontiguousarray(frames, np.float32),
                 "log_mel": np.ascontiguousarray(log_mel, np.float32)}
        # share_inputs: OpenVINO reads the numpy buffers in place; the outputs are copied out of the request,
        # whose tensors the next call overwrites
        self._request.infer(feeds, share_inputs=True)
        masks = np.array(self._request.get_tensor(self._masks).data, dtype=np.float32, copy=True)
        scores = np.array(self._request.get_tensor(self._scores).data, dtype=np.float32, copy=True).reshape(-1)
        return masks, scores

    def describe(self) -> dict:
        d = super().describe()
        d.update({"sidecar": str(self.sidecar), "config": dict(self.config),
                  "compile_seconds": round(self.compile_seconds, 3)})
        return d

    def versions(self) -> dict:
        return {"openvino": str(self._version)}

    def close(self) -> None:
        self._request = None
        self.compiled = None


# --------------------------------------------------------------------------------------------
# Parity and timing against ONNX Runtime
# --------------------------------------------------------------------------------------------


def synth_inputs(size, t: int, seed: int = 0):
    """Model inputs of a SynthAVS clip (its first ``t`` frames), made with :mod:`autr.preprocess` (numpy only)."""
    from autr.preprocess import SAMPLE_RATE, log_mel_for_clip, preprocess_frames
    from autr.synth import make_clip

    h, w = (size, size) if isinstance(size, int) else size
    clip = make_clip(seed, mode="s4", size=max(h, w))
    frames = preprocess_frames(clip.frames[:t], (h, w))
    log_mel = log_mel_for_clip(clip.wav, SAMPLE_RATE, len(clip.frames))[:t]
    return np.ascontiguousarray(frames), np.ascontiguousarray(log_mel)


def parity(reference, other) -> dict:
    """How far ``other``'s (masks, scores) are from ``reference``'s: max |mask logit diff|, mask IoU of the
    ``logit > 0`` masks (1.0 when both are empty), max |score diff|, and whether the sounding decision
    (``score > 0``) agrees on every frame."""
    m_ref, s_ref = reference
    m, s = other
    a, b = m_ref > 0, m > 0
    union = int(np.count_nonzero(a | b))
    return {"mask_max_abs_diff": float(np.max(np.abs(m_ref - m))),
            "mask_iou": 1.0 if union == 0 else float(np.count_nonzero(a & b)) / union,
            "score_max_abs_diff": float(np.max(np.abs(s_ref - s))),
            "sounding_agrees": bool(np.array_equal(s_ref > 0, s > 0))}


def _median_pair(first, second, frames, log_mel, warmup: int, iters: int, block: int = 5):
    """Median latency (ms) of ``iters`` calls of each backend after ``warmup`` each, alternating in blocks of
    ``block`` calls so that both see the same machine load."""
    for _ in range(warmup):
        first.infer(frames, log_mel)
        second.infer(frames, log_mel)
    times = ([], [])
    done = 0
    while done < iters:
        n = min(block, iters - done)
        for backend, bucket in zip((first, second), times):
            for _ in range(n):
                t0 = time.perf_counter()
                backend.infer(frames, log_mel)
                bucket.append((time.perf_counter() - t0) * 1e3)
        done += n
    return float(np.median(times[0])), float(np.median(times[1]))


def compare(path, t: int = 1, threads=(2, 1), iters: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """OpenVINO against ONNX Runtime on the same portable graph (``path``: the export directory's
    ``model.portable.onnx``, or the graph file): parity on a SynthAVS clip, then the median
    latency of each (``iters`` calls after ``warmup``, alternating in blocks of 5) for every thread count.
    ONNX Runtime runs with spinning on, as ``autr bench model`` runs it (the engine alone on the machine)."""
    from autr.runtime.backends.ort import OrtBackend

    onnx_path = _resolve(path)  # both run this file: ONNX Runtime must not pick another graph of the export
    frames, log_mel = None, None
    rows, checks = [], None
    for n in threads:
        ort_backend = OrtBackend(onnx_path, provider="cpu", threads=n, spinning=True)
        ov_runner = OpenVinoRunner(onnx_path, threads=n)
        try:
            if frames is None:
                frames, log_mel = synth_inputs(ort_backend.input_size, t, seed=seed)
                checks = parity(ort_backend.infer(frames, log_mel), ov_runner.infer(frames, log_mel))
            ort_ms, ov_ms = _median_pair(ort_backend, ov_runner, frames, log_mel, warmup, iters)
            rows.append({"threads": n, "ort_ms": ort_ms, "openvino_ms": ov_ms,
                         "openvino_compile_s": round(ov_runner.compile_seconds, 2)})
        finally:
            ov_runner.close()
            ort_backend.close()
    import onnxruntime

    return {"artifact": str(onnx_path), "t": t, "iters": iters, "warmup": warmup, "parity": checks,
            "timing": rows, "versions": {"openvino": _import_openvino().__version__,
                                         "onnxruntime": onnxruntime.__version__}}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autr.benchmarks.openvino_runner",
                                     description="OpenVINO against ONNX Runtime on an export's portable graph.")
    parser.add_argument("export", type=Path, help="export directory (model.portable.onnx + model.json)")
    parser.add_argument("--frames", type=int, default=1, help="T per call (default 1, the live window)")
    parser.add_argument("--threads", default="2,1", help="thread counts, comma-separated (default 2,1)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    reason = why_unavailable()
    if reason is not None:
        print(f"openvino: skipped: {reason}")
        return 2
    try:
        threads = [int(x) for x in args.threads.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--threads must be integers, e.g. 2,1; got {args.threads!r}")
    try:
        result = compare(args.export, t=args.frames, threads=threads, iters=args.iters, warmup=args.warmup)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    p = result["parity"]
    print(f"{result['artifact']} (T = {result['t']}); openvino {result['versions']['openvino']}, onnxruntime "
          f"{result['versions']['onnxruntime']}")
    print(f"parity vs ONNX Runtime: max |mask logit diff| {p['mask_max_abs_diff']:.2e}, mask IoU "
          f"{p['mask_iou']:.4f}, max |score diff| {p['score_max_abs_diff']:.2e}, sounding agrees "
          f"{p['sounding_agrees']}")
    print(f"{'threads':>7} {'ORT ms':>9} {'OpenVINO ms':>12} {'ORT / OV':>9}   (median of {result['iters']} after "
          f"{result['warmup']} warm-up)")
    for r in result["timing"]:
        ratio = r['ort_ms'] / r['openvino_ms']
        print(f"{r['threads']:>7} {r['ort_ms']:>9.2f} {r['openvino_ms']:>12.2f} {ratio:>8.2f}x")
    if args.json is not None:
        from .core import write_result

        write_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
