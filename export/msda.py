"""MSDA at the PyTorch/ONNX boundary: the `AutrMSDeformAttn` node of the plugin graph.

Three pieces, all keyed to DESIGN.md's MSDA contract:

* `torch.ops.autr_export.ms_deform_attn` — a `torch.library` custom op that the exporter keeps as one
  node; its eager implementation is `autr.ops.ms_deform_attn_reference`, so tracing sees the real
  shapes. The spatial shapes are static per export and travel as an `int[]` argument.
* `translate_msda` — the ONNX translation of that op for `torch.onnx.export(dynamo=True,
  custom_translation_table=...)`: one `autr::AutrMSDeformAttn` node, attribute
  `plugin_version="1"`, inputs (value, spatial_shapes, level_start_index, sampling_locations,
  attention_weights) with the two index inputs as int32 constants.
* `register_onnx_schema` — an `onnx.defs` schema (types + a shape-inference function) for the node,
  so `onnx.checker.check_model(full_check=True)` and `onnx.shape_inference` understand it.

`swap_msda(shapes)` is the context manager that routes the model's MSDA calls into the custom op
while the exporter traces it.
"""
from __future__ import annotations

import contextlib

import numpy as np

OP_TYPE = "AutrMSDeformAttn"
DOMAIN = "autr"
DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"
INPUT_NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")


def level_start_index(shapes) -> list[int]:
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += int(h) * int(w)
    return starts


# --------------------------------------------------------------------------------------- torch
_TORCH_OP = None


def torch_op():
    """The `autr_export::ms_deform_attn` custom op (registered on first use)."""
    global _TORCH_OP
    if _TORCH_OP is not None:
        return _TORCH_OP
    import torch

    from autr.ops import ms_deform_attn_reference

    @torch.library.custom_op(
        "autr_export::ms_deform_attn", mutates_args=(),
        schema="(Tensor value, Tensor sampling_locations, Tensor attention_weights, int[] spatial_shapes) -> Tensor")
    def ms_deform_attn(value, sampling_locations, attention_weights, spatial_shapes):
        shapes = torch.tensor(spatial_shapes, dtype=torch.long).view(-1, 2)
        starts = torch.tensor(level_start_index(shapes.tolist()), dtype=torch.long)
        return ms_deform_attn_reference(value, shapes, starts, sampling_locations, attention_weights)

    @ms_deform_attn.register_fake
    def _(value, sampling_locations, attention_weights, spatial_shapes):
        n, _, m, d = value.shape
        return value.new_empty((n, sampling_locations.shape[1], m * d))

    _TORCH_OP = ms_deform_attn
    return _TORCH_OP


@contextlib.contextmanager
def record_msda():
    """Run the model eagerly and record every MSDA call: yields a list of dicts
    (spatial_shapes, level_start_index, value shape, locations shape)."""
    import autr.transformer

    calls = []
    original = autr.transformer.ms_deform_attn

    def recorder(value, spatial_shapes, level_start, sampling_locations, attention_weights):
        calls.append({"spatial_shapes": [tuple(map(int, hw)) for hw in spatial_shapes.tolist()],
                      "level_start_index": [int(i) for i in level_start.tolist()],
                      "value": tuple(value.shape), "sampling_locations": tuple(sampling_locations.shape)})
        return original(value, spatial_shapes, level_start, sampling_locations, attention_weights)

    with _patched(recorder):
        yield calls


@contextlib.contextmanager
def swap_msda(shapes):
    """Route every MSDA call of the model into the custom op, with static `shapes` [(H, W), ...]."""
    op = torch_op()
    flat = [int(v) for hw in shapes for v in hw]

    def exported(value, spatial_shapes, level_start, sampling_locations, attention_weights):
        return op(value, sampling_locations, attention_weights, flat)

    with _patched(exported):
        yield


