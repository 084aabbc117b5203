"""ONNX graph passes of the export: simplification, opset down-conversion, MSDA decomposition, checks.

Everything here works on `onnx.ModelProto` and numpy; nothing imports torch.

* `simplify` — after onnxscript's optimizer (constant folding, dead code, shape-op folding) the
  exporter's graph still holds multi-output `Split`s of weights (onnxscript skips those) and every
  node's trace metadata. `simplify` folds those splits into initializers, folds constant scales and
  offsets that follow a linear layer into its weights (`fold_affine_into_linear`), puts the token <->
  feature-map Transposes in channels-last order (`transposes_to_channels_last`), drops the metadata,
  merges identical initializers, names the MSDA index constants and removes what is left unused.
* `convert_opset` — the trace is at opset 18; newer opsets come from onnx's version converter, and
  opset 17 from `to_opset17`: the converter too, except `Split` (no 18 -> 17 adapter), which is
  set aside and rewritten by hand.
* `decompose_msda` — the portable graph: every `autr::AutrMSDeformAttn` node becomes the
  grid_sample formulation of `autr.ops.ms_deform_attn_reference` in standard ops (GridSample with
  the opset's name for bilinear: "bilinear" before opset 20, "linear" from 20 on).
* `check` — `onnx.checker.check_model(full_check=True)` plus strict shape inference.
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from autr.export import msda
from autr.export.errors import ExportError

SPATIAL_SHAPES_NAME = "msda_spatial_shapes"
LEVEL_START_NAME = "msda_level_start_index"


# ----------------------------------------------------------------------------------- helpers
def opset_of(model: onnx.ModelProto, domain: str = "") -> int | None:
    for o in model.opset_import:
        if o.domain in ((domain,) if domain else ("", "ai.onnx")):
            return o.version
    return None


def op_counts(model: onnx.ModelProto) -> dict:
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def unique_namer(model):
    """A function giving names no tensor, node or initializer of `model` has (nor any it gave before)."""
    used = {n.name for n in model.graph.node} | {o for n in model.graph.node for o in n.output}
    used |= {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name

    return fresh


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ----------------------------------------------------------------------------------- simplify
def fold_constants(model: onnx.ModelProto) -> int:
    """Replace every standard node whose inputs are all initializers by initializers of its outputs, computed
    with ONNX's reference evaluator (weight Splits / Transposes / Reshapes and the linear layers of constant
    tokens that onnxscript's optimizer leaves above its size limit). Returns how many nodes were folded."""
    from onnx.reference import ReferenceEvaluator

    inits = _initializers(model)
    keep, folded = [], 0
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.domain in ("", "ai.onnx") and inputs and all(i in inits for i in inputs):
            graph = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None)
                                                           for o in node.output if o],
                                      [inits[i] for i in dict.fromkeys(inputs)])
            single = helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
            values = ReferenceEvaluator(single).run(None, {})
            for name, value in zip([o for o in node.output if o], values):
                inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
                model.graph.initializer.append(inits[name])
            folded += 1
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    remove_unused(model)
    return folded


