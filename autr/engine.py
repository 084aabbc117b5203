"""Training and evaluation loops (one epoch each), DETR-style: no orchestration, no I/O.

A batch is a dict from `autr.datasets.collate`: `frames` [B,T,3,H,W], `log_mel` [B,T,1,96,64],
`masks` [B,T,H,W] in {0,1}, `valid` [B,T] (frames that carry supervision).
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


def train_one_epoch(model, criterion, loader, optimizer, device, *, scaler=None, amp=False,
                    max_norm: float = 0.1, progress: bool = True, desc: str = "train") -> dict:
    """One pass over `loader`; returns the mean of each loss term. Raises on a non-finite loss."""
    model.train()
    totals, count = {}, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        frames = batch["frames"].to(device, non_blocking=True)
        log_mel = batch["log_mel"].to(device, non_blocking=True)
        b, t = frames.shape[:2]
        with _autocast(device, amp):
            out = model(frames, log_mel)
        losses = criterion({k: v.float() for k, v in out.items()},
                           batch["masks"].to(device).flatten(0, 1).float(),
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
