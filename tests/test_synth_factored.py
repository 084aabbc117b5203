"""SynthAVS factored categories (issue 15, part 2: an open set that can transfer) and the pin on the existing
design's clips. Tiny sizes, CPU, fast."""
import hashlib
import json

import numpy as np
import pytest

from autr import synth
from autr.synth import dataset_clip, generate

S = 48

# sha256 (first 16 hex) of frames | wav | masks | object_masks of existing clips, computed BEFORE the factored
# design was added. The embedded default's model card depends on these staying bit-identical.
PINNED = {
    ("s4", False, "train", 0): ("d6b400cf470a5805", False),
    ("s4", False, "test", 1): ("be3de83152b92da4", False),
    ("s4", False, "test", 2): ("8d1ebb8f0fa18466", False),
    ("s4", True, "train", 0): ("4dcb7c0a9679aae7", False),
    ("s4", True, "test", 1): ("5c7f8d80ebb840a6", True),
    ("s4", True, "test", 2): ("ae90672b7c4e75bb", True),
    ("ms3", False, "train", 0): ("2b087ba9bc33abf9", False),
    ("ms3", False, "test", 1): ("6195b819f8930300", False),
    ("ms3", False, "test", 2): ("73a6c587c936599f", False),
    ("ms3", True, "train", 0): ("00009fc8a727207e", False),
    ("ms3", True, "test", 1): ("d1a730286f873309", False),
    ("ms3", True, "test", 2): ("456ece10cc7b68ac", True),
}


def _digest(clip):
    h = hashlib.sha256()
    for a in (clip.frames, clip.wav, clip.masks, clip.object_masks):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("key", sorted(PINNED, key=str))
def test_existing_clips_are_pinned(key):
    mode, open_set, split, index = key
    clip = dataset_clip(0, mode, split, index, size=S, open_set=open_set)
    assert (_digest(clip), clip.unseen) == PINNED[key]
    explicit = dataset_clip(0, mode, split, index, size=S, open_set=open_set, design="distinct")
    assert _digest(explicit) == PINNED[key][0]


# ------------------------------------------------------------------------------------ factored design

FACTORED = synth.FACTORED_CATEGORIES
HELD = set(synth.FACTORED_HELD_OUT)
TRAIN = [c for c in FACTORED if c.name not in HELD]


def test_factored_registry_is_a_grid_of_shared_factors():
    assert len(FACTORED) == len(synth.FACTOR_SOUND_FAMILIES) * len(synth.FACTOR_PITCH_BANDS)
    assert len({(c.sound_family, c.pitch_band) for c in FACTORED}) == len(FACTORED)
    assert not set(synth.FACTORED_CATEGORY_NAMES) & set(synth.CATEGORY_NAMES)  # names unique across designs
    for a in FACTORED:
        for b in FACTORED:
            # the sound -> look mapping: one visual family per sound family, one colour per pitch band
            assert (a.sound_family == b.sound_family) == ((a.shape, a.texture) == (b.shape, b.texture))
            assert (a.pitch_band == b.pitch_band) == (a.color == b.color)
    assert HELD < set(synth.FACTORED_CATEGORY_NAMES)


def test_every_held_out_factor_appears_in_training():
    for c in FACTORED:
        if c.name not in HELD:
            continue
        assert sum(t.sound_family == c.sound_family for t in TRAIN) >= 2
        assert sum(t.pitch_band == c.pitch_band for t in TRAIN) >= 2
        assert any((t.shape, t.texture) == (c.shape, c.texture) for t in TRAIN)
        assert any(t.color == c.color for t in TRAIN)
        assert any(t.band == c.band for t in TRAIN)
    # a new combination, never a training category: no training category shares both factors
    assert not {(c.sound_family, c.pitch_band) for c in FACTORED if c.name in HELD} & \
        {(c.sound_family, c.pitch_band) for c in TRAIN}
    # one held-out category per sound family and per pitch band
    held = [c for c in FACTORED if c.name in HELD]
    assert len({c.sound_family for c in held}) == len(held) == len({c.pitch_band for c in held})


@pytest.mark.parametrize("cat", FACTORED, ids=lambda c: c.name)
def test_factored_signature_energy_in_its_band(cat):
    x = synth.signature(cat, rng=1)
    assert abs(np.sqrt(np.mean(x ** 2)) - 1.0) < 1e-6
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / synth.SAMPLE_RATE)
    lo, hi = cat.band
    in_band = p[(f >= lo * 0.97) & (f <= hi * 1.03)].sum()
    # every other pitch band holds much less energy than this one
    for other in synth.FACTOR_PITCH_BANDS:
        if other != cat.pitch_band:
            olo, ohi = synth.get_category(f"{cat.sound_family}_{other}").band
            assert p[(f >= olo) & (f <= ohi)].sum() < 0.25 * in_band, other


