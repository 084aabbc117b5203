"""Tests for autr.datasets on a tiny fixture written by hand in the official AVSBench layout
(OpenNLPLab/AVSBench avs_scripts/avs_{s4,ms3}/dataloader.py): PNG frames, PNG masks, 16 kHz wav, csv,
and one released-style .pkl log-mel."""
import csv
import pickle
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from autr.datasets import (AVSBenchDataset, AVSBenchMS3, AVSBenchS4, DataFileError, MissingDataFile, collate,
                           read_log_mel_pkl)
from autr.preprocess import log_mel_for_clip, preprocess_frames

STORED = 40  # stored image size
SIZE = 32  # size asked of the reader (exercises resizing)
S4_CLIPS = [  # name, category, split ; "pkl" clip has only the released log-mel, no wav
    ("s4a", "dog_barking", "train"),
    ("s4pkl", "dog_barking", "train"),
    ("s4b", "lawn_mowing", "val"),
    ("s4c", "helicopter", "test"),
]
MS3_CLIPS = [("ms3a", "train"), ("ms3b", "train"), ("ms3c", "test")]


def _frame(seed):
    return np.random.default_rng(seed).integers(0, 256, (STORED, STORED, 3), dtype=np.uint8)


def _mask(seed, k):
    m = np.zeros((STORED, STORED), dtype=np.uint8)
    m[4 + k: 20 + k, 6 + seed % 7: 30] = 255
    return m


def _wav(path, seed, sr=16000, seconds=5):
    t = np.arange(sr * seconds) / sr
    x = (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())
    return x


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode == "P":  # palette mask as released for MS3: index 0 background, 1 object
        im = Image.fromarray((arr > 0).astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6))
    im.save(path)


