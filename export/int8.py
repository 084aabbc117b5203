"""float32 -> INT8 (static, QDQ) for the exported graphs, with ONNX Runtime's quantization tools.

    DIR/model.portable.int8.onnx   QuantizeLinear/DequantizeLinear around Conv / MatMul / Gemm (ONNX Runtime)
    DIR/model.plugin.int8.onnx     the same Q/DQ placement and scales on the plugin graph (TensorRT)

The quantizer is `onnxruntime.quantization.quantize_static` in QDQ format; this module only chooses
its options, feeds it calibration clips and checks what it wrote:

* only `Conv`, `MatMul` and `Gemm` are quantized (`op_types_to_quantize`), on their inputs only
  (`OpTypesToExcludeOutputQuantization`): their float outputs reach the rest of the graph unchanged;
* weights int8, per channel (Conv axis 0, MatMul axis 1, Gemm the output axis), symmetric;
  activations int8 per tensor, symmetric: every zero point is an int8 0, the form of explicit
  quantization TensorRT takes (TensorRT has no INT8 calibrator: Q/DQ in the graph is its INT8 path);
  biases stay float32 (`QuantizeBias` off: no int32 DequantizeLinear); one Q/DQ pair per consuming
  node (`DedicatedQDQPair`);
* ONNX Runtime gives a tensor with one quantized consumer a single Q/DQ pair that every other
  consumer reads too; `restrict_to_quantized_consumers` rewires those other consumers (a residual
  Add, a LayerNormalization, the MSDA decomposition) back to the float tensor, so nothing but Conv /
  MatMul / Gemm reads a dequantized tensor — in particular no GridSample, nothing of the MSDA
  decomposition and no `AutrMSDeformAttn` node (`check_placement` proves it on every graph written).

The graphs come from the exporter's `simplify`, whose `fold_constants` turned every step on weights
alone (the in-projection weights' Transposes, split from one initializer after onnxscript's optimizer
ran) into initializers, so those MatMuls have constant weights, quantized per channel, not calibrated
activations.

Calibration runs on the portable graph (the plugin graph's `AutrMSDeformAttn` nodes do not run in
stock ONNX Runtime): SynthAVS clips from a seed that neither the held-out test seed (1000) nor the
training seeds (0, 1) use (`CALIB_SEED`, split `train`, clips 0..n-1), preprocessed by
`autr.evaluation.clip_inputs` (= `autr.preprocess`, as training and `autr eval`). The ranges are
saved as ONNX Runtime's calibration cache and the plugin graph is quantized from that cache with the
same options: the two graphs share every tensor name outside MSDA (the portable graph is the plugin
graph with each MSDA node decomposed; the decomposition ends in the MSDA node's output name), and
`same_quantization` checks that both graphs carry the same Q/DQ nodes with the same scales.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

from autr.export.errors import ExportError  # numpy, onnx and onnxruntime load when a function runs (cli imports this)

QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIB_SEED = 20000  # SynthAVS seed of the calibration clips: not the test seed 1000, not the training seeds 0, 1
CALIB_MODE = "s4"
CALIB_SPLIT = "train"  # calibration clips: (CALIB_SEED, s4, train, 0..n-1)
CHECK_SPLIT = "val"  # clips of the error measurement: (CALIB_SEED, s4, val, 0..n-1), never calibrated on
DEFAULT_CLIPS = 8  # x 5 frames = 40 calibration frames
MAX_CLIPS = 500
CHECK_CLIPS = 3
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"
EXCLUDE_CHOICES = ("heads", "first-conv", "attention", "msda-inputs")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# ----------------------------------------------------------------------------------- arguments
def validate_options(clips=DEFAULT_CLIPS, method=DEFAULT_METHOD, exclude=()) -> tuple:
    """(clips, method, exclude) checked; ExportError (one line) otherwise. Runs before any model loads."""
    if isinstance(clips, bool) or not isinstance(clips, int) or not 1 <= clips <= MAX_CLIPS:
        raise ExportError(f"--int8-clips must be an integer between 1 and {MAX_CLIPS} "
                          f"(SynthAVS clips of 5 frames for calibration), got {clips!r}")
    method = str(method).lower()
    if method not in METHODS:
        raise ExportError(f"unknown INT8 calibration method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(exclude, str):
        exclude = [p for p in (s.strip() for s in exclude.split(",")) if p]
    exclude = tuple(dict.fromkeys(exclude))
    bad = [e for e in exclude if e not in EXCLUDE_CHOICES]
    if bad:
        raise ExportError(f"unknown --int8-exclude {', '.join(map(repr, bad))}; "
                          f"choose from {', '.join(EXCLUDE_CHOICES)}")
    return clips, method, exclude


# ----------------------------------------------------------------------------------- calibration data
def synth_inputs(size: int, t_max: int, clips: int, seed: int = CALIB_SEED, split: str = CALIB_SPLIT,
                 log=None) -> list:
    """Model inputs of SynthAVS clips (seed, s4, split, 0..clips-1) at `size`, preprocessed as in
    training and `autr eval`; clips longer than T_MAX are cut into runs of at most T_MAX frames.
    A list of {"frames": [T,3,H,W], "log_mel": [T,1,96,64]} float32 dicts."""
    import numpy as np

    from autr.evaluation import clip_inputs
    from autr.synth import dataset_clip

    feeds = []
    for i in range(clips):
        frames, log_mel = clip_inputs(dataset_clip(seed, CALIB_MODE, split, i, size=size), size)
        frames, log_mel = frames.numpy(), log_mel.numpy()
        for start in range(0, len(frames), t_max):
            feeds.append({"frames": np.ascontiguousarray(frames[start:start + t_max]),
                          "log_mel": np.ascontiguousarray(log_mel[start:start + t_max])})
        if log is not None and (i + 1 == clips or (i + 1) % max(1, clips // 4) == 0):
            log(f"  calibration clips {i + 1}/{clips} (SynthAVS {CALIB_MODE} seed {seed} {split}), "
                f"{sum(len(f['frames']) for f in feeds)} frames")
    return feeds


def _reader(feeds: list):
    from onnxruntime.quantization import CalibrationDataReader

    class ClipReader(CalibrationDataReader):
        """The calibration feeds, once through (ONNX Runtime's reader protocol, with set_range)."""

        def __init__(self):
            self.start, self.end, self.pos = 0, len(feeds), 0

        def get_next(self):
            if self.start + self.pos >= self.end:
                return None
            self.pos += 1
            return feeds[self.start + self.pos - 1]

        def __len__(self):
            return len(feeds)

        def set_range(self, start_index: int, end_index: int):
            self.start, self.end, self.pos = start_index, min(end_index, len(feeds)), 0

    return ClipReader()


# ----------------------------------------------------------------------------------- graph passes
def _consumers(model) -> dict:
    out = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def excluded_nodes(model: onnx.ModelProto, exclude, tail=frozenset()) -> list:
    """Names of the Conv / MatMul / Gemm nodes left in float32 by the `exclude` choices:
    `heads`: those of the mask and score heads and after them (output names in `tail`, from the
    torch module scopes); `first-conv`: the first Conv (the backbone's patch embedding);
    `attention`: MatMuls whose two inputs are both activations (Q·Kᵀ, attention·V, the dynamic
    convolutions of the mask head); `msda-inputs`: the MatMuls whose outputs reach an MSDA node's
    sampling locations or attention weights through no other Conv / MatMul / Gemm."""
    from autr.export import msda

    inits = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QUANT_OP_TYPES]
    names = []
    if "heads" in exclude:
        if not tail:
            raise ExportError("--int8-exclude heads needs the mask / score head tensors of the traced graph")
        names += [n.name for n in nodes if any(o in tail for o in n.output)]
    if "first-conv" in exclude:
        first = next((n for n in nodes if n.op_type == "Conv"), None)
        if first is not None:
            names.append(first.name)
    if "attention" in exclude:
        names += [n.name for n in nodes if n.op_type == "MatMul" and not any(i in inits for i in n.input[:2])]
    if "msda-inputs" in exclude:
        prod = _producers(model)
        targets = [n.input[i] for n in model.graph.node
                   if n.op_type == msda.OP_TYPE and n.domain == msda.DOMAIN for i in (3, 4)]
        if not targets:  # a model without MSDA layers (TPAVI); exclusions are resolved on the plugin graph
            raise ExportError(f"--int8-exclude msda-inputs: the graph has no {msda.OP_TYPE} node (a model without MSDA "
                              "layers, such as TPAVI, has none to keep in float32); leave msda-inputs out")
        seen, stack = set(), list(targets)
        while stack:
            t = stack.pop()
            node = prod.get(t)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in QUANT_OP_TYPES:
                names.append(node.name)
                continue
            stack.extend(i for i in node.input if i and i not in inits)
    return list(dict.fromkeys(names))


