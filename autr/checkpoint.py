"""Checkpoints: safetensors weights with the model config in their metadata. Loading never unpickles.

The config carries everything the weights need to mean the same thing again, freezing included: a model
loaded from a checkpoint has the same encoders frozen (`AutrConfig.freeze_visual` / `freeze_audio`) and
picks its query by the same rule (`query_select`). Checkpoints of earlier versions, without those fields,
load as they were made: per-frame query selection, and the visual backbone frozen where their
`backbone_frozen` metadata says so. The config's `arch` says which model class the weights belong to (AuTR, or
TPAVI for the `tpavi-*` presets); checkpoints written before that field are AuTR's.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autr import __version__
from autr.presets import ARCHS, BEHAVIOUR_FIELDS, TPAVI_FIELDS, AutrConfig

if TYPE_CHECKING:  # importing this module costs no torch: `autr demo` reads DEFAULT_CHECKPOINT and hashes it
    import torch

CONFIG_KEY = "autr_config"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match its (or the requested) config."""


def save_checkpoint(model, path, metadata: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write `model`'s weights and config to `path` atomically. `dtype` (e.g. float16) shrinks the
    file; floating tensors are cast back to float32 on load. `metadata` values are stored as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {CONFIG_KEY: model.cfg.to_json(), "autr_version": __version__}
    for k, v in (metadata or {}).items():
        meta[k] = json.dumps(v)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path) -> tuple[AutrConfig, dict, dict]:
    """(config, tensors, metadata) of a checkpoint, with a clear error for anything unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path} has no '{CONFIG_KEY}' metadata: it was not written by autr")
    extra = {}
    for k, v in meta.items():
        try:
            extra[k] = json.loads(v)
        except json.JSONDecodeError:
            extra[k] = v
    try:
        config = extra.pop(CONFIG_KEY)
        if "freeze_visual" not in config:  # written before freezing was configuration
            config["freeze_visual"] = bool(extra.get("backbone_frozen", False))
        cfg = AutrConfig.from_dict(config)
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: its config is not valid for this toolkit ({exc})") from None
    return cfg, tensors, extra


def load_checkpoint(path, expect: "AutrConfig | str | None" = None):
    """Build the model a checkpoint describes (AuTR or TPAVI, by its config's `arch`) and load its weights (float32).

    `expect` (a preset name or config) guards against loading a checkpoint of another config: a checkpoint of
    the other architecture is one line saying so; otherwise any architecture field that differs is named in the
    error (for TPAVI only the fields it reads, `presets.TPAVI_FIELDS`). The input size is not one: a checkpoint
    records the size it was trained at, and the model runs at any multiple of 32; nor are the BEHAVIOUR_FIELDS,
    freezing and the query rule, which do not change the weights.
    """
    from autr.model import model_class
    from autr.presets import get_config
    from autr.weights import describe_mismatch

    cfg, tensors, _ = read_checkpoint(path)
    if expect is not None:
        want = get_config(expect)
        if want.arch != cfg.arch:
            raise CheckpointError(f"{path} is a {ARCHS[cfg.arch]} checkpoint (arch {cfg.arch!r}, config {cfg.name!r}); "
                                  f"expected {ARCHS[want.arch]} (arch {want.arch!r}, config {want.name!r})")
        fields = TPAVI_FIELDS if cfg.arch == "tpavi" else want.to_dict()
        diff = {k: (getattr(want, k), getattr(cfg, k)) for k in fields
                if k not in ("name", "extra", "dropout", "image_size", *BEHAVIOUR_FIELDS)
                and getattr(cfg, k) != getattr(want, k)}
        if diff:
            lines = ", ".join(f"{k}: expected {a!r}, checkpoint has {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{path} was trained with another config ({lines})")
    model = model_class(cfg)(cfg)
    target = model.state_dict()
    problem = describe_mismatch(target, tensors)
    if problem:
        raise CheckpointError(f"{path} does not match its own config {cfg.name!r}:\n{problem}")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in tensors.items()})
    model.eval()
    return model


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "autr-small-synth.safetensors"


def resolve_checkpoint(checkpoint) -> Path:
    """A checkpoint path; "default" names the model shipped inside the package."""
    if str(checkpoint) == "default":
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(
                f"the embedded default model ({DEFAULT_CHECKPOINT.name}) is not in this install; "
                "pass --checkpoint FILE (a checkpoint written by `autr train`)")
        return DEFAULT_CHECKPOINT
    return Path(checkpoint)


def load_model(checkpoint="default", device="cpu"):
    """The model of a checkpoint file (or the embedded default), in eval mode on `device`."""
    return load_checkpoint(resolve_checkpoint(checkpoint)).to(device)
