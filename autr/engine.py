"""Training and evaluation loops (one epoch each), DETR-style: no orchestration, no I/O.

A batch is a dict from `autr.datasets.collate`: `frames` [B,T,3,H,W], `log_mel` [B,T,1,96,64],
`masks` [B,T,H,W] in {0,1}, `valid` [B,T] (frames that carry supervision). Training runs only the
supervised frames through a model whose frames are independent (AuTR: `frames_independent = True`,
`supervised_frames`); a model that mixes the frames of a clip (TPAVI) gets whole clips, and its criterion
leaves out the frames without ground truth. Evaluation always runs whole clips.
"""
from __future__ import annotations

import contextlib
import math

import torch
from tqdm import tqdm

from autr.metrics import AVSBenchAccumulator


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def supervised_frames(batch: dict) -> dict:
    """The batch cut to the frames that carry ground truth, where every clip has them at the same positions
    (AVSBench S4 train: the first frame of each clip); otherwise the batch as it is.

    Frames without ground truth take no part in the matching or the losses, and frames are independent in
    the model, so they need not go through it at all: the loss and its gradients stay the same (a trainable
    backbone's batch-norm statistics and the dropout draws are the only things that see fewer frames) and
    S4 steps cost a fifth. Clips whose supervised frames differ keep all frames; the criterion masks them.
    """
    valid = batch["valid"]
    keep = valid.any(0)  # [T]
    if bool(keep.all()) or not bool(keep.any()) or not torch.equal(valid, keep.expand_as(valid)):
        return batch
    idx = keep.nonzero()[:, 0]
    return {**batch, **{k: batch[k][:, idx] for k in ("frames", "log_mel", "masks", "valid")}}


def _float(out):
    """Model outputs in float32 (AMP): tensors, and the tensors inside lists and dicts (auxiliary layers, TPAVI's
    per-stage features)."""
    if isinstance(out, dict):
        return {k: _float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [_float(v) for v in out]
    return out.float() if isinstance(out, torch.Tensor) else out


def frames_independent(model) -> bool:
    """Whether `model` (or the module inside a DDP wrapper) computes each frame on its own."""
    return bool(getattr(getattr(model, "module", model), "frames_independent", True))


def train_step(model, criterion, batch, optimizer, device, *, scaler=None, amp=False, max_norm: float = 0.1,
               supervised_only: bool = True) -> dict:
    """One optimiser step on one batch; returns the loss terms (tensors). Raises on a non-finite loss.

    `supervised_only` (always, in training) runs only the frames with ground truth (`supervised_frames`) when the
    model's frames are independent (`frames_independent`); False runs every frame, as before issue 12, for the
    step-time comparison in benchmarks/fidelity.py. A model that mixes frames always gets whole clips.
    """
    if supervised_only and frames_independent(model):
        batch = supervised_frames(batch)
    frames = batch["frames"].to(device, non_blocking=True)
    log_mel = batch["log_mel"].to(device, non_blocking=True)
    t = frames.shape[1]
    with _autocast(device, amp):
        out = model(frames, log_mel)
    losses = criterion(_float(out), batch["masks"].to(device).flatten(0, 1).float(),
                       valid=batch["valid"].to(device).flatten(0, 1), clip_len=t)
    loss = losses["loss"]
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()}; stopping (lower the learning rate or disable AMP)")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return losses


def train_one_epoch(model, criterion, loader, optimizer, device, *, scaler=None, amp=False,
                    max_norm: float = 0.1, progress: bool = True, desc: str = "train", lr_at=None,
                    first_step: int = 0) -> dict:
    """One pass over `loader`; returns the mean of each loss term. Raises on a non-finite loss.

    `lr_at(step)` (optional) sets the learning rate of every parameter group before each step; steps count
    from `first_step` (the global step of this epoch's first batch).
    """
    model.train()
    totals, count = {}, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + i)
        losses = train_step(model, criterion, batch, optimizer, device, scaler=scaler, amp=amp, max_norm=max_norm)
        b = batch["frames"].shape[0]
        for k, v in losses.items():
            if k != "matched":
                totals[k] = totals.get(k, 0.0) + v.item() * b
        count += b
        bar.set_postfix(loss=f"{totals['loss'] / count:.4f}")
    return {k: v / max(count, 1) for k, v in totals.items()}


@torch.no_grad()
def evaluate(model, loader, device, *, amp=False, progress: bool = True, desc: str = "eval") -> dict:
    """AVSBench metrics, one video per update (miou, fscore, miou_dataset)."""
    model.eval()
    acc = AVSBenchAccumulator()
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        frames = batch["frames"].to(device)
        with _autocast(device, amp):
            masks = model(frames, batch["log_mel"].to(device))["masks"].float().cpu()
        for i in range(frames.shape[0]):
            acc.update(masks[i], batch["masks"][i])
    return acc.compute()
