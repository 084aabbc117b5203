"""`autr export verify DIR`: the same clips through PyTorch and the exported graphs in ONNX Runtime.

Graphs checked: the portable graph (stock ONNX Runtime), the plugin graph with its
`autr::AutrMSDeformAttn` nodes served by the project's MSDA reference (`autr.ops.ms_deform_attn_reference`)
registered through onnxruntime-extensions' Python custom ops, and the float16 graphs when present.

onnxruntime-extensions registers Python ops in its own domain `ai.onnx.contrib` by default; an
`op_type` written as `"domain::Name"` puts the op in that domain instead, so the ops here are
registered as `autr::AutrMSDeformAttn` and the float32 plugin graph runs unchanged. The Python op
API has no float16 (registering one aborts the process when ORT calls it), so for the float16 plugin
graph the check runs a rewritten in-memory copy where each MSDA node reads float32 casts of its
float16 inputs and its output is cast back to float16 (what a plugin accumulating in float32 does).
Note the Python op is far slower than the TensorRT plugin: the plugin graph's latency here measures
the check, not the graph.

Per clip and graph: max |Δ| of the mask logits, mask IoU agreement of (logits > 0) (minimum over
frames; two empty masks agree), max |Δ| of the sounding scores and the fraction of frames whose
score sign agrees, and median latency (after warm-up) against PyTorch eager on the same CPU.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from autr.export.errors import ExportError
from autr.export.onnx_export import (PLUGIN_FILE, PLUGIN_FP16_FILE, PORTABLE_FILE, PORTABLE_FP16_FILE,
                                     TOLERANCE, read_export)

GRAPH_FILES = {"portable": PORTABLE_FILE, "plugin": PLUGIN_FILE,
               "portable_fp16": PORTABLE_FP16_FILE, "plugin_fp16": PLUGIN_FP16_FILE}
_PYOPS_REGISTERED = False


# ----------------------------------------------------------------------------------- sessions
def register_numpy_plugin() -> None:
    """Serve `autr::AutrMSDeformAttn` (float32 and float16) from numpy in ONNX Runtime. Idempotent."""
    global _PYOPS_REGISTERED
    if _PYOPS_REGISTERED:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef as D
        from onnxruntime_extensions import onnx_op
    except ImportError as exc:
        raise ExportError(f"checking the plugin graph needs onnxruntime-extensions ({exc})") from None
    from autr.export import msda

    def impl(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, **_attrs):
        import torch

        from autr.ops import ms_deform_attn_reference

        args = [torch.from_numpy(np.ascontiguousarray(x)) for x in
                (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)]
        args[1], args[2] = args[1].long(), args[2].long()
        return ms_deform_attn_reference(*args).numpy()

    dt = D.dt_float
    onnx_op(op_type=f"{msda.DOMAIN}::{msda.OP_TYPE}", inputs=[dt, D.dt_int32, D.dt_int32, dt, dt],
            outputs=[dt], attrs={"plugin_version": D.dt_string})(impl)
    _PYOPS_REGISTERED = True


def bridge_fp16_msda(model):
    """A copy of `model` whose float16 MSDA nodes compute on float32 casts (see module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    from autr.export import msda

    msda.register_onnx_schema()
    model = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    nodes = []
    for node in model.graph.node:
        is_msda = node.op_type == msda.OP_TYPE and node.domain == msda.DOMAIN
        if is_msda and types.get(node.input[0]) == TensorProto.FLOAT16:
            for i in (0, 3, 4):
                cast = f"{node.input[i]}__bridge_fp32"
                nodes.append(helper.make_node("Cast", [node.input[i]], [cast], to=TensorProto.FLOAT))
                node.input[i] = cast
            out = node.output[0]
            node.output[0] = f"{out}__bridge_fp32"
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT16))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


