"""Tests for autr.synth (SynthAVS): clip content, determinism, layout, open set. Tiny sizes, CPU, fast."""
import csv
import hashlib
import json
import wave

import numpy as np
import pytest

from autr import synth
from autr.synth import (CATEGORIES, CATEGORY_NAMES, CLIP_SAMPLES, FRAME_TIMES, OPEN_SET_HELD_OUT, SAMPLE_RATE,
                        clip_name, dataset_clip, generate, make_clip, signature)

S = 64  # frame size used throughout


def _band_density(wav, band):
    p = np.abs(np.fft.rfft(wav.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(wav), 1.0 / SAMPLE_RATE)
    sel = (f >= band[0]) & (f <= band[1])
    return p[sel].mean()


def _tree_digest(root):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------ registry/audio

def test_registry():
    assert len(CATEGORIES) >= 8
    assert len(set(CATEGORY_NAMES)) == len(CATEGORIES)
    assert len({c.shape for c in CATEGORIES}) == len(CATEGORIES)  # every category looks different
    assert len({c.color for c in CATEGORIES}) == len(CATEGORIES)
    bands = sorted(c.band for c in CATEGORIES)
    for (lo0, hi0), (lo1, hi1) in zip(bands, bands[1:]):
        assert hi0 < lo1, "signature bands must be disjoint"
    assert set(OPEN_SET_HELD_OUT) < set(CATEGORY_NAMES)
    assert FRAME_TIMES == (15 / 16, 1 + 15 / 16, 2 + 15 / 16, 3 + 15 / 16, 4 + 15 / 16)


@pytest.mark.parametrize("cat", CATEGORY_NAMES)
def test_signature_energy_in_band(cat):
    x = signature(cat, CLIP_SAMPLES, rng=3)
    assert x.shape == (CLIP_SAMPLES,)
    assert abs(np.sqrt(np.mean(x ** 2)) - 1.0) < 1e-6
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
    band = synth.get_category(cat).band
    frac = p[(f >= band[0]) & (f <= band[1])].sum() / p.sum()
    assert frac > 0.5, f"{cat}: only {frac:.2f} of the energy in its band {band}"


def test_log_mel_tells_categories_apart():
    """A nearest-centroid classifier on VGGish log-mel (autr.preprocess, mean over time) separates every
    category at the generator's worst SNR (5 dB): centroids from one noisy instance, every one-second
    example of another instance (new phases, pitch jitter and noise) classified correctly."""
    from autr.preprocess import log_mel_for_clip

    rng = np.random.default_rng(0)

    def feats(c):
        x = 0.3 * signature(c, CLIP_SAMPLES, rng)
        x = x + rng.standard_normal(len(x)) * 0.3 * 10 ** (-5 / 20)
        return log_mel_for_clip(x.astype(np.float32), SAMPLE_RATE, 5)[:, 0].mean(axis=1)  # [5, 64]

    cents = np.stack([feats(c).mean(0) for c in CATEGORY_NAMES])
    for i, c in enumerate(CATEGORY_NAMES):
        for e in feats(c):
            d = ((cents - e) ** 2).sum(1)
            assert np.argmin(d) == i, c


# ------------------------------------------------------------------------------------------- clips

def test_clip_shapes_and_dtypes():
    for mode in ("s4", "ms3"):
        c = make_clip(1, mode, S)
        n = len(c.objects)
        assert 2 <= n <= 4
        assert c.frames.shape == (5, S, S, 3) and c.frames.dtype == np.uint8
        assert c.masks.shape == (5, S, S) and c.masks.dtype == np.uint8
        assert set(np.unique(c.masks)) <= {0, 1}
        assert c.object_masks.shape == (n, 5, S, S) and c.object_masks.dtype == np.uint8
        assert c.wav.shape == (CLIP_SAMPLES,) and c.wav.dtype == np.float32
        assert np.abs(c.wav).max() <= 1.0
        assert np.array_equal(np.round(c.wav * 32768), c.wav * 32768)  # exactly the int16 written
        assert len(c.sounding_per_second) == 5
        json.dumps(c.info())  # serialisable


def test_make_clip_deterministic():
    a, b, c = make_clip(5, "ms3", S), make_clip(5, "ms3", S), make_clip(6, "ms3", S)
    for f in ("frames", "masks", "object_masks", "wav"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert a.objects == b.objects
    assert not np.array_equal(a.frames, c.frames)


def test_s4_exactly_one_sounding_object():
    for seed in range(12):
        c = make_clip(seed, "s4", S)
        sounding = [i for i, o in enumerate(c.objects) if o["sounding"]]
        assert len(sounding) == 1
        assert c.objects[sounding[0]]["on"] == [True] * 5
        assert all(s == [c.category] for s in c.sounding_per_second)
        assert np.array_equal(c.masks, c.object_masks[sounding[0]])
        assert (c.masks.sum(axis=(1, 2)) > 0).all()


def test_ms3_on_off_reflected_in_gt():
    saw_empty = saw_multi = saw_partial = False
    for seed in range(40):
        c = make_clip(seed, "ms3", S)
        on = np.array([o["on"] for o in c.objects])
        ns = sum(o["sounding"] for o in c.objects)
        assert 1 <= ns <= 3 and ns < len(c.objects)  # at least one silent distractor
        assert on.any()
        for i, o in enumerate(c.objects):
            assert o["sounding"] == bool(on[i].any())
        for k in range(5):
            expect = np.zeros((S, S), dtype=np.uint8)
            for i in range(len(c.objects)):
                if on[i, k]:
                    expect |= c.object_masks[i, k]
            assert np.array_equal(c.masks[k], expect)
            assert sorted(c.sounding_per_second[k]) == sorted(
                o["category"] for i, o in enumerate(c.objects) if on[i, k])
            if not on[:, k].any():
                saw_empty = True
                assert c.masks[k].sum() == 0
        saw_multi |= ns > 1
        saw_partial |= bool((on.any(1) & ~on.all(1)).any())
    assert saw_empty and saw_multi and saw_partial


def test_distractor_never_shares_category_and_occlusion():
    bigger = 0
    n_distract = 0
    for seed in range(30):
        c = make_clip(seed, "ms3" if seed % 2 else "s4", S)
        cats = [o["category"] for o in c.objects]
        assert len(set(cats)) == len(cats)
        snd = {o["category"] for o in c.objects if o["sounding"]}
        dis = {o["category"] for o in c.objects if not o["sounding"]}
        assert not snd & dis
        # visible masks never overlap (occlusion is resolved), and their union is what is drawn on top
        assert c.object_masks.sum(axis=0).max() <= 1
        for o in c.objects:
            if not o["sounding"]:
                n_distract += 1
                bigger += o["big_bright"]
    assert 0.35 < bigger / n_distract < 0.85  # p = 0.6


def test_sounding_signature_dominates_its_band():
    for seed in range(10):
        c = make_clip(seed, "s4", S)
        own = _band_density(c.wav, synth.get_category(c.category).band)
        for o in c.objects:
            if not o["sounding"]:
                other = _band_density(c.wav, synth.get_category(o["category"]).band)
                assert own > 3 * other, (seed, c.category, o["category"])


def test_ms3_silent_second_is_quiet_in_the_band():
    for seed in range(60):
        c = make_clip(seed, "ms3", S)
        on = np.array([o["on"] for o in c.objects])
        for i, o in enumerate(c.objects):
            if o["sounding"] and on[i].any() and not on[i].all():
                band = synth.get_category(o["category"]).band
                seg = lambda k: c.wav[k * SAMPLE_RATE + 800:(k + 1) * SAMPLE_RATE - 800]  # noqa: E731
                d_on = np.mean([_band_density(seg(k), band) for k in range(5) if on[i, k]])
                d_off = np.mean([_band_density(seg(k), band) for k in range(5) if not on[i, k]])
                assert d_on > 3 * d_off
                return
    pytest.fail("no partially sounding object found")


def test_pools_and_must_sound():
    c = make_clip(0, "ms3", S, sounding_pool=["circle_pulse", "square_vibrato"], n_sounding=2, n_objects=3,
                  distractor_pool=["star_chirp"], must_sound="circle_pulse", held_out=["circle_pulse"])
    assert sorted(c.sounding_categories) == ["circle_pulse", "square_vibrato"]
    assert [o["category"] for o in c.objects if not o["sounding"]] == ["star_chirp"]
    assert c.unseen
    with pytest.raises(ValueError):
        make_clip(0, "s4", S, distractor_pool=["star_chirp"], n_objects=4)
    with pytest.raises(ValueError):
        make_clip(0, "s5", S)


# ------------------------------------------------------------------------------------------ layout

@pytest.fixture(scope="module")
def s4_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_s4")
    generate(root, "s4", n_train=3, n_val=1, n_test=2, seed=7, size=S, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def ms3_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_ms3")
    generate(root, "ms3", n_train=2, n_val=1, n_test=2, seed=7, size=S, workers=1, progress=False)
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_s4_layout_matches_official(s4_root):
    rows = _rows(s4_root / "s4_meta_data.csv")
    assert rows[0] == ["name", "start_time", "category", "split"]
    assert [r[3] for r in rows[1:]] == ["train"] * 3 + ["val"] + ["test"] * 2
    d = s4_root / "s4_data"
    for name, _, cat, split in rows[1:]:
        for k in range(1, 6):
            assert (d / "visual_frames" / split / cat / name / f"{name}_{k}.png").is_file()
            has_mask = (d / "gt_masks" / split / cat / name / f"{name}_{k}.png").is_file()
            assert has_mask == (split != "train" or k == 1)  # official: S4 train has frame 1 only
            assert (d / "gt_masks_full" / split / cat / name / f"{name}_{k}.png").is_file() == (split == "train")
        wav_path = d / "audio_wav" / split / cat / f"{name}.wav"
        with wave.open(str(wav_path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 80000)
    info = json.loads((s4_root / "synth_info.json").read_text())
    assert info["version"] == synth.GENERATOR_VERSION
    assert info["modes"]["s4"]["seed"] == 7
    assert [c["name"] for c in info["categories"]] == list(CATEGORY_NAMES)
    lines = (s4_root / "s4_synth_clips.jsonl").read_text().splitlines()
    assert [json.loads(x)["name"] for x in lines] == [r[0] for r in rows[1:]]


def test_ms3_layout_matches_official(ms3_root):
    rows = _rows(ms3_root / "ms3_meta_data.csv")
    assert rows[0] == ["video_id", "split"]
    d = ms3_root / "ms3_data"
    for name, split in rows[1:]:
        for k in range(1, 6):
            assert (d / "visual_frames" / name / f"{name}.mp4_{k}.png").is_file()
            assert (d / "gt_masks" / split / name / f"{name}_{k}.png").is_file()
        assert (d / "audio_wav" / split / f"{name}.wav").is_file()


def test_reader_loads_synthetic_s4(s4_root):
    torch = pytest.importorskip("torch")
    from autr.datasets import AVSBenchS4
    from autr.preprocess import log_mel_for_clip, preprocess_frames

    ds = AVSBenchS4(s4_root, "train", size=S)
    assert len(ds) == 3
    item = ds[1]
    clip = dataset_clip(7, "s4", "train", 1, S)
    assert item["name"] == clip_name("s4", "train", 1) and item["category"] == clip.category
    assert item["valid"].tolist() == [True, False, False, False, False]
    assert torch.equal(item["masks"][0], torch.from_numpy(clip.masks[0].astype(np.float32)))
    assert item["masks"][1:].sum() == 0
    assert np.array_equal(item["frames"].numpy(), preprocess_frames(clip.frames, S))
    assert np.array_equal(item["log_mel"].numpy(), log_mel_for_clip(clip.wav, SAMPLE_RATE, 5))

    full = AVSBenchS4(s4_root, "train", size=S, full_gt=True)[1]
    assert full["valid"].all()
    assert np.array_equal(full["masks"].numpy(), clip.masks.astype(np.float32))

    test = AVSBenchS4(s4_root, "test", size=S)
    assert len(test) == 2 and test[0]["valid"].all()
    assert np.array_equal(test[1]["masks"].numpy(), dataset_clip(7, "s4", "test", 1, S).masks.astype(np.float32))


def test_reader_loads_synthetic_ms3(ms3_root):
    pytest.importorskip("torch")
    from autr.datasets import AVSBenchMS3

    ds = AVSBenchMS3(ms3_root, "test", size=S)
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        clip = dataset_clip(7, "ms3", "test", i, S)
        assert item["valid"].all()
        assert np.array_equal(item["masks"].numpy(), clip.masks.astype(np.float32))
        assert item["frames"].shape == (5, 3, S, S) and item["log_mel"].shape == (5, 1, 96, 64)


def test_generate_deterministic_across_worker_counts(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    kw = dict(n_train=3, n_val=1, n_test=2, size=32, progress=False)
    generate(a, "ms3", seed=3, workers=1, **kw)
    generate(b, "ms3", seed=3, workers=2, **kw)
    generate(c, "ms3", seed=4, workers=2, **kw)
    da, db, dc = _tree_digest(a), _tree_digest(b), _tree_digest(c)
    assert da == db
    assert da.keys() == dc.keys() and da != dc


def test_open_set_keeps_held_out_categories_out_of_train(tmp_path):
    generate(tmp_path, "s4", n_train=10, n_val=3, n_test=10, seed=1, size=32, open_set=True, workers=1,
             progress=False)
    info = json.loads((tmp_path / "synth_info.json").read_text())["modes"]["s4"]
    assert info["held_out_categories"] == list(OPEN_SET_HELD_OUT)
    held = set(OPEN_SET_HELD_OUT)
    clips = [json.loads(x) for x in (tmp_path / "s4_synth_clips.jsonl").read_text().splitlines()]
    for cl in clips:
        cats = {o["category"] for o in cl["objects"]}
        if cl["split"] in ("train", "val"):
            assert not cats & held and not cl["unseen"]
        else:
            assert cl["unseen"] == (cl["category"] in held)
            if not cl["unseen"]:
                assert not cats & held  # seen test clips use seen categories only
    test = [cl for cl in clips if cl["split"] == "test"]
    assert any(cl["unseen"] for cl in test) and not all(cl["unseen"] for cl in test)
    assert info["n_unseen_test_clips"] == sum(cl["unseen"] for cl in test)
    for r in _rows(tmp_path / "s4_meta_data.csv")[1:]:
        if r[3] != "test":
            assert r[2] not in held
