"""Graph passes of the export that change arithmetic: the folded graph computes what the original did."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from autr.export import graph  # noqa: E402

ROWS, D, M, L, P = 12, 16, 2, 3, 4
K = M * L * P * 2


def _offsets_graph(ops, rows=ROWS):
    """x [1, rows, D] -> (x @ W + b).view(1, rows, M, L, P, 2) then each (op, constant) in `ops` in turn."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((D, K)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, rows, M, L, P, 2], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["lin"]),
             helper.make_node("Reshape", ["lin", "shape"], ["y0"])]
    prev = "y0"
    for k, (op, const, const_first) in enumerate(ops):
        inits.append(numpy_helper.from_array(const.astype(np.float32), f"c{k}"))
        ins = [f"c{k}", prev] if const_first else [prev, f"c{k}"]
        nodes.append(helper.make_node(op, ins, [f"y{k + 1}"]))
        prev = f"y{k + 1}"
    nodes.append(helper.make_node("Identity", [prev], ["out"]))
    g = helper.make_graph(nodes, "offsets", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, D])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, rows, M, L, P, 2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _fold(model):
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    n = graph.fold_affine_into_linear(folded)
    onnx.checker.check_model(folded, full_check=True)
    return folded, n


def test_deformable_detr_offsets_fold_into_the_linear_layer():
    """(x W + b).view(...) / normalizer[l, xy] + reference_points[q, l, xy]: both steps disappear."""
    rng = np.random.default_rng(1)
    normalizer = rng.uniform(4, 32, (1, 1, 1, L, 1, 2))
    ref = rng.uniform(0, 1, (1, ROWS, 1, L, 1, 2))
    model = _offsets_graph([("Div", normalizer, False), ("Add", ref, True)])
    folded, n = _fold(model)
    assert n == 2
    assert [node.op_type for node in folded.graph.node] == ["MatMul", "Add", "Reshape", "Identity"]
    x = rng.standard_normal((1, ROWS, D)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["Mul", "Sub"])
def test_per_column_scale_and_offset_fold(op):
    rng = np.random.default_rng(2)
    c = rng.uniform(0.5, 2.0, (M, 1, P, 2))  # varies along trailing dims only
    model = _offsets_graph([(op, c, False)])
    folded, n = _fold(model)
    assert n == 1 and op not in [node.op_type for node in folded.graph.node]
    x = rng.standard_normal((1, ROWS, D)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ops", [
    [("Div", np.full((1, ROWS, 1, 1, 1, 1), 3.0), False)],   # a row-dependent scale is not a column scale
    [("Div", np.full((1, 1, 1, L, 1, 2), 3.0), True)],       # C / Y is not affine in Y
    [("Sub", np.ones((1, 1, 1, L, 1, 2)), True)],            # C - Y: the sign would flip W too
    [("Div", np.zeros((1, 1, 1, L, 1, 2)), False)],          # division by zero stays where it is
])
def test_what_is_not_affine_in_the_columns_is_left_alone(ops):
    model = _offsets_graph(ops)
    folded, n = _fold(model)
    assert n == 0
    assert [node.op_type for node in folded.graph.node] == [node.op_type for node in model.graph.node]


def test_a_linear_output_used_twice_is_not_folded():
    model = _offsets_graph([("Div", np.full((1, 1, 1, L, 1, 2), 2.0), False)])
    model.graph.node.append(helper.make_node("Identity", ["lin"], ["lin_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("lin_copy", TensorProto.FLOAT, [1, ROWS, K]))
    folded, n = _fold(model)
    assert n == 0


def test_simplify_reports_what_it_folded():
    rng = np.random.default_rng(3)
    model = _offsets_graph([("Div", rng.uniform(4, 32, (1, 1, 1, L, 1, 2)), False),
                            ("Add", rng.uniform(0, 1, (1, ROWS, 1, L, 1, 2)), True)])
    stats = {}
    graph.simplify(model, stats=stats)
    assert stats["affine_folded_into_linear"] == 2 and stats["constants_folded"] == 0


def test_reference_points_fold_at_a_dynamic_frame_axis():
    """The exported encoder: x [T, S, D] with T dynamic, the view keeps T (-1), the reference points are one
    constant [1, S, ...] for every frame: the bias becomes [1, S, K] and broadcasts along T."""
    rng = np.random.default_rng(4)
    model = _offsets_graph([("Div", rng.uniform(4, 32, (1, 1, 1, L, 1, 2)), False),
                            ("Add", rng.uniform(0, 1, (1, ROWS, 1, L, 1, 2)), True)])
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([-1, ROWS, M, L, P, 2], np.int64), "shape"))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "T"
    folded, n = _fold(model)
    assert n == 2 and [node.op_type for node in folded.graph.node] == ["MatMul", "Add", "Reshape", "Identity"]
    bias = next(i for i in folded.graph.initializer if i.name.startswith(graph.LOCATION_BIAS) and len(i.dims) > 1)
    assert list(bias.dims) == [1, ROWS, K]
    for t in (1, 3):
        x = rng.standard_normal((t, ROWS, D)).astype(np.float32)
        np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_fold_constants_computes_what_the_nodes_did():
    """Steps on weights alone (a transposed, reshaped weight; a linear layer of a constant token) become
    initializers with the values the nodes computed; a node that reads the input stays."""
    rng = np.random.default_rng(5)
    w, tok = rng.standard_normal((D, D)).astype(np.float32), rng.standard_normal((1, D)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("Reshape", ["wt", "flat"], ["wr"]),
             helper.make_node("Reshape", ["wr", "square"], ["ws"]),
             helper.make_node("Gemm", ["tok", "w"], ["base"], transB=1),
             helper.make_node("MatMul", ["x", "ws"], ["xw"]),
             helper.make_node("Add", ["xw", "base"], ["out"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(tok, "tok"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array([D, D], np.int64), "square")]
    g = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, D])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert graph.fold_constants(folded) == 4
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add"]
    onnx.checker.check_model(folded, full_check=True)
    x = rng.standard_normal((2, D)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), x @ w.T + tok @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-6, atol=1e-6)