@pytest.fixture(scope="module")
def avs_root(tmp_path_factory):
    top = tmp_path_factory.mktemp("avsbench")
    s4 = top / "Single-source"
    ms3 = top / "Multi-sources"
    truth = {}
    # ---- S4
    s4.mkdir()
    with open(s4 / "s4_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "start_time", "category", "split"])
        for name, cat, split in S4_CLIPS:
            w.writerow([name, 0, cat, split])
    d = s4 / "s4_data"
    for i, (name, cat, split) in enumerate(S4_CLIPS):
        frames = [_frame(10 * i + k) for k in range(5)]
        masks = [_mask(i, k) for k in range(5)]
        for k in range(1, 6):
            _png(d / "visual_frames" / split / cat / name / f"{name}_{k}.png", frames[k - 1])
            if split != "train" or k == 1:
                _png(d / "gt_masks" / split / cat / name / f"{name}_{k}.png", masks[k - 1])
        if name == "s4pkl":
            lm = torch.randn(5, 1, 96, 64, generator=torch.Generator().manual_seed(0))
            p = d / "audio_log_mel" / split / cat / f"{name}.pkl"
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as fw:
                pickle.dump(lm, fw)  # exactly as preprocess_scripts/preprocess_s4.py stores it
            truth[name] = dict(frames=frames, masks=masks, log_mel=lm.numpy())
        else:
            pcm = _wav(d / "audio_wav" / split / cat / f"{name}.wav", i)
            truth[name] = dict(frames=frames, masks=masks, pcm=pcm)
    # ---- MS3
    ms3.mkdir()
    with open(ms3 / "ms3_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "split"])
        for name, split in MS3_CLIPS:
            w.writerow([name, split])
    d = ms3 / "ms3_data"
    for i, (name, split) in enumerate(MS3_CLIPS):
        frames = [_frame(100 + 10 * i + k) for k in range(5)]
        masks = [_mask(i, k) if k != 2 else np.zeros((STORED, STORED), np.uint8) for k in range(5)]
        for k in range(1, 6):
            _png(d / "visual_frames" / name / f"{name}.mp4_{k}.png", frames[k - 1])
            _png(d / "gt_masks" / split / name / f"{name}_{k}.png", masks[k - 1], mode="P")
        pcm = _wav(d / "audio_wav" / split / f"{name}.wav", i)
        truth[name] = dict(frames=frames, masks=masks, pcm=pcm)
    return top, truth


def _resized_mask(m):
    return np.asarray(Image.fromarray(m).resize((SIZE, SIZE), Image.NEAREST)) > 0


def test_s4_train_item(avs_root):
    top, truth = avs_root
    ds = AVSBenchS4(top / "Single-source", "train", size=SIZE)
    assert len(ds) == 2
    it = ds[0]
    assert it["name"] == "s4a" and it["category"] == "dog_barking"
    assert it["frames"].shape == (5, 3, SIZE, SIZE) and it["frames"].dtype == torch.float32
    assert it["log_mel"].shape == (5, 1, 96, 64) and it["log_mel"].dtype == torch.float32
    assert it["masks"].shape == (5, SIZE, SIZE) and it["masks"].dtype == torch.float32
    assert it["valid"].dtype == torch.bool
    assert it["valid"].tolist() == [True, False, False, False, False]
    assert set(torch.unique(it["masks"]).tolist()) <= {0.0, 1.0}
    assert it["masks"][1:].sum() == 0
    t = truth["s4a"]
    assert np.array_equal(it["frames"].numpy(), preprocess_frames(np.stack(t["frames"]), SIZE))
    assert np.array_equal(it["log_mel"].numpy(), log_mel_for_clip(t["pcm"], 16000, 5))
    assert np.array_equal(it["masks"][0].numpy() > 0, _resized_mask(t["masks"][0]))


def test_s4_pkl_log_mel(avs_root):
    top, truth = avs_root
    ds = AVSBenchS4(top, "train", size=SIZE)  # the release's parent folder works too
    it = ds[1]
    assert it["name"] == "s4pkl"
    assert np.array_equal(it["log_mel"].numpy(), truth["s4pkl"]["log_mel"])
    with pytest.raises(MissingDataFile, match="s4pkl.wav"):
        AVSBenchS4(top, "train", size=SIZE, audio="wav")[1]


def test_s4_val_test_all_frames(avs_root):
    top, truth = avs_root
    for split, name in (("val", "s4b"), ("test", "s4c")):
        it = AVSBenchS4(top, split, size=SIZE)[0]
        assert it["name"] == name and it["valid"].all()
        for k in range(5):
            assert np.array_equal(it["masks"][k].numpy() > 0, _resized_mask(truth[name]["masks"][k]))


def test_full_gt_ignored_on_real_data(avs_root):
    top, _ = avs_root
    it = AVSBenchS4(top, "train", size=SIZE, full_gt=True)[0]  # no gt_masks_full: official behaviour
    assert it["valid"].tolist() == [True, False, False, False, False]


def test_ms3_items_palette_masks(avs_root):
    top, truth = avs_root
    ds = AVSBenchMS3(top / "Multi-sources", "train", size=STORED)
    assert len(ds) == 2 and len(AVSBenchMS3(top, "test")) == 1
    it = ds[1]
    assert it["name"] == "ms3b" and it["category"] == ""
    assert it["valid"].all()
    for k in range(5):
        assert np.array_equal(it["masks"][k].numpy(), (truth["ms3b"]["masks"][k] > 0).astype(np.float32))
    assert it["masks"][2].sum() == 0  # an empty ground-truth frame stays empty
    assert it["frames"].shape == (5, 3, STORED, STORED)


def test_collate_and_dataloader(avs_root):
    top, _ = avs_root
    ds = AVSBenchMS3(top, "train", size=SIZE)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert batch["frames"].shape == (2, 5, 3, SIZE, SIZE)
    assert batch["log_mel"].shape == (2, 5, 1, 96, 64)
    assert batch["masks"].shape == (2, 5, SIZE, SIZE)
    assert batch["valid"].shape == (2, 5)
    assert batch["name"] == ["ms3a", "ms3b"]
    with pytest.raises(ValueError):
        collate([])


def _copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_file_error_names_the_file(avs_root, tmp_path):
    top = _copy_tree(avs_root[0], tmp_path / "avs")
    victim = top / "Single-source/s4_data/visual_frames/val/lawn_mowing/s4b/s4b_3.png"
    victim.unlink()
    ds = AVSBenchS4(top, "val", size=SIZE)
    with pytest.raises(MissingDataFile) as ei:
        ds[0]
    assert str(victim) in str(ei.value) and ei.value.path == str(victim)
    assert isinstance(ei.value, FileNotFoundError)
    again = pickle.loads(pickle.dumps(ei.value))  # crosses DataLoader worker processes intact
    assert type(again) is MissingDataFile and again.path == str(victim)
    with pytest.raises(MissingDataFile, match="s4b_3.png"):
        ds.check()
    wav = top / "Multi-sources/ms3_data/audio_wav/test/ms3c.wav"
    wav.unlink()
    with pytest.raises(MissingDataFile, match="ms3c.wav"):
        AVSBenchMS3(top, "test", size=SIZE)[0]
    with pytest.raises(MissingDataFile, match="s4_meta_data.csv"):
        AVSBenchS4(tmp_path / "nowhere", "train")


def test_corrupt_files_error_names_the_file(avs_root, tmp_path):
    top = _copy_tree(avs_root[0], tmp_path / "avs")
    png = top / "Multi-sources/ms3_data/gt_masks/train/ms3a/ms3a_4.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataFileError) as ei:
        AVSBenchMS3(top, "train", size=SIZE)[0]
    assert str(png) in str(ei.value) and not isinstance(ei.value, FileNotFoundError)
    frame = top / "Single-source/s4_data/visual_frames/test/helicopter/s4c/s4c_1.png"
    frame.write_bytes(frame.read_bytes()[:60])  # truncated
    with pytest.raises(DataFileError, match="s4c_1.png"):
        AVSBenchS4(top, "test", size=SIZE)[0]
    wav = top / "Single-source/s4_data/audio_wav/val/lawn_mowing/s4b.wav"
    wav.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DataFileError, match="s4b.wav"):
        AVSBenchS4(top, "val", size=SIZE)[0]


def test_pkl_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataFileError, match="evil.pkl") as ei:
        read_log_mel_pkl(p)
    assert "refusing" in str(ei.value)
    q = tmp_path / "short.pkl"
    q.write_bytes(pickle.dumps(torch.zeros(3, 96, 64)))  # [T, 96, 64], fewer than 5 seconds
    x = read_log_mel_pkl(q)
    assert x.shape == (5, 1, 96, 64) and x.dtype == np.float32
    r = tmp_path / "np.pkl"
    r.write_bytes(pickle.dumps(np.ones((5, 1, 96, 64), np.float32)))
    assert read_log_mel_pkl(r).sum() == 5 * 96 * 64


def test_bad_arguments(avs_root):
    top, _ = avs_root
    with pytest.raises(ValueError):
        AVSBenchDataset(top, "s3", "train")
    with pytest.raises(ValueError):
        AVSBenchS4(top, "dev")
    with pytest.raises(ValueError):
        AVSBenchS4(top, "train", audio="mp3")
    with pytest.raises(IndexError):
        AVSBenchS4(top, "val")[5]
