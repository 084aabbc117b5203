"""`autr train`: a whole training run — data, model, optimiser, checkpoints, resume, logs and plots.

The preset picks the architecture (`AutrConfig.arch`): AuTR, or the TPAVI baseline (`tpavi-*` presets,
autr/tpavi.py), trained by the same loop with its own criterion (`autr.criterion.build_criterion`: the
setting `mode` decides whether TPAVI's audio-visual matching term is on) and on whole clips.

Paper defaults: AdamW, lr 1e-4, weight decay 5e-4, batch 8 clips, 50 epochs, AMP on GPU.
Multi-GPU / multi-node through `torchrun` (DDP; gloo on CPU, NCCL on GPU): every process reads
its shard of the training set, rank 0 evaluates and writes.

Frozen encoders (`AutrConfig.freeze_visual` / `freeze_audio`) are configuration: a new run freezes the
encoders it loads from pretrained files (`--backbone-weights`, `--vggish-weights`), `--init` keeps the
freezing of the checkpoint it starts from, `--resume` that of the run; `freeze` (the CLI's
`--freeze-visual/--train-visual`, `--freeze-audio/--train-audio`) overrides a new run either way. No frozen
parameter reaches the optimiser (`check_optimizer` refuses the run otherwise).

Learning rate: constant (the paper's), `step` (x0.1 after `lr_drop` epochs, default 4/5 of the run as
Deformable-DETR's 40 of 50) or `cosine` (to 0 at the last step), each after an optional linear warm-up of
`warmup_epochs`; it is a function of the global step, so `--resume` continues the same curve.

The run directory holds:
    last.safetensors         model weights + config (+ epoch, metrics) — loadable by `autr eval`
    last.state.safetensors   optimiser / AMP state for `--resume`
    best.safetensors         the epoch with the best validation mIoU
    metrics.jsonl            one JSON line per epoch (losses, val metrics, time)
    curves.png               loss and validation curves
    run.json                 the arguments of the run
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from autr.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from autr.criterion import build_criterion
from autr.engine import evaluate, train_one_epoch
from autr.model import build_model
from autr.presets import ENCODERS


@dataclass
class TrainConfig:
    data: str
    out: str
    mode: str = "s4"
    preset: str = "small"
    overrides: dict = field(default_factory=dict)  # config fields, e.g. {"dynamic_conv": False}
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 5e-4
    workers: int = 2
    size: int | None = None  # input size; default: the preset's image_size
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # only takes effect on CUDA
    full_gt: bool = False  # SynthAVS S4: supervise all 5 frames (AVSBench S4 train has only the first)
    max_train_clips: int | None = None
    max_val_clips: int | None = None
    resume: bool = False
    init: str | None = None  # fine-tune from this checkpoint (paper Table II: S4 -> MS3)
    backbone_weights: str | None = None
    vggish_weights: str | None = None
    freeze: dict = field(default_factory=dict)  # {"freeze_visual": bool, "freeze_audio": bool}: overrides
    lr_schedule: str = "constant"  # constant | step | cosine
    warmup_epochs: float = 0.0
    lr_drop: int | None = None  # step schedule: lr x0.1 after this many epochs (default: 4/5 of the run)
    threads: int | None = None  # torch CPU threads (default: torch's)
    progress: bool = True

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0; got {self.warmup_epochs}")
        if self.lr_drop is not None and self.lr_drop < 1:
            raise ValueError(f"lr_drop must be an epoch >= 1; got {self.lr_drop}")
        unknown = sorted(set(self.freeze) - set(ENCODERS.values()))
        if unknown:
            raise ValueError(f"freeze takes {', '.join(ENCODERS.values())}; got {unknown}")
        if self.resume and self.freeze:
            raise ValueError("--resume continues a run with the encoders it froze; freezing flags only apply to a "
                             "new run (or --init)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1; got {self.threads}")


LR_SCHEDULES = ("constant", "step", "cosine")


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """lr_at(step) -> the learning rate at a global step (0-based) of a run of cfg.epochs epochs."""
    total = cfg.epochs * steps_per_epoch
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    drop = (cfg.lr_drop if cfg.lr_drop is not None else max(1, round(0.8 * cfg.epochs))) * steps_per_epoch

    def lr_at(step: int) -> float:
        factor = 1.0
        if cfg.lr_schedule == "step" and step >= drop:
            factor = 0.1
        elif cfg.lr_schedule == "cosine":
            progress = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        if step < warm:
            factor *= (step + 1) / warm
        return cfg.lr * factor

    return lr_at


def freeze_flags(cfg: TrainConfig) -> dict:
    """freeze_visual / freeze_audio of a new run: the --init checkpoint's, then True for an encoder loaded
    from a pretrained file, then the explicit `cfg.freeze` overrides."""
    flags = {}
    if cfg.init:
        init_cfg = read_checkpoint(cfg.init)[0]
        flags = {f: getattr(init_cfg, f) for f in ENCODERS.values()}
    if cfg.backbone_weights:
        flags["freeze_visual"] = True
    if cfg.vggish_weights:
        flags["freeze_audio"] = True
    return {**flags, **cfg.freeze}


def check_optimizer(model, optimizer) -> None:
    """Refuse a run where a frozen encoder's parameter is trainable or is in the optimiser."""
    frozen = model.frozen_parameters()
    if any(p.requires_grad for p in frozen):
        raise RuntimeError(f"a parameter of a frozen encoder ({', '.join(model.cfg.frozen_encoders)}) requires grad")
    ids = {id(p) for p in frozen}
    leaked = sum(id(p) in ids for group in optimizer.param_groups for p in group["params"])
    if leaked:
        raise RuntimeError(f"{leaked} frozen parameter(s) of {', '.join(model.cfg.frozen_encoders)} reached the "
                           "optimiser")


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return device


