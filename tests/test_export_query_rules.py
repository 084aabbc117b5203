"""The ONNX graphs keep the model's query rule (T dynamic) and the issue-12 options export."""
import numpy as np
import pytest
import torch

import autr
from autr.export import onnx_export as ox
from autr.export import verify

SIZE = 64


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export per config of one set of weights: the clip rule with both options on (at opset 17, which
    down-converts torch's opset-18 graph), and the frame rule (default opset)."""
    root = tmp_path_factory.mktemp("rules")
    clip_model = autr.build_model("tiny", seed=0, pixel_pool=True, dynamic_reference=True).eval()
    clip_model.load_state_dict(autr.build_model("tiny", seed=0).state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    for name, p in clip_model.named_parameters():  # the options' zero-initialised layers, made to matter
        if name.startswith(("pixel_decoder.pool", "decoder.refine")):
            p.data.normal_(0, 0.1, generator=g)
    frame_model = autr.build_model(clip_model.cfg.replace(query_select="frame")).eval()
    frame_model.load_state_dict(clip_model.state_dict())
    out = {}
    for rule, model, opset in (("clip", clip_model, 17), ("frame", frame_model, ox.DEFAULT_OPSET)):
        sidecar = ox.export_onnx(root / rule, model=model, size=SIZE, opset=opset)
        out[rule] = (root / rule, sidecar, model)
    return out


@pytest.mark.parametrize("rule", ["clip", "frame"])
def test_both_query_rules_export_with_dynamic_t(exports, rule):
    out, sidecar, model = exports[rule]
    assert sidecar["config"]["query_select"] == rule and sidecar["frames"]["dynamic"]
    assert all(verify.within_tolerance(r) for kind in ("plugin", "portable") for r in sidecar["parity"][kind].values())
    for t in (1, 3, 5):
        frames, log_mel = verify.random_clip(t, SIZE, seed=10 + t)
        ref = verify.run_torch(model, frames, log_mel)
        for name, plugin in (("model.portable.onnx", False), ("model.plugin.onnx", True)):
            got = verify.run_session(verify.session(out / name, plugin=plugin), frames, log_mel)
            row = verify.agreement(*ref, *got)
            assert row["max_abs"] <= 1e-3 and row["iou_min"] >= 0.999, (rule, t, name, row)


def test_the_graphs_differ_where_the_rules_do(exports):
    frames, log_mel = verify.random_clip(5, SIZE, seed=15)
    got = {rule: verify.run_session(verify.session(out / "model.portable.onnx"), frames, log_mel)[0]
           for rule, (out, _, _) in exports.items()}
    clip_model = exports["clip"][2]
    with torch.no_grad():
        scores = clip_model.forward_queries(torch.from_numpy(frames), torch.from_numpy(log_mel))[1]
    assert len(set(scores.argmax(1).tolist())) > 1  # the frames disagree on their best query, so the rules differ
    assert np.abs(got["clip"] - got["frame"]).max() > 1e-3
    frames, log_mel = verify.random_clip(1, SIZE, seed=16)  # T = 1: the same mask either way
    one = [verify.run_session(verify.session(out / "model.portable.onnx"), frames, log_mel)[0]
           for out, _, _ in exports.values()]
    np.testing.assert_allclose(one[0], one[1], atol=1e-5)
