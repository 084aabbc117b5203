"""PyTorch datasets for AVSBench S4 / MS3, read exactly as the official release lays them out.

The same reader loads the real AVSBench data and SynthAVS (`autr.synth`), which writes the same layout.
Facts below were checked against OpenNLPLab/AVSBench ``avs_scripts/avs_s4/dataloader.py``,
``avs_scripts/avs_ms3/dataloader.py``, ``avs_scripts/avs_{s4,ms3}/config.py`` and
``preprocess_scripts/preprocess_{s4,ms3}.py``.

``root`` is the folder that holds the meta csv (the release's ``Single-source/`` or ``Multi-sources/``);
the release's parent folder (holding ``Single-source/`` and ``Multi-sources/``) is accepted too::

    S4:  s4_meta_data.csv           column 0 = name, column 2 = category, column 'split'
         s4_data/visual_frames/{split}/{category}/{name}/{name}_{k}.png        k = 1..5
         s4_data/gt_masks/{split}/{category}/{name}/{name}_{k}.png             train: k = 1 only
         s4_data/audio_wav/{split}/{category}/{name}.wav
         s4_data/audio_log_mel/{split}/{category}/{name}.pkl                   (released log-mel)
    MS3: ms3_meta_data.csv          column 0 = name, column 'split'
         ms3_data/visual_frames/{name}/{name}.mp4_{k}.png                      k = 1..5 (no split level)
         ms3_data/gt_masks/{split}/{name}/{name}_{k}.png                       k = 1..5
         ms3_data/audio_wav/{split}/{name}.wav
         ms3_data/audio_log_mel/{split}/{name}.pkl

Each item is a dict:

- ``frames``  float32 [5, 3, size, size]: `autr.preprocess.preprocess_frames` (bilinear resize +
  ImageNet normalisation; the exact transform the live runtime uses).
- ``log_mel`` float32 [5, 1, 96, 64]: `autr.preprocess.log_mel_for_clip` of the ``.wav`` (VGGish
  log-mel, one example per second, last example repeated when short). When the ``.wav`` is absent and the
  released ``.pkl`` exists, the pkl is read instead (``audio="auto"``, the default; ``"wav"`` / ``"pkl"``
  force one source). The pkl is a pickled torch tensor ([5, 1, 96, 64] or [5, 96, 64]); it is read by a
  restricted unpickler that only admits torch tensor / numpy array reconstruction (no arbitrary code), and
  the tensor storage inside is loaded with ``torch.load(weights_only=True)``.
- ``masks``   float32 [5, size, size] in {0, 1}: a pixel is foreground where the PNG value is > 0 (the
  official loaders read S4 masks with ``convert('1')`` and MS3 masks with ``convert('P')``, where the
  released masks are 0 / 255). Masks are resized with nearest neighbour when ``size`` differs.
- ``valid``   bool [5]: which frames carry ground truth. S4 train officially has only the first frame's
  mask, so ``valid = [1, 0, 0, 0, 0]`` and masks[1:] are zeros; with ``full_gt=True`` and a SynthAVS
  ``s4_data/gt_masks_full`` folder, all five frames are supervised.
- ``name``, ``category`` (S4: the csv category; MS3 has none in the release: ``""``).

Every missing or unreadable file raises `DataFileError` (a ``FileNotFoundError`` for missing files)
whose message names the file.
"""
from __future__ import annotations

import collections
import csv
import io
import pickle
import wave
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from autr.preprocess import SAMPLE_RATE, log_mel_for_clip, preprocess_frames

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

N_FRAMES = 5
SPLITS = ("train", "val", "test")