def restrict_to_quantized_consumers(model: onnx.ModelProto) -> int:
    """Rewire every consumer of a DequantizeLinear output that is not Conv / MatMul / Gemm (or a Q/DQ)
    to the float tensor the activation's QuantizeLinear reads; drop Q/DQ pairs left unused.
    Returns the number of inputs rewired."""
    prod = _producers(model)
    graph_outputs = {o.name for o in model.graph.output}
    rewired = 0
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight: int8 initializer -> DQ
        if dq.output[0] in graph_outputs:
            raise ExportError(f"the quantizer made graph output {dq.output[0]} a dequantized tensor")
        for node in model.graph.node:
            if node.op_type in QUANT_OP_TYPES or node.op_type in QDQ_OPS:
                continue
            for i, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[i] = q.input[0]
                    rewired += 1
    # drop the pairs nothing reads any more (a DQ first, then its Q)
    changed = True
    while changed:
        changed = False
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        keep = [n for n in model.graph.node if n.op_type not in QDQ_OPS or n.output[0] in used]
        if len(keep) != len(model.graph.node):
            del model.graph.node[:]
            model.graph.node.extend(keep)
            changed = True
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return rewired


# ----------------------------------------------------------------------------------- checks
def _init_arrays(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def check_placement(model: onnx.ModelProto, what: str) -> None:
    """ExportError unless: every DequantizeLinear output feeds only Conv / MatMul / Gemm (so no Q/DQ
    around GridSample, the MSDA decomposition or AutrMSDeformAttn); every Q/DQ has an int8 zero
    point equal to 0; every weight DequantizeLinear reads an int8 initializer."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = _init_arrays(model)
    consumers = _consumers(model)
    prod = _producers(model)
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            raise ExportError(f"the {what} graph: {node.op_type} {node.name} has no constant zero point")
        zp = inits[node.input[2]]
        if zp.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
            raise ExportError(f"the {what} graph: {node.op_type} {node.name} is not symmetric int8 "
                              f"(zero point {numpy_helper.to_array(zp).ravel()[:4]}, type {zp.data_type})")
        if node.op_type == "DequantizeLinear":
            src = node.input[0]
            if src in inits and inits[src].data_type != TensorProto.INT8:
                raise ExportError(f"the {what} graph: weight {src} is not int8")
            if src not in inits and (src not in prod or prod[src].op_type != "QuantizeLinear"):
                raise ExportError(f"the {what} graph: {node.name} dequantizes {src}, which no QuantizeLinear makes")
            bad = [c for c in consumers.get(node.output[0], []) if c.op_type not in QUANT_OP_TYPES]
            if bad:
                raise ExportError(f"the {what} graph: {node.name} feeds {bad[0].op_type} {bad[0].name}; "
                                  f"Q/DQ may only feed {', '.join(QUANT_OP_TYPES)}")


def quantized_ops(model: onnx.ModelProto) -> dict:
    """Per op type: how many nodes read a dequantized input (quantized) and how many do not."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    counts = {op: {"quantized": 0, "float": 0} for op in QUANT_OP_TYPES}
    for node in model.graph.node:
        if node.op_type in QUANT_OP_TYPES:
            counts[node.op_type]["quantized" if any(i in dq_out for i in node.input) else "float"] += 1
    return {op: c for op, c in counts.items() if c["quantized"] or c["float"]}


def qdq_table(model: onnx.ModelProto) -> dict:
    """{quantized tensor name: (scale bytes, zero point bytes, axis)} of every activation Q and weight DQ."""
    from onnx import numpy_helper

    inits = _init_arrays(model)
    table = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" or (node.op_type == "DequantizeLinear" and node.input[0] in inits):
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            key = node.input[0]
            table[key] = (numpy_helper.to_array(inits[node.input[1]]).tobytes(),
                          numpy_helper.to_array(inits[node.input[2]]).tobytes(), axis)
    return table


def same_quantization(plugin: onnx.ModelProto, portable: onnx.ModelProto) -> int:
    """Check both int8 graphs quantize the same tensors with the same scales (ExportError otherwise);
    returns how many quantized tensors they share."""
    a, b = qdq_table(plugin), qdq_table(portable)
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ExportError(f"the plugin and portable int8 graphs quantize different tensors ({len(only)}, "
                          f"e.g. {only[0]}): their non-MSDA tensor names are not shared")
    diff = [k for k in a if a[k] != b[k]]
    if diff:
        raise ExportError(f"the plugin and portable int8 graphs quantize {diff[0]} with different scales")
    return len(a)


# ----------------------------------------------------------------------------------- quantize
@contextlib.contextmanager
def _quiet_ort():
    """ONNX Runtime's quantizer logs a pre-processing advice through the root logger and its histogram
    calibrators print their progress on stdout (where the CLI writes its table): keep both quiet."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _options(exclude_nodes: list) -> dict:
    from onnxruntime.quantization import QuantType

    return dict(
        op_types_to_quantize=list(QUANT_OP_TYPES), per_channel=True, reduce_range=False,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude_nodes),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                       "DedicatedQDQPair": True, "OpTypesToExcludeOutputQuantization": list(QUANT_OP_TYPES)})


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _quantize_one(model: onnx.ModelProto, work: Path, name: str, cache: Path, method: str, exclude_nodes: list,
                  reader=None) -> tuple:
    """(quantized ModelProto, number of non-quantized readers given back their float tensor)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    out = work / f"{name}.int8.onnx"
    try:
        with _quiet_ort():
            quantize_static(model, str(out), reader, quant_format=QuantFormat.QDQ,
                            calibrate_method=_method(method), calibration_cache_path=str(cache),
                            **_options(exclude_nodes))
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ExportError(f"ONNX Runtime's quantizer failed on the {name} graph: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
    quantized = onnx.load(str(out))
    rewired = restrict_to_quantized_consumers(quantized)
    # the quantizer stamps its own producer and leaves its inference metadata; the exporter's _finish sets ours
    del quantized.metadata_props[:]
    return quantized, rewired


def quantize_graphs(plugin: onnx.ModelProto, portable: onnx.ModelProto, size: int, t_max: int, *,
                    clips: int = DEFAULT_CLIPS, method: str = DEFAULT_METHOD, exclude=(), tail=frozenset(),
                    seed: int = CALIB_SEED, log=None) -> tuple:
    """(plugin int8 ModelProto, portable int8 ModelProto, quantization record for the sidecar)."""
    import onnx
    import onnxruntime

    from autr.export import msda

    clips, method, exclude = validate_options(clips, method, exclude)
    say = log or (lambda msg: None)
    msda.register_onnx_schema()
    started = time.perf_counter()
    plugin, portable = onnx.ModelProto.FromString(plugin.SerializeToString()), \
        onnx.ModelProto.FromString(portable.SerializeToString())
    skip = excluded_nodes(plugin, exclude, tail)
    names = {n.name for n in portable.graph.node}
    if any(s not in names for s in skip):
        raise ExportError("the plugin and portable graphs do not share node names outside MSDA")

    say(f"INT8: calibrating on {clips} SynthAVS clips ({method}, seed {seed})")
    seconds = {}
    t0 = time.perf_counter()
    feeds = synth_inputs(size, t_max, clips, seed, CALIB_SPLIT, log=say)
    seconds["calibration_data"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="autr-int8-") as tmp:
        work = Path(tmp)
        cache = work / "calibration.json"
        t0 = time.perf_counter()
        portable_q, rewired = _quantize_one(portable, work, "portable", cache, method, skip, reader=_reader(feeds))
        seconds["calibrate_and_quantize_portable"] = time.perf_counter() - t0
        say("INT8: quantizing the plugin graph with the portable graph's ranges")
        t0 = time.perf_counter()
        plugin_q, _ = _quantize_one(plugin, work, "plugin", cache, method, skip)
        seconds["quantize_plugin"] = time.perf_counter() - t0
    check_placement(portable_q, "portable int8")
    check_placement(plugin_q, "plugin int8")
    shared = same_quantization(plugin_q, portable_q)
    frames = sum(len(f["frames"]) for f in feeds)
    record = {
        "tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
        "format": "QDQ (QuantizeLinear / DequantizeLinear)",
        "op_types_to_quantize": list(QUANT_OP_TYPES),
        "quantized_ops": quantized_ops(portable_q),
        "excluded": {"choices": list(exclude), "nodes": skip},
        "qdq_nodes": {op: sum(n.op_type == op for n in portable_q.graph.node) for op in QDQ_OPS},
        "quantized_tensors": shared,
        "weights": "int8 initializers + DequantizeLinear, per channel (Conv axis 0, MatMul axis 1, Gemm output "
                   "axis), symmetric, zero point 0",
        "activations": "int8, per tensor, symmetric, zero point 0; inputs of the quantized ops only "
                       "(their outputs stay float32), one Q/DQ pair per consuming node",
        "bias": "float32 (not quantized)",
        "float_readers_restored": rewired,
        "plugin_graph": "quantized from ONNX Runtime's calibration cache of the portable graph: the same Q/DQ "
                        "tensors and scales (checked)",
        "calibration": {"graph": "portable", "method": method, "data": "SynthAVS", "mode": CALIB_MODE, "seed": seed,
                        "split": CALIB_SPLIT, "clip_indices": [0, clips - 1], "clips": clips, "frames": frames,
                        "batch_frames": max(len(f["frames"]) for f in feeds),
                        "preprocessing": "autr.evaluation.clip_inputs (autr.preprocess: frames and VGGish log-mel)"},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "quantize_seconds": round(time.perf_counter() - started, 2),
    }
    return plugin_q, portable_q, record


# ----------------------------------------------------------------------------------- error vs fp32
def error_vs_fp32(fp32_path, int8_path, size: int, t_max: int, plugin: bool = False,
                  clips: int = CHECK_CLIPS, seed: int = CALIB_SEED) -> dict:
    """Agreement of an int8 graph with its float32 graph (ONNX Runtime CPU) on SynthAVS clips
    (seed, s4, CHECK_SPLIT, 0..clips-1), none of them calibrated on: worst over the clips."""
    import numpy as np

    from autr.export import verify

    feeds = synth_inputs(size, t_max, clips, seed, CHECK_SPLIT)
    ref_sess, sess = verify.session(fp32_path, plugin=plugin), verify.session(int8_path, plugin=plugin)
    rows = []
    for feed in feeds:
        ref = verify.run_session(ref_sess, feed["frames"], feed["log_mel"])
        got = verify.run_session(sess, feed["frames"], feed["log_mel"])
        rows.append(verify.agreement(*ref, *got))
    return {"max_abs": max(r["max_abs"] for r in rows), "mean_abs": float(np.mean([r["mean_abs"] for r in rows])),
            "iou_min": min(r["iou_min"] for r in rows), "iou_mean": float(np.mean([r["iou_mean"] for r in rows])),
            "score_max_abs": max(r["score_max_abs"] for r in rows),
            "score_sign_agree": float(np.mean([r["score_sign_agree"] for r in rows])),
            "clips": f"SynthAVS {CALIB_MODE} seed {seed} {CHECK_SPLIT} 0..{clips - 1} ({len(feeds)} runs)",
            "measured_with": "ONNX Runtime CPU" + (" (MSDA by the PyTorch reference)" if plugin else "")}
