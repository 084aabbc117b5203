"""float32 -> float16 ONNX conversion for TensorRT's strongly-typed networks.

A strongly-typed TensorRT network computes every tensor in exactly the type the ONNX graph gives
it, so the precision plan has to be in the graph:

* graph inputs and outputs stay float32 (`frames`, `log_mel` are cast once at the entry, `masks`,
  `scores` are float32), so the runtime feeds the same arrays to every graph;
* float16 everywhere else, except the nodes where float16 loses too much: `Softmax`, every
  normalisation (`LayerNormalization`, `InstanceNormalization` of the GroupNorms, ...), and the
  final logits: the mask head and score head and everything after them (query selection and the
  upsampling of the mask logits), named by `keep_fp32` (output tensor names) — the exporter takes
  them from the torch module scopes (`mask_head`, `score_head`) before it strips the metadata;
* weights feeding float16 nodes are stored as float16; those feeding float32 nodes stay float32.

Which input of a node must change type is read from the op's ONNX schema (its type constraints),
so fixed-type inputs such as Resize's `scales` or Range's bounds stay float32. Casts are inserted
only where the precision actually changes; constants are converted in place, never cast at run time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autr.export import msda
from autr.export.graph import unique_namer

FP32_OPS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "BatchNormalization", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "RMSNormalization", "Exp", "Log", "Pow",
})
# Data movement: computes nothing, so it keeps the precision it is given (no cast in front of it).
FOLLOW_OPS = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "GatherElements",
    "GatherND", "Split", "Expand", "Tile", "Identity", "Concat", "Pad", "DepthToSpace", "SpaceToDepth",
})
SHAPE_OPS = frozenset({"Shape", "Size"})  # read only the shape: never cast their input
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
_TYPE_STR = {TensorProto.FLOAT: "tensor(float)", TensorProto.FLOAT16: "tensor(float16)"}


def _schema(node, opset_by_domain):
    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    version = opset_by_domain.get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _param(params, i):
    if i < len(params):
        return params[i]
    last = params[-1] if params else None
    if last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return last
    return None


def convert_float16(model: onnx.ModelProto, keep_fp32: set | frozenset = frozenset()) -> onnx.ModelProto:
    """A float16 copy of `model` (see the module docstring). `keep_fp32`: output tensor names of
    nodes that must compute in float32 on top of `FP32_OPS`."""
    msda.register_onnx_schema()
    src = onnx.ModelProto()
    src.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(src)
    orig_type = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        orig_type[v.name] = v.type.tensor_type.elem_type
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in src.opset_import}

    inits = {i.name: i for i in src.graph.initializer}
    const_nodes = {}  # output name -> Constant node (float tensors converted on demand)
    dtype = {i.name: i.type.tensor_type.elem_type for i in src.graph.input}
    for name, init in inits.items():
        dtype[name] = init.data_type
    new_inits = {}  # (name, type) -> name of a converted copy
    casts = {}  # (name, type) -> name of the Cast output
    fresh = unique_namer(src)
    nodes_out = []

    def as_type(name: str, want: int) -> str:
        """`name` in float type `want`: the tensor itself, a converted constant, or a Cast."""
        have = dtype.get(name)
        if have == want or have not in FLOATS:
            return name
        if (name, want) in new_inits:
            return new_inits[(name, want)]
        if name in inits or name in const_nodes:
            arr = numpy_helper.to_array(inits[name]) if name in inits else numpy_helper.to_array(
                helper.get_attribute_value(const_nodes[name].attribute[0]))
            np_type = np.float16 if want == TensorProto.FLOAT16 else np.float32
            if want == TensorProto.FLOAT16:
                arr = np.clip(arr, -65504, 65504)
            new = fresh(f"{name}__{'fp16' if want == TensorProto.FLOAT16 else 'fp32'}")
            src.graph.initializer.append(numpy_helper.from_array(arr.astype(np_type), new))
            dtype[new] = want
            new_inits[(name, want)] = new
            return new
        if (name, want) not in casts:
            out = fresh(f"{name}__{'fp16' if want == TensorProto.FLOAT16 else 'fp32'}")
            nodes_out.append(helper.make_node("Cast", [name], [out], name=fresh(f"Cast_{out}"), to=want))
            dtype[out] = want
            casts[(name, want)] = out
        return casts[(name, want)]

    for node in src.graph.node:
        want = TensorProto.FLOAT if (node.op_type in FP32_OPS or any(o in keep_fp32 for o in node.output)) \
            else TensorProto.FLOAT16
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attribute[0]
            if attr.name == "value" and attr.t.data_type in FLOATS:
                # converted lazily by as_type() for each consumer that needs the other type
                const_nodes[node.output[0]] = node
                inits[node.output[0]] = attr.t
            nodes_out.append(node)  # dropped at the end if every consumer took a converted copy
            dtype[node.output[0]] = attr.t.data_type if attr.name == "value" else orig_type.get(node.output[0], 0)
            continue
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            to = helper.get_attribute_value(node.attribute[0])
            if to in FLOATS:
                to = want
                node.attribute[0].i = want
            dtype[node.output[0]] = to
            nodes_out.append(node)
            continue
        if node.op_type in ("ConstantOfShape",) and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in FLOATS and a.t.data_type != want:
                    arr = numpy_helper.to_array(a.t).astype(np.float16 if want == TensorProto.FLOAT16 else np.float32)
                    a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
            dtype[node.output[0]] = next((a.t.data_type for a in node.attribute if a.name == "value"),
                                         TensorProto.FLOAT)
            nodes_out.append(node)
            continue

        schema = _schema(node, opsets)
        if schema is None:
            raise ValueError(f"float16 conversion: no ONNX schema for {node.domain}::{node.op_type}")
        allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
        if node.op_type in SHAPE_OPS:
            allowed = {}
        elif node.op_type in FOLLOW_OPS:
            floats = {dtype.get(name) for name in node.input if name and dtype.get(name) in FLOATS
                      and name not in inits}
            if len(floats) == 1:
                want = floats.pop()
        binding = {}
        for i, name in enumerate(node.input):
            p = _param(schema.inputs, i)
            if not name or p is None or p.type_str not in allowed:
                continue
            have = dtype.get(name)
            if have in FLOATS and p.type_str not in binding:
                if _TYPE_STR[want] in allowed[p.type_str]:
                    binding[p.type_str] = want
                elif _TYPE_STR[TensorProto.FLOAT] in allowed[p.type_str]:
                    binding[p.type_str] = TensorProto.FLOAT
        for i, name in enumerate(node.input):
            p = _param(schema.inputs, i)
            if not name or p is None:
                continue
            need = binding.get(p.type_str)
            if need is None and p.type_str in ("tensor(float)", "tensor(float16)"):
                need = TensorProto.FLOAT if p.type_str == "tensor(float)" else TensorProto.FLOAT16
            if need is not None and dtype.get(name) in FLOATS and dtype.get(name) != need:
                node.input[i] = as_type(name, need)
        for i, out in enumerate(node.output):
            if not out:
                continue
            p = _param(schema.outputs, i)
            if p is not None and p.type_str in binding:
                dtype[out] = binding[p.type_str]
            elif p is not None and p.type_str.startswith("tensor("):
                dtype[out] = helper.np_dtype_to_tensor_dtype(np.dtype(_np_name(p.type_str)))
            else:
                dtype[out] = orig_type.get(out, TensorProto.UNDEFINED)
        nodes_out.append(node)

    # graph outputs stay float32
    rename = {}
    for out in src.graph.output:
        if dtype.get(out.name) == TensorProto.FLOAT16:
            inner = fresh(f"{out.name}__fp16")
            rename[out.name] = inner
    if rename:
        for node in nodes_out:
            for i, o in enumerate(node.output):
                if o in rename:
                    node.output[i] = rename[o]
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        for out, inner in rename.items():
            nodes_out.append(helper.make_node("Cast", [inner], [out], name=fresh(f"Cast_{out}"),
                                              to=TensorProto.FLOAT))

    consumed = {i for n in nodes_out for i in n.input} | {o.name for o in src.graph.output}
    nodes_out = [n for n in nodes_out if not (n.op_type == "Constant" and n.output[0] not in consumed)]
    del src.graph.node[:]
    src.graph.node.extend(nodes_out)
    # drop float32 weights no node reads any more (their float16 copies replaced them)
    used = {i for n in src.graph.node for i in n.input}
    keep = [i for i in src.graph.initializer if i.name in used]
    del src.graph.initializer[:]
    src.graph.initializer.extend(keep)
    del src.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(src, data_prop=True)


def _np_name(type_str: str) -> str:
    inner = type_str[len("tensor("):-1]
    return {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}.get(inner, inner)


def float_types(model: onnx.ModelProto) -> dict:
    """Count of float16 / float32 tensors (initializers and node outputs) in a graph."""
    counts = {"float16": 0, "float32": 0}
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in inferred.graph.value_info:
        t = v.type.tensor_type.elem_type
        if t == TensorProto.FLOAT16:
            counts["float16"] += 1
        elif t == TensorProto.FLOAT:
            counts["float32"] += 1
    for i in model.graph.initializer:
        if i.data_type == TensorProto.FLOAT16:
            counts["float16"] += 1
        elif i.data_type == TensorProto.FLOAT:
            counts["float32"] += 1
    return counts
