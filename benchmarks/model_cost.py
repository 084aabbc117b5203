"""Model cost per preset: parameters, GFLOPs per frame and eager CPU latency.

FLOPs are counted by `torch.utils.flop_counter` (2 FLOPs per multiply-add) over convolutions,
matmuls and attention; the deformable sampling itself (grid_sample) is not counted, so the figure
is a slight lower bound. Latency is wall time of `model(frames, log_mel)` in eval mode under
`torch.inference_mode()`, after warm-up, with the machine's default thread count.
"""
from __future__ import annotations

import platform
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from autr.model import build_model


def dummy_clip(t: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, size, size, generator=g), torch.randn(t, 1, 96, 64, generator=g)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops_per_frame(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one frame at size x size, in GFLOPs (2 per multiply-add)."""
    model = model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # the FLOP counter's module tracker needs no autograd graph
    try:
        with FlopCounterMode(display=False) as counter:
            model(*dummy_clip(1, size))
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return counter.get_total_flops() / 1e9


def cpu_latency_ms(model: torch.nn.Module, t: int, size: int, warmup: int = 2, iters: int = 5) -> dict:
    """Median / min / max wall time of one clip of T frames, in milliseconds."""
    from autr.benchmarks.core import time_cpu

    model = model.eval()
    frames, log_mel = dummy_clip(t, size)
    with torch.inference_mode():
        times = time_cpu(lambda: model(frames, log_mel), warmup, iters)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "iters": iters}


def preset_cost(preset: str, size: int = 224, frames=(1, 5), measure: bool = False,
                warmup: int = 2, iters: int = 5) -> dict:
    model = build_model(preset, seed=0)
    row = {"preset": preset, "backbone": model.cfg.backbone, "d_model": model.cfg.d_model,
           "params_m": count_parameters(model) / 1e6, "gflops_per_frame": gflops_per_frame(model, size)}
    if measure:
        row["cpu_latency_ms"] = {str(t): cpu_latency_ms(model, t, size, warmup, iters) for t in frames}
    return row


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
            or platform.machine(), "python": platform.python_version()}
