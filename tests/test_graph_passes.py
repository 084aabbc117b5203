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
