"""`autr eval`: metrics on SynthAVS and datasets, the audio-swap rule, overlays, clear errors."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import autr
from autr.cli import main
from autr.evaluation import audio_swap, clip_inputs, evaluate_dataset, evaluate_synthetic, swap_target
from autr.synth import dataset_clip, generate

SIZE = 64


class Follower(torch.nn.Module):
    """Test double: predicts, for whatever audio it hears, the mask of the clip that audio came from.

    `by_sound=True` follows the sound (returns B's sounding object as it appears in the frames A);
    `by_sound=False` ignores the audio and returns A's own ground truth.
    """

    def __init__(self, clips, by_sound):
        super().__init__()
        self.clips, self.by_sound = clips, by_sound
        self.keys = [clip_inputs(c, SIZE) for c in clips]

    def forward(self, frames, log_mel):
        a = next(i for i, (f, _) in enumerate(self.keys) if torch.equal(f, frames))
        b = next(i for i, (_, m) in enumerate(self.keys) if torch.equal(m, log_mel))
        masks = []
        for t in range(frames.shape[0]):
            target = swap_target(self.clips[a], self.clips[b], t, SIZE) if a != b else None
            if target is None:
                mask = self.clips[a].masks[t].astype(bool)
            else:
                mask = target[0] if self.by_sound else target[1]
            masks.append(torch.from_numpy(np.where(mask, 5.0, -5.0)).float())
        return {"masks": torch.stack(masks), "scores": torch.zeros(frames.shape[0])}


@pytest.fixture(scope="module")
def clips():
    return [dataset_clip(3, "s4", "test", i, size=SIZE) for i in range(8)]


def test_audio_swap_is_one_for_a_sound_follower_and_zero_for_a_picture_follower(clips):
    follow_sound = audio_swap(Follower(clips, True), clips, SIZE, "cpu", progress=False)
    follow_picture = audio_swap(Follower(clips, False), clips, SIZE, "cpu", progress=False)
    assert follow_sound["audio_swap_pairs"] >= 4 and follow_sound["audio_swap_frames"] >= 10
    assert follow_sound["audio_swap"] == 1.0
    assert follow_picture["audio_swap"] == 0.0


def test_swap_target_needs_the_heard_object_silent_in_the_picture(clips):
    a = clips[0]
    assert swap_target(a, a, 0, SIZE) is None  # same sound: nothing to move to
    for b in clips[1:]:
        found = swap_target(a, b, 0, SIZE)
        if found is not None:
            target, own = found
            assert target.any() and own.any() and not (target & own).all()
            assert b.category in [o["category"] for o in a.objects if not o["sounding"]]


def test_synthetic_evaluation_is_repeatable_and_writes_overlays(tmp_path):
    model = autr.build_model("tiny", seed=0)
    one = evaluate_synthetic(model, "s4", seed=5, clips=3, size=SIZE, overlays=str(tmp_path), progress=False)
    two = evaluate_synthetic(model, "s4", seed=5, clips=3, size=SIZE, progress=False)
    assert one == two
    assert {"miou", "fscore", "miou_dataset", "audio_swap"} <= set(one) and one["n_videos"] == 3
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 3
    from PIL import Image

    assert Image.open(pngs[0]).size == (5 * SIZE, 3 * SIZE)  # 5 frames wide, frame / GT / prediction


def test_open_set_reports_seen_and_unseen():
    model = autr.build_model("tiny", seed=0)
    res = evaluate_synthetic(model, "s4", seed=2, clips=6, size=SIZE, open_set=True, progress=False)
    assert {"miou_seen", "miou_unseen"} <= set(res)


def test_dataset_evaluation_on_a_generated_split(tmp_path):
    generate(tmp_path, mode="ms3", n_train=0, n_val=0, n_test=2, seed=0, size=SIZE, workers=1, progress=False)
    res = evaluate_dataset(autr.build_model("tiny", seed=0), tmp_path, "ms3", "test", size=SIZE, progress=False)
    assert res["n_videos"] == 2 and 0 <= res["miou"] <= 1


def test_eval_cli_json_and_errors(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    autr.save_checkpoint(autr.build_model("tiny", seed=0), ckpt)
    out = tmp_path / "e.json"
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--checkpoint", str(ckpt), "--synthetic", "--clips", "2", "--size", str(SIZE),
                               "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    assert record["source"]["synthetic"]["clips"] == 2 and "audio_swap" in record
    res = runner.invoke(main, ["eval", "--checkpoint", str(ckpt), "--quiet"])
    assert res.exit_code == 2 and "exactly one of --data DIR or --synthetic" in res.output
    res = runner.invoke(main, ["eval", "--checkpoint", str(tmp_path / "nope.safetensors"), "--synthetic"])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    res = runner.invoke(main, ["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_eval_on_an_empty_split_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    """`autr eval --data` on a dataset whose test split is empty raised a RuntimeError from
    AVSBenchAccumulator.compute() after loading the model."""
    generate(tmp_path, mode="s4", n_train=1, n_val=0, n_test=0, seed=0, size=SIZE, workers=1, progress=False)
    import autr.checkpoint

    monkeypatch.setattr(autr.checkpoint, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    res = CliRunner().invoke(main, ["eval", "--data", str(tmp_path), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "no s4 clips in its 'test' split" in res.output and "--test N" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1
    res = CliRunner().invoke(main, ["eval", "--synthetic", "--clips", "0", "--quiet"])
    assert res.exit_code == 2 and "--clips must be >= 1" in res.output