def session(path, plugin: bool = False, threads: int | None = None):
    """An ONNX Runtime CPU session; `plugin` adds AutrMSDeformAttn (the PyTorch reference)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # idle ORT threads must not spin: PyTorch is timed on the same cores right after
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    source = str(path)
    if plugin:
        register_numpy_plugin()
        import onnx
        from onnxruntime_extensions import get_library_path

        opts.register_custom_ops_library(get_library_path())
        proto = onnx.load(str(path))
        if any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer):
            source = bridge_fp16_msda(proto).SerializeToString()
            # ORT 1.32's level-3 (layout) optimizations crash on this float16 + Python-op graph
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_session(sess, frames: np.ndarray, log_mel: np.ndarray):
    masks, scores = sess.run(["masks", "scores"], {"frames": frames, "log_mel": log_mel})
    return masks, scores


class ExportedModel:
    """An exported graph behind the inference interface of `autr.model.AuTR`, so `autr.evaluation` (the code
    of `autr eval`) scores it unchanged: `eval()` and `to("cpu")` return the object, `model(frames, log_mel)`
    takes torch tensors [T,3,H,W], [T,1,96,64] and returns {"masks": [T,H,W] logits, "scores": [T] logits} as
    float32 torch tensors, computed by `infer(frames, log_mel)` on numpy arrays (a runtime backend's call)."""

    runtime = "CPU"

    def __init__(self, infer, t_max: int | None = None):
        self.infer = infer
        self.t_max = t_max

    def eval(self):
        return self

    def to(self, device):
        if str(device) != "cpu":
            raise ExportError(f"{type(self).__name__} runs on the CPU ({self.runtime}), not on {device}")
        return self

    def __call__(self, frames, log_mel) -> dict:
        import torch

        if self.t_max is not None and len(frames) > self.t_max:
            raise ExportError(f"a clip of {len(frames)} frames is longer than the export's T_MAX={self.t_max}; "
                              f"re-export with --frames {len(frames)}")
        f = np.ascontiguousarray(frames.detach().cpu().numpy(), dtype=np.float32)
        a = np.ascontiguousarray(log_mel.detach().cpu().numpy(), dtype=np.float32)
        masks, scores = self.infer(f, a)
        return {"masks": torch.from_numpy(np.asarray(masks, np.float32)),
                "scores": torch.from_numpy(np.asarray(scores, np.float32))}


class OrtModel(ExportedModel):
    """An exported graph in ONNX Runtime on the CPU (`plugin`: MSDA nodes by the PyTorch reference, as
    `session` serves them), behind the interface of `ExportedModel`."""

    runtime = "ONNX Runtime"

    def __init__(self, path, plugin: bool = False, threads: int | None = None, t_max: int | None = None):
        self.path = str(path)
        self.session = session(path, plugin=plugin, threads=threads)
        super().__init__(lambda f, a: run_session(self.session, f, a), t_max)


def run_torch(model, frames: np.ndarray, log_mel: np.ndarray):
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(frames), torch.from_numpy(log_mel))
    return out["masks"].float().numpy(), out["scores"].float().numpy()


# ----------------------------------------------------------------------------------- metrics
def agreement(ref_masks, ref_scores, masks, scores) -> dict:
    ref_masks, masks = np.asarray(ref_masks, np.float32), np.asarray(masks, np.float32)
    if ref_masks.shape != masks.shape:
        raise ExportError(f"output shapes differ: PyTorch {ref_masks.shape}, ONNX {masks.shape}")
    diff = np.abs(ref_masks - masks)
    a, b = ref_masks > 0, masks > 0
    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    sdiff = np.abs(np.asarray(ref_scores, np.float32) - np.asarray(scores, np.float32))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "iou_min": float(iou.min()), "iou_mean": float(iou.mean()),
            "score_max_abs": float(sdiff.max()),
            "score_sign_agree": float(np.mean((np.asarray(ref_scores) > 0) == (np.asarray(scores) > 0)))}


def within_tolerance(row: dict) -> bool:
    return row["max_abs"] <= TOLERANCE["max_abs"] and row["iou_min"] >= TOLERANCE["iou"]