def test_float16_storage_keeps_what_float16_would_change_where_it_matters():
    """--fp16-weights: exact-in-float16 weights and large lossy ones go float16 (behind a Cast); a small lossy
    constant and every sampling-location bias stay float32."""
    rng = np.random.default_rng(6)
    exact = rng.standard_normal((64, 64)).astype(np.float16).astype(np.float32)
    tensors = {"exact": exact, "large_lossy": rng.standard_normal((64, 64)).astype(np.float32),
               "small_lossy": rng.standard_normal((1, 128)).astype(np.float32),
               graph.LOCATION_BIAS + "_1": rng.uniform(0, 1, (1, 64, 64)).astype(np.float32),
               "tiny": np.ones((1, 8), np.float32)}
    nodes = [helper.make_node("Identity", [name], [f"o{k}"]) for k, name in enumerate(tensors)]
    g = helper.make_graph(nodes, "w", [], [helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, None)
                                            for k in range(len(tensors))],
                          [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert graph.store_weights_float16(model) == 2
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    assert {k for k, v in kinds.items() if v == TensorProto.FLOAT16} == {"exact_f16", "large_lossy_f16"}
    assert [n.op_type for n in model.graph.node[:2]] == ["Cast", "Cast"]
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    np.testing.assert_array_equal(out[0], exact)
    np.testing.assert_array_equal(out[2], tensors["small_lossy"])
    np.testing.assert_array_equal(out[3], tensors[graph.LOCATION_BIAS + "_1"])


def _pvt_block(c=8, h=4, w=6, lead=-1):
    """PVT's depthwise-conv MLP at a dynamic batch T: tokens [T, N, C] -> transpose(1, 2).reshape(T, C, H, W) ->
    depthwise 3x3 conv -> reshape(T, C, N).transpose(1, 2) -> + tokens."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), "dw"),
             numpy_helper.from_array(np.array([lead, c, h, w], np.int64), "to_map"),
             numpy_helper.from_array(np.array([lead, c, h * w], np.int64), "to_tokens")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["xt", "to_map"], ["map"]),
             helper.make_node("Conv", ["map", "dw"], ["conv"], group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["conv", "to_tokens"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("Add", ["tokens", "x"], ["out"])]
    g = helper.make_graph(nodes, "pvt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h * w, c])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["T", h * w, c])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("lead", [-1, 0])
def test_token_map_transposes_move_beside_the_convolution(lead):
    model = _pvt_block(lead=lead)
    moved = onnx.ModelProto()
    moved.CopyFrom(model)
    assert graph.transposes_to_channels_last(moved) == 2
    onnx.checker.check_model(moved, full_check=True)
    ops = [(n.op_type, list(n.attribute[0].ints) if n.op_type == "Transpose" else None) for n in moved.graph.node]
    assert ops == [("Reshape", None), ("Transpose", [0, 3, 1, 2]), ("Conv", None), ("Transpose", [0, 2, 3, 1]),
                   ("Reshape", None), ("Add", None)]
    rng = np.random.default_rng(8)
    for t in (1, 3):
        x = rng.standard_normal((t, 24, 8)).astype(np.float32)
        np.testing.assert_array_equal(_run(moved, x), _run(model, x))


def test_what_is_not_a_token_map_conversion_stays():
    """A reshape that does not split the token axis into H x W (here it regroups the channels) is not a layout
    change: left alone, as is a transposed tensor that something else reads too."""
    model = _pvt_block()
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([-1, 4, 12, 4], np.int64), "to_map"))
    model.graph.node[2].attribute[0].i = 4  # group = channels of the regrouped map
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "dw"))
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([-1, 4, 48], np.int64), "to_tokens"))
    model.graph.node[4].CopyFrom(helper.make_node("Identity", ["flat"], ["tokens"]))
    model.graph.node[5].CopyFrom(helper.make_node("Reshape", ["tokens", "shape_back"], ["out"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 24, 8], np.int64), "shape_back"))
    before = [n.op_type for n in model.graph.node]
    assert graph.transposes_to_channels_last(model) == 0
    assert [n.op_type for n in model.graph.node] == before
    shared = _pvt_block()
    shared.graph.node.append(helper.make_node("Identity", ["xt"], ["xt_copy"]))
    shared.graph.output.append(helper.make_tensor_value_info("xt_copy", TensorProto.FLOAT, ["T", 8, 24]))
    assert graph.transposes_to_channels_last(shared) == 1  # the map -> tokens pair only
    assert [n.op_type for n in shared.graph.node[:2]] == ["Transpose", "Reshape"]