class DataFileError(OSError):
    """A dataset file is missing or cannot be read. ``.path`` names it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{reason}: {self.path}")

    def __reduce__(self):  # survive DataLoader worker pickling
        return (type(self), (self.path, self.reason))


class MissingDataFile(DataFileError, FileNotFoundError):
    """A dataset file does not exist."""


# ------------------------------------------------------------------------------------------ readers

def _need(path: Path) -> Path:
    if not path.is_file():
        raise MissingDataFile(path, "missing dataset file")
    return path


def read_rgb(path) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    from PIL import Image

    path = _need(Path(path))
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataFileError(path, f"cannot read image ({type(e).__name__}: {e})") from e


def read_mask(path) -> np.ndarray:
    """bool [H, W]: foreground where the stored value is > 0 (palette index for 'P' images)."""
    from PIL import Image

    path = _need(Path(path))
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "1", "L", "I", "I;16", "F"):
                arr = np.asarray(im)
            else:  # RGB(A) or LA masks: any non-black pixel
                arr = np.asarray(im.convert("L"))
            return np.asarray(arr) > 0
    except Exception as e:
        raise DataFileError(path, f"cannot read mask ({type(e).__name__}: {e})") from e


def read_wav(path):
    """(samples, sample_rate): int PCM ``[n]`` or ``[n, channels]`` (8/16/32-bit) as stored."""
    path = _need(Path(path))
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
        if width == 1:
            x = np.frombuffer(raw, dtype=np.uint8)
        elif width == 2:
            x = np.frombuffer(raw, dtype="<i2")
        elif width == 4:
            x = np.frombuffer(raw, dtype="<i4")
        else:
            raise ValueError(f"unsupported sample width {width} bytes")
        x = x.reshape(-1, ch) if ch > 1 else x
        if x.shape[0] == 0:
            raise ValueError("no samples")
        return np.ascontiguousarray(x), sr
    except DataFileError:
        raise
    except Exception as e:
        raise DataFileError(path, f"cannot read wav ({type(e).__name__}: {e})") from e


def _load_storage_bytes(b):
    return torch.load(io.BytesIO(b), weights_only=True)


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what a pickled torch tensor or numpy array needs."""

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return getattr(torch._utils, name)
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage_bytes
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(np.dtypes, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def read_log_mel_pkl(path) -> np.ndarray:
    """float32 [5, 1, 96, 64] from a released AVSBench ``audio_log_mel/*.pkl``."""
    path = _need(Path(path))
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f).load()
        x = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj)
        x = x.astype(np.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 96, 64) or x.shape[0] < 1:
            raise ValueError(f"expected a [T, 1, 96, 64] or [T, 96, 64] log-mel, got shape {tuple(x.shape)}")
        if x.shape[0] < N_FRAMES:  # as the release does: repeat the last example
            x = np.concatenate([x, np.repeat(x[-1:], N_FRAMES - x.shape[0], axis=0)])
        return np.ascontiguousarray(x[:N_FRAMES])
    except DataFileError:
        raise
    except Exception as e:
        raise DataFileError(path, f"cannot read log-mel pkl ({type(e).__name__}: {e})") from e


def _resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    if m.shape == (size, size):
        return m
    h, w = m.shape
    ys = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(np.int64)
    xs = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(np.int64)
    return m[ys[:, None], xs[None, :]]


# ------------------------------------------------------------------------------------------ datasets