@contextlib.contextmanager
def _patched(fn):
    # The model's attention module looks `ms_deform_attn` up in autr.transformer at call time;
    # autr.ops is patched too, for any caller that goes through the module attribute.
    import autr.ops
    import autr.transformer

    saved = autr.transformer.ms_deform_attn, autr.ops.ms_deform_attn
    autr.transformer.ms_deform_attn = fn
    autr.ops.ms_deform_attn = fn
    try:
        yield
    finally:
        autr.transformer.ms_deform_attn, autr.ops.ms_deform_attn = saved


# --------------------------------------------------------------------------------------- ONNX
def translate_msda(value, sampling_locations, attention_weights, spatial_shapes):
    """onnxscript translation of `autr_export::ms_deform_attn`: one AutrMSDeformAttn node."""
    import onnx_ir as ir
    from onnxscript import opset18 as op
    from onnxscript.values import Opset

    shapes = np.asarray(spatial_shapes, dtype=np.int32).reshape(-1, 2)
    starts = np.asarray(level_start_index(shapes.tolist()), dtype=np.int32)
    ss = op.Constant(value=ir.tensor(shapes, name="msda_spatial_shapes"))
    lsi = op.Constant(value=ir.tensor(starts, name="msda_level_start_index"))
    autr_ops = Opset(DOMAIN, DOMAIN_VERSION)
    return autr_ops.AutrMSDeformAttn(value, ss, lsi, sampling_locations, attention_weights,
                                     plugin_version=PLUGIN_VERSION)


_SCHEMA_REGISTERED = False


def _infer_shape(ctx) -> None:
    import onnx

    value_t = ctx.get_input_type(0)
    loc_t = ctx.get_input_type(3)
    if value_t is None or loc_t is None:  # upstream types unknown: nothing to infer
        return
    out = onnx.TypeProto()
    out.tensor_type.elem_type = value_t.tensor_type.elem_type
    if value_t.tensor_type.HasField("shape") and loc_t.tensor_type.HasField("shape"):
        vdims, ldims = value_t.tensor_type.shape.dim, loc_t.tensor_type.shape.dim
        if len(vdims) != 4 or len(ldims) != 6:
            raise onnx.shape_inference.InferenceError(
                f"{OP_TYPE}: value must be rank 4 and sampling_locations rank 6, got {len(vdims)} / {len(ldims)}")
        dims = out.tensor_type.shape.dim
        dims.add().CopyFrom(vdims[0])
        dims.add().CopyFrom(ldims[1])
        md = dims.add()
        if vdims[2].HasField("dim_value") and vdims[3].HasField("dim_value"):
            md.dim_value = vdims[2].dim_value * vdims[3].dim_value
    ctx.set_output_type(0, out)


def register_onnx_schema() -> None:
    """Teach onnx (checker + shape inference) the `autr::AutrMSDeformAttn` v1 node. Idempotent."""
    global _SCHEMA_REGISTERED
    if _SCHEMA_REGISTERED:
        return
    import onnx.defs as defs

    if not defs.has(OP_TYPE, DOMAIN_VERSION, DOMAIN):
        param = defs.OpSchema.FormalParameter
        schema = defs.OpSchema(
            OP_TYPE, DOMAIN, DOMAIN_VERSION,
            "Multi-scale deformable attention (Deformable-DETR semantics, see DESIGN.md); "
            "implemented by the AuTR TensorRT plugin (name AutrMSDeformAttn, version 1).",
            inputs=[param("value", "T", "[N, S, M, D]"),
                    param("spatial_shapes", "tensor(int32)", "[L, 2] (H, W) per level"),
                    param("level_start_index", "tensor(int32)", "[L] offset of each level in S"),
                    param("sampling_locations", "T", "[N, Lq, M, L, P, 2] (x, y) in [0, 1]"),
                    param("attention_weights", "T", "[N, Lq, M, L, P]")],
            outputs=[param("output", "T", "[N, Lq, M*D]")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16")],
            attributes=[defs.OpSchema.Attribute("plugin_version", defs.OpSchema.AttrType.STRING,
                                                "TensorRT plugin version; '1'", required=True)],
        )
        schema.set_type_and_shape_inference_function(_infer_shape)
        defs.register_schema(schema)
    _SCHEMA_REGISTERED = True