@pytest.mark.parametrize("mode", ["s4", "ms3"])
def test_held_out_combinations_never_in_train_or_val(mode):
    for split in ("train", "val"):
        for i in range(12):
            clip = dataset_clip(0, mode, split, i, size=32, open_set=True, design="factored")
            assert not {o["category"] for o in clip.objects} & HELD
            assert not clip.unseen
            assert all(o["category"] in synth.FACTORED_CATEGORY_NAMES for o in clip.objects)
    unseen = [dataset_clip(0, mode, "test", i, size=32, open_set=True, design="factored") for i in range(12)]
    assert any(c.unseen for c in unseen) and not all(c.unseen for c in unseen)
    for c in unseen:
        assert c.unseen == bool(set(c.sounding_categories) & HELD)
        assert c.objects[0]["sound_family"] and c.objects[0]["pitch_band"]


def test_factored_clips_are_deterministic_per_seed():
    a = dataset_clip(3, "ms3", "test", 1, size=S, open_set=True, design="factored")
    b = dataset_clip(3, "ms3", "test", 1, size=S, open_set=True, design="factored")
    c = dataset_clip(4, "ms3", "test", 1, size=S, open_set=True, design="factored")
    assert _digest(a) == _digest(b) and a.info() == b.info()
    assert _digest(a) != _digest(c)
    # the factored design really draws factored categories, and the distinct one does not
    assert _digest(a) != _digest(dataset_clip(3, "ms3", "test", 1, size=S, open_set=True))


def test_generate_factored_open_set_records_the_design(tmp_path):
    info = generate(tmp_path, mode="s4", n_train=4, n_val=2, n_test=6, seed=0, size=32, open_set=True,
                    workers=1, progress=False, design="factored")
    assert info["design"] == "factored" and set(info["held_out_categories"]) == HELD
    assert not set(info["train_categories"]) & HELD
    doc = json.loads((tmp_path / "synth_info.json").read_text())
    fd = doc["modes"]["s4"]["factor_design"]
    assert {h["category"] for h in fd["held_out_combinations"]} == HELD
    for h in fd["held_out_combinations"]:
        assert h["train_categories_sharing_sound_family"] and h["train_categories_sharing_pitch_band"]
    assert len(doc["modes"]["s4"]["categories"]) == len(FACTORED)
    rows = [json.loads(line) for line in (tmp_path / "s4_synth_clips.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for r in rows:
        cats = {o["category"] for o in r["objects"]}
        if r["split"] != "test":
            assert not cats & HELD and not r["unseen"]
        assert r["unseen"] == bool(set(r["sounding_categories"]) & HELD)
    assert info["n_unseen_test_clips"] == sum(r["unseen"] for r in rows)
    # on disk exactly what dataset_clip gives
    from autr.datasets import AVSBenchDataset

    test = AVSBenchDataset(tmp_path, "s4", "test", size=32)
    clip = dataset_clip(0, "s4", "test", 0, size=32, open_set=True, design="factored")
    assert np.array_equal(test[0]["masks"].numpy(), clip.masks.astype(np.float32))


def test_bad_design_is_one_clear_error():
    with pytest.raises(ValueError, match="design must be one of distinct, factored"):
        dataset_clip(0, "s4", "test", 0, size=32, design="combined")
    from click.testing import CliRunner

    from autr.cli import main

    for args in (["data", "synth", "/tmp/never_written_synth", "--design", "combined"],
                 ["eval", "--synthetic", "--design", "combined"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "--design" in lines[0] and "distinct, factored" in lines[0], r.output
        assert "Traceback" not in r.output


def test_cli_writes_a_factored_open_set(tmp_path):
    from click.testing import CliRunner

    from autr.cli import main

    r = CliRunner().invoke(main, ["data", "synth", str(tmp_path), "--train", "2", "--val", "1", "--test", "2",
                                  "--size", "32", "--workers", "1", "--open-set", "--design", "factored"])
    assert r.exit_code == 0, r.output
    assert "factored" in r.output and "buzz_mid" in r.output
    assert json.loads((tmp_path / "synth_info.json").read_text())["modes"]["s4"]["design"] == "factored"


def test_evaluate_synthetic_factored_open_set_reports_seen_and_unseen():
    import autr
    from autr.evaluation import evaluate_synthetic

    model = autr.build_model("tiny", seed=0)
    res = evaluate_synthetic(model, "s4", seed=0, clips=4, size=64, open_set=True, progress=False,
                             design="factored")
    assert {"miou_seen", "miou_unseen"} <= set(res)