def strip_metadata(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = ""


def dedupe_initializers(model: onnx.ModelProto) -> int:
    """Merge byte-identical initializers (same dtype, shape and data) into one."""
    seen, rename, keep = {}, {}, []
    for init in model.graph.initializer:
        key = (init.data_type, tuple(init.dims),
               hashlib.sha256(numpy_helper.to_array(init).tobytes()).hexdigest())
        if key in seen:
            rename[init.name] = seen[key]
        else:
            seen[key] = init.name
            keep.append(init)
    if rename:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        _rename_inputs(model, rename)
    return len(rename)


def _rename_inputs(model, rename: dict) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for out in model.graph.output:
        if out.name in rename:  # never happens for our graphs; kept for safety
            raise ExportError(f"cannot rename graph output {out.name}")


def name_msda_constants(model: onnx.ModelProto) -> None:
    """Give the (shared) int32 index constants of the MSDA nodes readable names."""
    inits = _initializers(model)
    rename = {}
    for node in model.graph.node:
        if node.op_type == msda.OP_TYPE and node.domain == msda.DOMAIN:
            for idx, want in ((1, SPATIAL_SHAPES_NAME), (2, LEVEL_START_NAME)):
                name = node.input[idx]
                if name in inits and name not in rename and name != want and want not in inits:
                    rename[name] = want
    for old, new in rename.items():
        inits[old].name = new
    _rename_inputs(model, rename)


def remove_unused(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    produced |= {i.name for i in model.graph.initializer}
    vi = [v for v in model.graph.value_info if v.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(vi)


def _trailing_split(shape, k_cols: int) -> int | None:
    """How many trailing dims of a Reshape target `shape` split the last axis of `k_cols` (None: not a split)."""
    prod = 1
    for n in range(1, len(shape) + 1):
        d = int(shape[-n])
        if d <= 0:
            return None
        prod *= d
        if prod == k_cols:
            return n
        if prod > k_cols:
            return None
    return None


# the name (prefix) of the biases fold_affine_into_linear writes: they carry sampling locations (reference point +
# offset / size, in [0, 1]), which store_weights_float16 leaves in float32
LOCATION_BIAS = "sampling_location_bias"


def fold_affine_into_linear(model: onnx.ModelProto) -> int:
    """Fold a constant elementwise step after a linear layer into the layer's weights and bias.

    The pattern (Deformable-DETR's sampling offsets: ``(x @ W + b).view(..., M, L, P, 2) / normalizer +
    reference_points``)::

        Y = Reshape(Add(MatMul(X, W), b), shape)  then  Div / Mul / Add / Sub (Y, C)

    with W, b, shape and C constants, `shape` splitting the last axis into trailing dims, becomes
    ``Reshape(Add(MatMul(X, W'), b'), shape)``: a Div / Mul by a C that is constant along the leading dims
    scales W's columns and b; an Add / Sub of C goes into b (which becomes a [..., rows, K] matrix when C varies
    along static leading axes, e.g. the encoder's reference points, and broadcasts along the frames T). One broadcast elementwise node less
    per match, and the broadcasts that cost most in ONNX Runtime are gone. Returns how many were folded.
    """
    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = collections.Counter(i for n in model.graph.node for i in n.input)
    outputs = {o.name for o in model.graph.output}
    dims = _static_shapes(model)
    fresh = unique_namer(model)
    drop, folded = set(), 0

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def add_init(array, base) -> str:
        name = fresh(base)
        inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        model.graph.initializer.append(inits[name])
        return name

    nodes = list(model.graph.node)  # dropped by position: protobuf's wrappers (and their id()s) are not stable
    for index, node in enumerate(nodes):
        if node.op_type not in ("Div", "Mul", "Add", "Sub") or node.domain not in ("", "ai.onnx"):
            continue
        for y_idx in (0, 1) if node.op_type in ("Mul", "Add") else (0,):  # C / Y, C - Y: not affine alike
            y, c = node.input[y_idx], const(node.input[1 - y_idx])
            reshape = producer.get(y)
            if reshape is None or c is None or reshape.op_type != "Reshape" or consumers[y] != 1 or y in outputs:
                continue
            add, shape = producer.get(reshape.input[0]), const(reshape.input[1])
            if add is None or shape is None or add.op_type != "Add" or consumers[add.output[0]] != 1:
                continue
            mm = None
            for a_idx in (0, 1):
                cand, b = producer.get(add.input[a_idx]), const(add.input[1 - a_idx])
                if cand is not None and cand.op_type == "MatMul" and b is not None and consumers[cand.output[0]] == 1:
                    mm, bias = cand, b
            if mm is None:
                continue
            w = const(mm.input[1])
            if w is None or w.ndim != 2 or c.dtype != w.dtype or bias.shape not in ((w.shape[1],), (1, w.shape[1])):
                continue
            k_cols = w.shape[1]
            n_trail = _trailing_split(shape, k_cols)
            if n_trail is None or c.ndim > len(shape):
                continue
            c_full = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
            lead_c, trail_c = c_full.shape[:-n_trail], c_full.shape[-n_trail:]
            trail_shape = tuple(int(d) for d in shape[-n_trail:])
            if any(a not in (1, b) for a, b in zip(trail_c, trail_shape)):
                continue
            if all(d == 1 for d in lead_c):  # constant along the rows: one value per column
                per_col = np.broadcast_to(c_full.reshape(trail_c), trail_shape).reshape(k_cols)
                if node.op_type == "Div":
                    if not np.all(per_col != 0):
                        continue
                    mm.input[1] = add_init(w / per_col, mm.input[1] + "_folded")
                    new_b = bias.reshape(k_cols) / per_col
                elif node.op_type == "Mul":
                    mm.input[1] = add_init(w * per_col, mm.input[1] + "_folded")
                    new_b = bias.reshape(k_cols) * per_col
                else:
                    new_b = bias.reshape(k_cols) + (per_col if node.op_type == "Add" else -per_col)
            elif node.op_type in ("Add", "Sub"):  # one offset per row and column: the bias becomes a matrix
                # the Reshape keeps the linear layer's leading axes and splits only its last one; C varies
                # along static ones (it is 1 along a dynamic axis, the frames T: the matrix broadcasts there)
                out_dims = dims.get(mm.output[0])
                lead_shape = tuple(int(d) for d in shape[:-n_trail])
                if (out_dims is None or out_dims[-1] != k_cols or len(out_dims) - 1 != len(lead_shape)
                        or any(a != 1 and not (o and o == d == a) for a, o, d in zip(lead_c, out_dims, lead_shape))):
                    continue
                offset = np.broadcast_to(c_full, lead_c + trail_shape).reshape(tuple(lead_c) + (k_cols,))
                new_b = bias.reshape(k_cols) + (offset if node.op_type == "Add" else -offset)
            else:
                continue
            add.input[:] = [mm.output[0], add_init(new_b.astype(w.dtype), LOCATION_BIAS)]
            # the elementwise node goes: the Reshape now writes its output
            reshape.output[0] = node.output[0]
            producer[node.output[0]] = reshape
            drop.add(index)
            folded += 1
            break
    if drop:
        keep = [n for i, n in enumerate(nodes) if i not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        remove_unused(model)
    return folded


def transposes_to_channels_last(model: onnx.ModelProto) -> int:
    """Move the token <-> feature-map conversions of vision transformers to channels-last order.

    PVT-style blocks turn tokens into a map and back with ``x.transpose(1, 2).reshape(B, C, H, W)`` and
    ``y.reshape(B, C, H * W).transpose(1, 2)``::

        [B,N,C] -Transpose(0,2,1)-> [B,C,N] -Reshape-> [B,C,H,W]
            becomes  [B,N,C] -Reshape-> [B,H,W,C] -Transpose(0,3,1,2)-> [B,C,H,W]
        [B,C,H,W] -Reshape-> [B,C,N] -Transpose(0,2,1)-> [B,N,C]
            becomes  [B,C,H,W] -Transpose(0,2,3,1)-> [B,H,W,C] -Reshape-> [B,N,C]

    The same values, the same number of nodes; the 4-D channels-first <-> channels-last Transposes now sit
    right beside the convolutions, where a CPU runtime that keeps maps channels-last (OpenVINO) cancels them
    against its own layout reorders even when Q/DQ nodes stand between (the int8 graphs: 2.0 -> 1.1 ms of
    Transposes per frame at 128x128). Only static N, C, H, W qualify (the leading axis may be dynamic).
    Returns how many pairs were rewritten."""
    inits = _initializers(model)
    dims = _static_shapes(model)
    fresh = unique_namer(model)
    nodes = list(model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}  # `nodes` holds every wrapper alive: the ids are stable
    producer = {o: n for n in nodes for o in n.output}
    consumers = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in model.graph.output}
    replace = {}

    def shape_const(node):
        name = node.input[1] if len(node.input) > 1 else ""
        return [int(v) for v in numpy_helper.to_array(inits[name])] if name in inits else None

    def static(shape, rank):
        return shape is not None and len(shape) == rank and None not in shape[1:]

    def new_shape(values) -> str:
        name = fresh("channels_last_shape")
        model.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    for t in nodes:
        if t.op_type != "Transpose" or list(_attr(t, "perm", [])) != [0, 2, 1] or position[id(t)] in replace:
            continue
        x_dims, after = dims.get(t.input[0]), consumers[t.output[0]]
        if static(x_dims, 3) and len(after) == 1 and after[0].op_type == "Reshape" and t.output[0] not in outputs:
            r, target = after[0], shape_const(after[0])
            _, n_tok, c = x_dims
            if (target and len(target) == 4 and target[0] in (-1, 0) and target[1] == c
                    and target[2] * target[3] == n_tok and position[id(r)] not in replace):
                mid = fresh(t.output[0] + "_channels_last")
                replace[position[id(t)]] = helper.make_node(
                    "Reshape", [t.input[0], new_shape([target[0], target[2], target[3], c])], [mid],
                    name=fresh(r.name + "_channels_last"))
                replace[position[id(r)]] = helper.make_node("Transpose", [mid], [r.output[0]],
                                                            name=fresh(t.name + "_to_nchw"), perm=[0, 3, 1, 2])
                continue
        r = producer.get(t.input[0])
        if r is None or r.op_type != "Reshape" or len(consumers[r.output[0]]) != 1 or r.output[0] in outputs:
            continue
        y_dims, target = dims.get(r.input[0]), shape_const(r)
        if (static(y_dims, 4) and target and len(target) == 3 and target[0] in (-1, 0) and target[1] == y_dims[1]
                and target[2] == y_dims[2] * y_dims[3] and position[id(r)] not in replace):
            mid = fresh(r.output[0] + "_channels_last")
            replace[position[id(r)]] = helper.make_node("Transpose", [r.input[0]], [mid],
                                                        name=fresh(r.name + "_to_nhwc"), perm=[0, 2, 3, 1])
            replace[position[id(t)]] = helper.make_node(
                "Reshape", [mid, new_shape([target[0], target[2], target[1]])], [t.output[0]],
                name=fresh(t.name + "_tokens"))
    if replace:
        rewritten = [replace.get(i, n) for i, n in enumerate(nodes)]
        del model.graph.node[:]
        model.graph.node.extend(rewritten)
        remove_unused(model)
    return len(replace) // 2


def simplify(model: onnx.ModelProto, stats: dict | None = None) -> onnx.ModelProto:
    """The passes above, in order; `stats` (a dict), if given, receives what each one folded or merged."""
    counts = {"constants_folded": fold_constants(model),
              "affine_folded_into_linear": fold_affine_into_linear(model),
              "transposes_to_channels_last": transposes_to_channels_last(model)}
    strip_metadata(model)
    counts["initializers_merged"] = dedupe_initializers(model)
    if stats is not None:
        stats.update(counts)
    name_msda_constants(model)
    remove_unused(model)
    return model


def store_weights_float16(model: onnx.ModelProto, min_elements: int = 64, lossy_min_elements: int = 4096) -> int:
    """Store the float32 weights as float16 and compute in float32: every float32 initializer of at least
    `min_elements` values whose float16 copy is finite becomes a float16 initializer and a ``Cast(to=FLOAT)``
    node that produces the original name at the top of the graph. The file is about half the size; runtimes
    fold the casts when they load the graph (ONNX Runtime's constant folding, TensorRT's builder), so the speed
    is float32's. The values change by float16's rounding (exact for weights that came from a float16
    checkpoint); the exporter's parity check measures the rest. What float16 cannot hold exactly stays float32
    in two cases, each measured on the shipped model (max |logit change| with everything else in float16):
    sampling-location biases (`LOCATION_BIAS`: float16 moves a position in [0, 1] by up to 2.4e-4; 0.035 in
    float16, 0.001 in float32) and tensors under `lossy_min_elements` values (constants the exporter derived,
    such as the null token's attention output; 8e-4 -> 2e-4), where the bytes are few anyway.
    Returns how many initializers were converted.
    """
    fresh = unique_namer(model)
    casts, keep, converted = [], [], 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements \
                or init.name.startswith(LOCATION_BIAS):
            keep.append(init)
            continue
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        lossless = np.array_equal(half.astype(np.float32), value)
        if not np.all(np.isfinite(half)) or (not lossless and value.size < lossy_min_elements):
            keep.append(init)
            continue
        stored = fresh(init.name + "_f16")
        keep.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=fresh("cast_" + init.name)))
        converted += 1
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return converted


# ----------------------------------------------------------------------------------- opsets
_SPLIT_PLACEHOLDER = "autr.opset_tmp"


def to_opset17(model: onnx.ModelProto) -> onnx.ModelProto:
    """Down-convert an opset-18 graph to opset 17 (Split handled here, the rest by onnx)."""
    from onnx import version_converter

    if opset_of(model) == 17:
        return model
    shapes = _static_shapes(model)
    for node in model.graph.node:
        if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
            n_out = _attr(node, "num_outputs")
            if n_out is not None and (len(node.input) < 2 or not node.input[1]):
                shape = shapes.get(node.input[0])
                axis = _attr(node, "axis", 0)
                dim = None if shape is None else shape[axis % len(shape)]
                if dim is None:
                    raise ExportError(f"cannot write opset 17: Split {node.name} splits a dynamic axis")
                chunk = -(-dim // n_out)
                sizes = [min(chunk, dim - k * chunk) for k in range(n_out)]
                const = f"{node.name or node.output[0]}_sizes"
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, np.int64), const))
                del node.input[1:]
                node.input.append(const)
            keep = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(keep)
            node.domain = _SPLIT_PLACEHOLDER  # set aside: onnx has no Split 18 -> 17 adapter
    model.opset_import.append(helper.make_opsetid(_SPLIT_PLACEHOLDER, 1))
    try:
        converted = version_converter.convert_version(model, 17)
    except Exception as exc:  # the converter raises RuntimeError / assertion text
        raise ExportError(f"cannot convert the graph to opset 17 ({str(exc).splitlines()[0]}); "
                          "use --opset 18 or newer") from None
    for node in converted.graph.node:
        if node.domain == _SPLIT_PLACEHOLDER:
            node.domain = ""
    keep = [o for o in converted.opset_import if o.domain != _SPLIT_PLACEHOLDER]
    del converted.opset_import[:]
    converted.opset_import.extend(keep)
    return converted


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The graph at `opset`: unchanged, down to 17 (`to_opset17`) or up with onnx's converter."""
    from onnx import version_converter

    current = opset_of(model)
    if opset == current:
        return model
    if opset == 17 and current == 18:
        return to_opset17(model)
    if opset < current:
        raise ExportError(f"cannot convert the graph from opset {current} down to {opset}")
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise ExportError(f"cannot convert the graph to opset {opset} ({str(exc).splitlines()[0]})") from None