class AVSBenchDataset(Dataset):
    """AVSBench (or SynthAVS) S4 / MS3 split. See the module docstring for the layout and items."""

    def __init__(self, root, mode: str = "s4", split: str = "train", size: int = 224, full_gt: bool = False,
                 audio: str = "auto"):
        if mode not in ("s4", "ms3"):
            raise ValueError(f"mode must be 's4' or 'ms3', got {mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if audio not in ("auto", "wav", "pkl"):
            raise ValueError(f"audio must be 'auto', 'wav' or 'pkl', got {audio!r}")
        self.mode, self.split, self.size, self.audio = mode, split, int(size), audio
        self.root = self._find_root(Path(root), mode)
        self.data_dir = self.root / f"{mode}_data"
        self.csv_path = self.root / f"{mode}_meta_data.csv"
        self.items = self._read_csv(self.csv_path, mode, split)
        full_dir = self.data_dir / "gt_masks_full" / split
        self.full_gt = bool(full_gt and mode == "s4" and split == "train" and full_dir.is_dir())

    @staticmethod
    def _find_root(root: Path, mode: str) -> Path:
        csv_name = f"{mode}_meta_data.csv"
        sub = "Single-source" if mode == "s4" else "Multi-sources"
        for cand in (root, root / sub):
            if (cand / csv_name).is_file():
                return cand
        raise MissingDataFile(root / csv_name, f"missing AVSBench meta csv (also looked in {root / sub})")

    @staticmethod
    def _read_csv(path: Path, mode: str, split: str) -> list:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except OSError as e:
            raise DataFileError(path, f"cannot read csv ({e})") from e
        if not rows:
            raise DataFileError(path, "empty csv")
        header = [h.strip() for h in rows[0]]
        if "split" not in header:
            raise DataFileError(path, f"csv has no 'split' column (header {header})")
        i_split = header.index("split")
        i_cat = header.index("category") if "category" in header else (2 if mode == "s4" else None)
        if mode == "s4" and (i_cat is None or i_cat >= len(header)):
            raise DataFileError(path, f"S4 csv has no category column (header {header})")
        items = []
        for r in rows[1:]:
            if not r or not r[0].strip():
                continue
            if len(r) <= max(i_split, i_cat or 0):
                raise DataFileError(path, f"short csv row {r}")
            if r[i_split].strip() == split:
                items.append((r[0].strip(), r[i_cat].strip() if i_cat is not None else ""))
        return items

    def __len__(self):
        return len(self.items)

    # paths ------------------------------------------------------------------------------------
    def paths(self, index: int) -> dict:
        name, cat = self.items[index]
        d, s = self.data_dir, self.split
        ks = range(1, N_FRAMES + 1)
        if self.mode == "s4":
            p = {
                "frames": [d / "visual_frames" / s / cat / name / f"{name}_{k}.png" for k in ks],
                "masks": [d / "gt_masks" / s / cat / name / f"{name}_{k}.png" for k in ks],
                "wav": d / "audio_wav" / s / cat / f"{name}.wav",
                "pkl": d / "audio_log_mel" / s / cat / f"{name}.pkl",
            }
            if self.full_gt:
                p["masks"] = [d / "gt_masks_full" / s / cat / name / f"{name}_{k}.png" for k in ks]
        else:
            p = {
                "frames": [d / "visual_frames" / name / f"{name}.mp4_{k}.png" for k in ks],
                "masks": [d / "gt_masks" / s / name / f"{name}_{k}.png" for k in ks],
                "wav": d / "audio_wav" / s / f"{name}.wav",
                "pkl": d / "audio_log_mel" / s / f"{name}.pkl",
            }
        return p

    def n_masks(self) -> int:
        return 1 if (self.mode == "s4" and self.split == "train" and not self.full_gt) else N_FRAMES

    # loading ----------------------------------------------------------------------------------
    def _log_mel(self, p: dict) -> np.ndarray:
        use_wav = self.audio == "wav" or (self.audio == "auto" and (p["wav"].is_file() or not p["pkl"].is_file()))
        if not use_wav:
            return read_log_mel_pkl(p["pkl"])
        x, sr = read_wav(p["wav"])
        try:
            return log_mel_for_clip(x, sr, N_FRAMES)
        except ValueError as e:
            raise DataFileError(p["wav"], f"cannot compute log-mel ({e})") from e

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.items):
            raise IndexError(index)
        name, cat = self.items[index]
        p = self.paths(index)
        frames = preprocess_frames([read_rgb(f) for f in p["frames"]], self.size)
        log_mel = self._log_mel(p)
        n = self.n_masks()
        masks = np.zeros((N_FRAMES, self.size, self.size), dtype=np.float32)
        valid = np.zeros(N_FRAMES, dtype=bool)
        for k in range(n):
            masks[k] = _resize_mask(read_mask(p["masks"][k]), self.size)
            valid[k] = True
        return {
            "frames": torch.from_numpy(frames),
            "log_mel": torch.from_numpy(log_mel),
            "masks": torch.from_numpy(masks),
            "valid": torch.from_numpy(valid),
            "name": name,
            "category": cat,
        }

    def check(self) -> None:
        """Raise `DataFileError` for the first missing file of the split (cheap: existence only)."""
        for i in range(len(self)):
            p = self.paths(i)
            for f in p["frames"] + p["masks"][: self.n_masks()]:
                _need(f)
            if self.audio == "pkl" or (self.audio == "auto" and not p["wav"].is_file() and p["pkl"].is_file()):
                _need(p["pkl"])
            else:
                _need(p["wav"])


class AVSBenchS4(AVSBenchDataset):
    """Single-source (S4) split."""

    def __init__(self, root, split: str = "train", size: int = 224, full_gt: bool = False, audio: str = "auto"):
        super().__init__(root, "s4", split, size=size, full_gt=full_gt, audio=audio)


class AVSBenchMS3(AVSBenchDataset):
    """Multi-source (MS3) split."""

    def __init__(self, root, split: str = "train", size: int = 224, full_gt: bool = False, audio: str = "auto"):
        super().__init__(root, "ms3", split, size=size, full_gt=full_gt, audio=audio)


def collate(batch: list) -> dict:
    """Stack items: frames [B, 5, 3, H, W], log_mel [B, 5, 1, 96, 64], masks [B, 5, H, W], valid [B, 5];
    name / category become lists."""
    if not batch:
        raise ValueError("collate got an empty batch")
    out = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else list(vals)
    return out


__all__ = ["AVSBenchDataset", "AVSBenchS4", "AVSBenchMS3", "collate", "DataFileError", "MissingDataFile",
           "read_rgb", "read_mask", "read_wav", "read_log_mel_pkl", "SAMPLE_RATE"]