def _datasets(cfg: TrainConfig, size: int):
    from autr.datasets import AVSBenchDataset

    train = AVSBenchDataset(cfg.data, cfg.mode, "train", size=size, full_gt=cfg.full_gt)
    val = AVSBenchDataset(cfg.data, cfg.mode, "val", size=size)
    if cfg.max_train_clips:
        train = Subset(train, range(min(cfg.max_train_clips, len(train))))
    if cfg.max_val_clips:
        val = Subset(val, range(min(cfg.max_val_clips, len(val))))
    return train, val


def save_state(path: Path, optimizer, scaler, epoch: int, best: float) -> None:
    """Optimiser and scaler state as safetensors (tensors) + JSON metadata (everything else)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    meta = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars),
            "epoch": str(epoch), "best": str(best),
            "scaler": json.dumps(scaler.state_dict() if scaler is not None else {})}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_state(path: Path, optimizer, scaler) -> tuple[int, float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    slots: dict = {}
    for key, value in list(tensors.items()) + list(json.loads(meta["scalars"]).items()):
        idx, name = key.split(".", 1)
        slots.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": json.loads(meta["param_groups"])})
    if scaler is not None and json.loads(meta["scaler"]):
        scaler.load_state_dict(json.loads(meta["scaler"]))
    return int(meta["epoch"]), float(meta["best"])


def plot_curves(jsonl: Path, png: Path) -> None:
    """Loss terms and validation metrics per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k for k in rows[0]["train"] if k.startswith("loss")]:  # AuTR's terms or TPAVI's
        ax1.plot(epochs, [r["train"][key] for r in rows], label=key, marker="." if len(rows) < 30 else None)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("training loss"), ax1.set_yscale("log"), ax1.legend()
    for key in ("miou", "fscore", "miou_dataset"):
        ax2.plot(epochs, [r["val"][key] for r in rows], label=key, marker="." if len(rows) < 30 else None)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("validation"), ax2.set_ylim(0, 1), ax2.legend()
    ax2.grid(alpha=0.3), ax1.grid(alpha=0.3)
    fig.suptitle(png.parent.name)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns the best validation metrics.

    Raises:
        ValueError: ``epochs`` < 1 (nothing would be trained and no checkpoint written), or a resumed run that
            has already done ``epochs`` epochs.
    """
    if int(cfg.epochs) < 1:
        raise ValueError(f"epochs must be >= 1 (a run of {cfg.epochs} epochs trains nothing and writes no "
                         "checkpoint)")
    rank, world, local_rank = _distributed()
    device = _device(cfg.device, local_rank)
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)

    if cfg.resume:
        last, state = out / "last.safetensors", out / "last.state.safetensors"
        if not last.is_file() or not state.is_file():
            raise FileNotFoundError(f"--resume: {out} has no last.safetensors / last.state.safetensors")
        model = load_checkpoint(last)  # frozen as its config says
    else:
        overrides = {**cfg.overrides, **({"image_size": cfg.size} if cfg.size else {}), **freeze_flags(cfg)}
        model = build_model(cfg.preset, seed=cfg.seed, backbone_weights=cfg.backbone_weights,
                            vggish_weights=cfg.vggish_weights, **overrides)
        if cfg.init:
            model.load_state_dict(load_checkpoint(cfg.init, expect=model.cfg).state_dict())
    size = cfg.size or model.cfg.image_size
    model.to(device)

    train_set, val_set = _datasets(cfg, size)
    sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed) if world > 1 else None
    from autr.datasets import collate

    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg.workers, collate_fn=collate, drop_last=len(train_set) > cfg.batch_size,
                              persistent_workers=cfg.workers > 0,
                              generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(val_set, batch_size=1, shuffle=False, num_workers=cfg.workers, collate_fn=collate)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    check_optimizer(model, optimizer)
    lr_at = lr_schedule(cfg, len(train_loader))
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    criterion = build_criterion(model.cfg, cfg.mode)
    start, best = 0, -1.0
    if cfg.resume:
        start, best = load_state(out / "last.state.safetensors", optimizer, scaler)
        if start >= cfg.epochs:
            raise ValueError(f"--resume: the run in {out} has already done {start} epoch(s); pass --epochs above "
                             f"{start} to train further")
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False) if world > 1 else model

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(
            {**dataclasses.asdict(cfg), "model": model.cfg.to_dict(), "criterion": repr(criterion),
             "world_size": world}, indent=2))
    progress = cfg.progress and rank == 0
    for epoch in range(start, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        tic = time.time()
        losses = train_one_epoch(net, criterion, train_loader, optimizer, device, scaler=scaler, amp=amp,
                                 progress=progress, desc=f"epoch {epoch + 1}/{cfg.epochs}", lr_at=lr_at,
                                 first_step=epoch * len(train_loader))
        if rank == 0:
            val = evaluate(model, val_loader, device, amp=amp, progress=progress)
            row = {"epoch": epoch + 1, "train": losses, "val": val, "seconds": time.time() - tic,
                   "lr": optimizer.param_groups[0]["lr"]}
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            meta = {"epoch": epoch + 1, "val": val, "data": cfg.data, "mode": cfg.mode}
            save_checkpoint(model, out / "last.safetensors", metadata=meta)
            if val["miou"] > best:
                best = val["miou"]
                save_checkpoint(model, out / "best.safetensors", metadata=meta)
            save_state(out / "last.state.safetensors", optimizer, scaler, epoch + 1, best)
            plot_curves(out / "metrics.jsonl", out / "curves.png")
            if progress:
                print(f"epoch {epoch + 1}: loss {losses['loss']:.4f}  val mIoU {val['miou']:.4f}  "
                      f"F {val['fscore']:.4f}  ({row['seconds']:.0f}s)", flush=True)
        if world > 1:
            torch.distributed.barrier()
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"best_miou": best, "rank": rank}