def _static_shapes(model) -> dict:
    """name -> list of dims (int, or None where dynamic) from shape inference."""
    msda.register_onnx_schema()
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


# ----------------------------------------------------------------------------------- portable
def msda_nodes(model: onnx.ModelProto) -> list:
    return [n for n in model.graph.node if n.op_type == msda.OP_TYPE and n.domain == msda.DOMAIN]


def decompose_msda(plugin: onnx.ModelProto) -> onnx.ModelProto:
    """The portable graph: each AutrMSDeformAttn node as GridSample + standard ops.

    Per node, with N dynamic and everything else static (value [N,S,M,D], locations
    [N,Lq,M,L,P,2], weights [N,Lq,M,L,P]):
        value -> Transpose [N,M,D,S] -> Reshape [N*M,D,S] -> Split per level -> Reshape [N*M,D,H,W]
        locations*2-1 -> Transpose [N,M,L,P,Lq,2] -> Reshape [N*M,L,P,Lq,2] -> Gather level l
        weights -> Transpose [N,M,L,P,Lq] -> Reshape [N*M,L,1,P,Lq] -> Gather level l
        per level: GridSample(bilinear, zeros, align_corners=0) [N*M,D,P,Lq] * weights
        -> Sum over levels -> ReduceSum over P [N*M,D,Lq] -> Reshape [N,M*D,Lq] -> Transpose [N,Lq,M*D]

    The layout is chosen for CPU runtimes: the points P are an outer axis of the sampled values, so the one
    reduction runs over whole contiguous rows of Lq, and the levels are summed elementwise instead of
    concatenated along a short last axis (OpenVINO runs such a Concat with its reference kernel, 1 ms per
    node at 128x128). Each step measured side by side, OpenVINO int8 at T=1 on the small preset, medians of
    6-8 interleaved rounds (the host's speed moved between the three runs): no Concat, a reduction per level
    24.4 -> 22.1 ms; the points on an outer axis 21.4 -> 19.7 ms; one reduction after the Sum 14.6 -> 13.8 ms.
    """
    model = onnx.ModelProto()
    model.CopyFrom(plugin)
    opset = opset_of(model)
    mode = "linear" if opset >= 20 else "bilinear"
    shapes = _static_shapes(model)
    inits = _initializers(model)
    fresh = unique_namer(model)
    consts = {}

    def const(value, dtype) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in consts:
            name = fresh("msda_const")
            model.graph.initializer.append(numpy_helper.from_array(arr, name))
            consts[key] = name
        return consts[key]

    new_nodes = []
    for node in model.graph.node:
        if not (node.op_type == msda.OP_TYPE and node.domain == msda.DOMAIN):
            new_nodes.append(node)
            continue
        value, ss_name, lsi_name, loc, weights = node.input
        if ss_name not in inits:
            raise ExportError(f"{node.name}: spatial_shapes must be a constant to decompose MSDA")
        level_shapes = numpy_helper.to_array(inits[ss_name]).reshape(-1, 2).tolist()
        vshape, lshape = shapes.get(value), shapes.get(loc)
        if vshape is None or lshape is None or None in vshape[1:] or None in lshape[1:]:
            raise ExportError(f"{node.name}: MSDA input shapes must be static except N "
                              f"(value {vshape}, locations {lshape})")
        _, s, m, d = vshape
        _, lq, _, n_levels, p, _ = lshape
        if len(level_shapes) != n_levels or sum(h * w for h, w in level_shapes) != s:
            raise ExportError(f"{node.name}: spatial shapes {level_shapes} do not match value S={s}, L={n_levels}")
        base = fresh(node.name or "msda")

        def mk(op, inputs, n_out=1, **attrs):
            outs = [fresh(f"{base}/{op}") for _ in range(n_out)]
            new_nodes.append(helper.make_node(op, inputs, outs, name=fresh(f"{base}/{op}"), **attrs))
            return outs if n_out > 1 else outs[0]

        v = mk("Transpose", [value], perm=[0, 2, 3, 1])
        v = mk("Reshape", [v, const([-1, d, s], np.int64)])
        if n_levels > 1:
            parts = mk("Split", [v, const([h * w for h, w in level_shapes], np.int64)], n_out=n_levels, axis=2)
        else:
            parts = [v]
        g = mk("Mul", [loc, const(2.0, np.float32)])
        g = mk("Sub", [g, const(1.0, np.float32)])
        g = mk("Transpose", [g], perm=[0, 2, 3, 4, 1, 5])
        g = mk("Reshape", [g, const([-1, n_levels, p, lq, 2], np.int64)])
        wt = mk("Transpose", [weights], perm=[0, 2, 3, 4, 1])
        wt = mk("Reshape", [wt, const([-1, n_levels, 1, p, lq], np.int64)])
        weighted = []
        for lvl, (h, w) in enumerate(level_shapes):
            img = mk("Reshape", [parts[lvl], const([-1, d, h, w], np.int64)])
            grid = mk("Gather", [g, const(lvl, np.int64)], axis=1)
            sampled = mk("GridSample", [img, grid], align_corners=0, mode=mode, padding_mode="zeros")
            weighted.append(mk("Mul", [sampled, mk("Gather", [wt, const(lvl, np.int64)], axis=1)]))
        total = mk("Sum", weighted) if n_levels > 1 else weighted[0]
        red = mk("ReduceSum", [total, const([2], np.int64)], keepdims=0)
        out = mk("Reshape", [red, const([-1, m * d, lq], np.int64)])
        new_nodes.append(helper.make_node("Transpose", [out], [node.output[0]], name=fresh(f"{base}/Transpose"),
                                          perm=[0, 2, 1]))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    keep = [o for o in model.opset_import if o.domain != msda.DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    remove_unused(model)
    return model


# ----------------------------------------------------------------------------------- checks
def check(model: onnx.ModelProto, what: str) -> None:
    """onnx's full check (checker + strict shape inference with type checks)."""
    msda.register_onnx_schema()
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ExportError(f"the {what} graph fails onnx's checker: {str(exc).strip().splitlines()[0]}") from None


def refresh_value_info(model: onnx.ModelProto, keep: bool = True) -> onnx.ModelProto:
    """Run shape inference again. `keep=False` first drops the old value_info (after passes that
    change types); `keep=True` keeps the exporter's entries, which cover ops whose onnx inference
    is incomplete (GroupNormalization-21 outputs, for one)."""
    msda.register_onnx_schema()
    if not keep:
        del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


__all__ = ["simplify", "to_opset17", "convert_opset", "decompose_msda", "check", "op_counts", "msda_nodes",
           "refresh_value_info", "opset_of"]