# ----------------------------------------------------------------------------------- clips
def random_clip(t: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((t, 3, size, size), dtype=np.float32)
    log_mel = rng.standard_normal((t, 1, 96, 64), dtype=np.float32)
    return frames, log_mel


def synth_clip(size: int, t: int, seed: int = 0):
    """A SynthAVS s4 clip (its first `t` frames) as model inputs."""
    from autr.evaluation import clip_inputs
    from autr.synth import make_clip

    frames, log_mel = clip_inputs(make_clip(seed, mode="s4", size=size), size)
    return frames.numpy()[:t].copy(), log_mel.numpy()[:t].copy()


def _median_ms(fn, runs: int, warmup: int = 1) -> float:
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ----------------------------------------------------------------------------------- at export
def export_parity(model, paths: dict, size: int, t_max: int) -> dict:
    """Agreement of each graph in `paths` (kind -> file) with PyTorch on random clips T=1, T=T_MAX."""
    cases = {f"random T={t}": random_clip(t, size, seed=t) for t in sorted({1, t_max})}
    refs = {name: run_torch(model, *clip) for name, clip in cases.items()}
    result = {}
    for kind, path in paths.items():
        try:
            sess = session(path, plugin=kind.startswith("plugin"))
        except ExportError as exc:
            result[kind] = f"skipped: {exc}"
            continue
        result[kind] = {name: agreement(*refs[name], *run_session(sess, *clip)) for name, clip in cases.items()}
    return result


# ----------------------------------------------------------------------------------- verify DIR
def model_for_export(sidecar: dict, checkpoint=None):
    """The PyTorch model an export was made from (its weights digest must match)."""
    from autr.export.onnx_export import resolve_model, weights_digest

    src = sidecar.get("checkpoint") or {}
    if checkpoint is not None:
        model, _ = resolve_model(checkpoint=checkpoint)
    elif src.get("source") == "preset":
        from autr.model import build_model
        from autr.presets import AutrConfig

        model = build_model(AutrConfig.from_dict(sidecar["config"]), seed=src.get("seed", 0)).eval()
    elif src.get("source") in ("file", "default"):
        try:
            model, _ = resolve_model(checkpoint="default" if src["source"] == "default" else src["path"])
        except ExportError as exc:
            raise ExportError(f"{exc} (the checkpoint this export was made from); pass --checkpoint FILE") from None
    else:
        raise ExportError("this export was made from an in-memory model; pass the checkpoint to compare with")
    if weights_digest(model) != sidecar.get("weights_sha256"):
        raise ExportError("the PyTorch model rebuilt for the check does not have the exported weights "
                          "(weights_sha256 differs); pass --checkpoint with the exported checkpoint")
    return model


def verify_export(directory, *, checkpoint=None, model=None, frames=None, runs: int = 5, seed: int = 0,
                  synth: bool = True, threads: int | None = None, log=None) -> dict:
    """Run random clips (T=1 and T=T_MAX) and a SynthAVS clip through PyTorch and every graph."""
    say = log or (lambda msg: None)
    directory, sidecar, (size, _), (_, t_max) = read_export(directory)
    if model is None:
        model = model_for_export(sidecar, checkpoint)
    ts = sorted({1, t_max}) if frames is None else [int(frames)]
    if any(not 1 <= t <= t_max for t in ts):
        raise ExportError(f"frames must be between 1 and the export's T_MAX={t_max}")
    clips = {f"random T={t}": random_clip(t, size, seed + t) for t in ts}
    if synth:
        clips[f"SynthAVS T={min(5, t_max)}"] = synth_clip(size, min(5, t_max), seed)
    sessions = {}
    for kind, name in GRAPH_FILES.items():
        if (directory / name).is_file():
            try:
                sessions[kind] = session(directory / name, plugin=kind.startswith("plugin"), threads=threads)
            except ExportError as exc:
                say(f"skipping {kind}: {exc}")
    rows = []
    import torch

    for clip_name, (f, a) in clips.items():
        ref = run_torch(model, f, a)
        with torch.inference_mode():
            torch_ms = _median_ms(lambda: model(torch.from_numpy(f), torch.from_numpy(a)), runs)
        rows.append({"clip": clip_name, "graph": "pytorch", "latency_ms": torch_ms})
        for kind, sess in sessions.items():
            got = run_session(sess, f, a)
            row = {"clip": clip_name, "graph": kind, **agreement(*ref, *got),
                   "latency_ms": _median_ms(lambda: run_session(sess, f, a), runs)}
            row["ok"] = within_tolerance(row) if not kind.endswith("fp16") else None
            rows.append(row)
            say(format_row(row))
    checked = [r for r in rows if r.get("ok") is not None]
    return {"directory": str(directory), "rows": rows, "tolerance": TOLERANCE,
            "ok": bool(checked) and all(r["ok"] for r in checked),
            "graphs": sorted(sessions)}


HEADER = (f"{'clip':<16} {'graph':<14} {'max|Δ| logits':>13} {'mask IoU':>9} {'max|Δ| score':>12} "
          f"{'score agree':>11} {'ms (median)':>11}  check")


def format_row(row: dict) -> str:
    if row["graph"] == "pytorch":
        blank = f"{'':>13} {'':>9} {'':>12} {'':>11}"
        return f"{row['clip']:<16} {'pytorch':<14} {blank} {row['latency_ms']:>11.1f}  reference"
    status = {True: "ok", False: "FAIL", None: "(fp16: reported)"}[row["ok"]]
    label = row["graph"] + (" *" if row["graph"].startswith("plugin") else "")
    return (f"{row['clip']:<16} {label:<14} {row['max_abs']:>13.2e} {row['iou_min']:>9.5f} "
            f"{row['score_max_abs']:>12.2e} {row['score_sign_agree']:>11.3f} {row['latency_ms']:>11.1f}  {status}")


def format_table(result: dict) -> str:
    lines = [HEADER] + [format_row(r) for r in result["rows"]]
    lines.append(f"* plugin graphs run their MSDA nodes through the PyTorch reference (onnxruntime-extensions): their latency "
                 f"measures the check, not TensorRT. Limits: max|Δ| <= {TOLERANCE['max_abs']}, "
                 f"IoU >= {TOLERANCE['iou']} (fp32 graphs).")
    return "\n".join(lines)
