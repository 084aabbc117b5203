"""`autr eval`: AVSBench metrics on a dataset or on freshly generated SynthAVS clips, the audio-swap
test, and overlay pictures.

audio_swap (SynthAVS only, where every object's mask is known): clip A is run with the audio of
another clip B whose sounding object also appears, silent, in A. On each frame where that object is
visible and A's own sounding object too, the prediction "moves" when its IoU with B's object (as seen
in A) is higher than its IoU with A's sounding object. `audio_swap` is the fraction of such frames
that moved: 1.0 means the model follows the sound, 0.0 means it follows the picture.

`model` is an AuTR or TPAVI module or anything with their inference interface: `eval()` and `to(device)`
returning the model, and `model(frames [T,3,H,W], log_mel [T,1,96,64])` returning {"masks": [T,H,W] logits, ...}.
Every call is one whole clip (all its T frames, never frames of several clips): TPAVI's frames see each other
within a clip, so that is the unit it is defined on (AuTR gives the same masks either way).
`autr.export.verify.OrtModel` is such an object for an exported ONNX graph in ONNX Runtime, so the
fp32 / fp16 / int8 graphs are scored by this same code (`python -m autr.benchmarks.precision_accuracy`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from autr.metrics import AVSBenchAccumulator
from autr.preprocess import SAMPLE_RATE, log_mel_for_clip, preprocess_frames


def clip_inputs(clip, size: int):
    """Model inputs of a SynthClip: frames [T,3,size,size] and log-mel [T,1,96,64]."""
    frames = torch.from_numpy(preprocess_frames(clip.frames, size))
    log_mel = torch.from_numpy(log_mel_for_clip(clip.wav, SAMPLE_RATE, len(clip.frames)))
    return frames, log_mel


@torch.no_grad()
def predict(model, frames, log_mel, device) -> torch.Tensor:
    """Mask logits [T,H,W] on the CPU."""
    return model(frames.to(device), log_mel.to(device))["masks"].float().cpu()


def _iou(pred: np.ndarray, mask: np.ndarray) -> float:
    union = np.logical_or(pred, mask).sum()
    return float(np.logical_and(pred, mask).sum() / union) if union else 0.0


def _resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[-1] == size:
        return mask.astype(bool)
    idx = (np.arange(size) + 0.5) * mask.shape[-1] / size
    idx = np.minimum(idx.astype(int), mask.shape[-1] - 1)
    return mask[..., idx[:, None], idx[None, :]].astype(bool)


def swap_target(a, b, t: int, size: int):
    """(mask of B's sounding objects as they appear silent in A, A's own GT) at frame t, or None."""
    heard = set(b.sounding_per_second[t])
    if not heard or heard & set(a.sounding_per_second[t]):
        return None
    parts = [a.object_masks[k, t] for k, o in enumerate(a.objects)
             if o["category"] in heard and not o["on"][t]]
    if not parts:
        return None
    target = _resize_nearest(np.maximum.reduce(parts), size)
    own = _resize_nearest(a.masks[t], size)
    if not target.any() or not own.any():
        return None
    return target, own


def audio_swap(model, clips: list, size: int, device, progress: bool = True) -> dict:
    """The fraction of frames whose predicted mask follows swapped-in audio (see module docstring)."""
    moved = frames = pairs = 0
    inputs = [clip_inputs(c, size) for c in clips]
    for i, a in enumerate(tqdm(clips, desc="audio swap", leave=False, disable=not progress)):
        for j in list(range(i + 1, len(clips))) + list(range(i)):
            b = clips[j]
            targets = {t: swap_target(a, b, t, size) for t in range(len(a.frames))}
            targets = {t: v for t, v in targets.items() if v is not None}
            if not targets:
                continue
            pred = predict(model, inputs[i][0], inputs[j][1], device).numpy() > 0
            for t, (target, own) in targets.items():
                moved += _iou(pred[t], target) > _iou(pred[t], own)
                frames += 1
            pairs += 1
            break
    return {"audio_swap": moved / frames if frames else None, "audio_swap_pairs": pairs,
            "audio_swap_frames": frames}


def overlay(frames_uint8: np.ndarray, gt: np.ndarray, logits: np.ndarray, path) -> None:
    """A PNG with three rows: frames, ground truth (green), prediction (red), one column per frame."""
    from PIL import Image

    t, h, w, _ = frames_uint8.shape
    pred = logits > 0
    gt = _resize_nearest(gt, h) if gt.shape[-1] != h else gt.astype(bool)
    rows = [frames_uint8]
    for mask, colour in ((gt, (0, 220, 0)), (pred, (230, 0, 0))):
        tinted = frames_uint8.astype(np.float32).copy()
        tinted[mask] = 0.45 * tinted[mask] + 0.55 * np.array(colour, np.float32)
        rows.append(tinted.astype(np.uint8))
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def evaluate_synthetic(model, mode: str = "s4", seed: int = 1000, clips: int = 100, size: int = 224,
                       device="cpu", open_set: bool = False, overlays: str | None = None,
                       progress: bool = True, design: str = "distinct") -> dict:
    """Metrics on the test split that `autr data synth --seed SEED [--open-set] [--design DESIGN]` would write,
    generated in memory. With `open_set`, also seen / unseen-category mIoU and F-score (`design="factored"`:
    unseen categories are new combinations of factors seen in training)."""
    from autr.synth import dataset_clip

    model.eval().to(device)
    acc = AVSBenchAccumulator()
    generated = []
    for i in tqdm(range(clips), desc=f"SynthAVS {mode} seed {seed}", leave=False, disable=not progress):
        clip = dataset_clip(seed, mode, "test", i, size=size, open_set=open_set, design=design)
        generated.append(clip)
        frames, log_mel = clip_inputs(clip, size)
        logits = predict(model, frames, log_mel, device)
        acc.update(logits, torch.from_numpy(clip.masks.astype(np.float32)))
        if overlays:
            overlay(clip.frames, clip.masks, logits.numpy(), Path(overlays) / f"{mode}_{seed}_{i:04d}.png")
    result = {**acc.compute(), **audio_swap(model, generated, size, device, progress)}
    if open_set:
        result.update(_seen_unseen(model, generated, size, device))
    return result


def _seen_unseen(model, clips, size, device) -> dict:
    out = {}
    for name, group in (("seen", [c for c in clips if not c.unseen]), ("unseen", [c for c in clips if c.unseen])):
        if group:
            acc = AVSBenchAccumulator()
            for c in group:
                acc.update(predict(model, *clip_inputs(c, size), device), torch.from_numpy(c.masks.astype(np.float32)))
            res = acc.compute()
            out[f"miou_{name}"], out[f"fscore_{name}"] = res["miou"], res["fscore"]
    return out


def evaluate_dataset(model, root, mode: str = "s4", split: str = "test", size: int = 224, device="cpu",
                     overlays: str | None = None, max_clips: int | None = None, progress: bool = True) -> dict:
    """AVSBench metrics (one video per batch) on an AVSBench / SynthAVS directory."""
    from autr.datasets import AVSBenchDataset
    from autr.preprocess import denormalize

    data = AVSBenchDataset(root, mode, split, size=size)
    model.eval().to(device)
    acc = AVSBenchAccumulator()
    n = len(data) if max_clips is None else min(max_clips, len(data))
    for i in tqdm(range(n), desc=f"{mode} {split}", leave=False, disable=not progress):
        item = data[i]
        logits = predict(model, item["frames"], item["log_mel"], device)
        acc.update(logits, item["masks"])
        if overlays:
            overlay(denormalize(item["frames"].numpy()), item["masks"].numpy(), logits.numpy(),
                    Path(overlays) / f"{item['name']}.png")
    return acc.compute()
