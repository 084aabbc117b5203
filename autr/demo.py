"""`autr demo`: one synthetic scene — a sounding object and silent distractors — through the model.

Prints, per frame, the sounding score and the IoU of the predicted mask with the object that makes
the sound and with the largest silent one, and writes `overlay.png` (frames | GT | prediction) and
`summary.json` to the output folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from autr.evaluation import _iou, _resize_nearest, clip_inputs, overlay


def run_demo(model, seed: int = 7, out="autr-demo") -> str:
    from autr.synth import make_clip

    out = Path(out)
    size = model.cfg.image_size
    clip = make_clip(seed, "s4", size)
    frames, log_mel = clip_inputs(clip, size)
    model.eval()
    with torch.inference_mode():
        model(frames[:1], log_mel[:1])  # warm-up
        start = time.perf_counter()
        result = model(frames, log_mel)
        elapsed = time.perf_counter() - start
    logits, scores = result["masks"].numpy(), result["scores"].numpy()
    pred = logits > 0
    sounding = next(k for k, o in enumerate(clip.objects) if o["sounding"])
    silent = [k for k, o in enumerate(clip.objects) if not o["sounding"]]
    biggest = max(silent, key=lambda k: clip.object_masks[k].sum())
    rows = []
    for t in range(len(pred)):
        rows.append({
            "frame": t, "score": float(scores[t]),
            "iou_sounding": _iou(pred[t], _resize_nearest(clip.object_masks[sounding, t], size)),
            "iou_silent": _iou(pred[t], _resize_nearest(clip.object_masks[biggest, t], size)),
        })
    overlay(clip.frames, clip.masks, logits, out / "overlay.png")
    summary = {"model": model.cfg.name, "scene_seed": seed,
               "sounding": clip.objects[sounding]["category"],
               "largest_silent": clip.objects[biggest]["category"],
               "ms_per_frame": elapsed * 1e3 / len(pred), "frames": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"scene {seed}: '{summary['sounding']}' sounds, '{summary['largest_silent']}' is the largest "
             f"silent object ({model.cfg.name}, {summary['ms_per_frame']:.0f} ms/frame)",
             f"{'frame':>5} {'score':>7} {'IoU sounding':>13} {'IoU silent':>11}"]
    lines += [f"{r['frame']:>5} {r['score']:>7.2f} {r['iou_sounding']:>13.3f} {r['iou_silent']:>11.3f}" for r in rows]
    mean = np.mean([r["iou_sounding"] for r in rows]), np.mean([r["iou_silent"] for r in rows])
    lines.append(f"mean IoU with the sounding object {mean[0]:.3f}, with the silent one {mean[1]:.3f}")
    lines.append(f"wrote {out / 'overlay.png'} and {out / 'summary.json'}")
    return "\n".join(lines)
