"""Pretrained weights from local files only (nothing is downloaded).

Backbone (`--backbone-weights FILE`): a timm or torchvision state dict of the same architecture as
the preset's backbone (`.safetensors`, or `.pth` / `.pt` / `.bin` read with `weights_only=True`).
Classifier keys (`fc.*`, `head.*`, `classifier.*`, `head_drop.*`) are ignored; a `module.` or
`backbone.` prefix and a `state_dict` / `model` wrapper are removed; nested stage names of the full
timm model (`stages.0.`) are renamed to the feature wrapper's (`stages_0.`).

VGGish (`--vggish-weights FILE`): the common PyTorch VGGish state dict (the torchvggish port of
the TensorFlow release, e.g. `vggish-10086976.pth`). Its keys map one to one onto `model.audio`:

    features.0  / .3  / .6  / .8  / .11 / .13  -> the six 3x3 convs (64, 128, 256, 256, 512, 512)
    embeddings.0 / .2 / .4                      -> fc 12288->4096, 4096->4096, 4096->128
    pproc.*  (PCA post-processing)              -> ignored (AuTR uses the raw 128-d embedding)

Only full-width VGGish presets (`vggish_width=1.0`, `vggish_fc=4096`: paper-r50, paper-pvt) can
take these weights; the small presets use a narrower VGGish trained from scratch.

Loading only loads. Freezing is configuration (`AutrConfig.freeze_visual` / `freeze_audio`): `build_model`
freezes the encoders it loads from these files (weights and batch-norm statistics, as in the paper) unless
told otherwise, and a checkpoint carries the flags wherever its weights go next.
"""
from __future__ import annotations

from pathlib import Path

import torch

IGNORED_BACKBONE_PREFIXES = ("fc.", "head.", "classifier.", "head_drop.", "pre_logits.", "fc_norm.")
IGNORED_VGGISH_PREFIXES = ("pproc.",)
STRIPPED_PREFIXES = ("module.", "backbone.", "body.")


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, or does not fit the model."""


def read_state_dict(path) -> dict:
    """Tensors of a local weights file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with non-tensor objects, ...
        raise WeightsError(f"cannot read weights from {path}: {exc}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    out = {}
    for k, v in sd.items():
        for p in STRIPPED_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def describe_mismatch(target: dict, sd: dict) -> str | None:
    """Lines naming the missing / unexpected / wrongly shaped keys of `sd` against `target`, or None."""
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    wrong = sorted(k for k in set(sd) & set(target) if sd[k].shape != target[k].shape)
    if not (missing or unexpected or wrong):
        return None

    def show(keys):
        return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

    lines = []
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if wrong:
        lines.append("  shape mismatches: " + show(
            [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in wrong]))
    return "\n".join(lines)


def _fit(module: torch.nn.Module, sd: dict, ignored: tuple, what: str, path) -> None:
    """Load `sd` into `module` strictly, raising one WeightsError that names every mismatch."""
    sd = {k: v for k, v in sd.items() if not k.startswith(ignored)}
    problem = describe_mismatch(module.state_dict(), sd)
    if problem:
        raise WeightsError(f"{path} does not fit the {what}:\n{problem}")
    module.load_state_dict(sd, strict=True)


def to_feature_net_keys(sd: dict, target: dict) -> dict:
    """Rename keys of a whole timm model to its features-only wrapper's names.

    timm's feature wrapper flattens nested sequential stages, so `stages.0.blocks...` of the full
    model is `stages_0.blocks...` in the wrapper; keys that already fit are kept as they are.
    """
    out = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        index, _, tail = rest.partition(".")
        flat = f"{head}_{index}.{tail}"
        out[flat if k not in target and index.isdigit() and flat in target else k] = v
    return out


def load_backbone_weights(model, path) -> None:
    """Load a local timm / torchvision backbone state dict into `model.visual` (freezing is the config's)."""
    body = model.visual.body
    sd = to_feature_net_keys(read_state_dict(path), body.state_dict())
    _fit(body, sd, IGNORED_BACKBONE_PREFIXES,
         f"{model.cfg.backbone} backbone of preset {model.cfg.name!r}", path)


def load_vggish_weights(model, path) -> None:
    """Load a local PyTorch VGGish state dict into `model.audio` (see the module docstring for the keys)."""
    cfg = model.cfg
    if cfg.vggish_width != 1.0 or cfg.vggish_fc != 4096 or cfg.audio_dim != 128:
        raise WeightsError(
            f"preset {cfg.name!r} uses a reduced VGGish (width {cfg.vggish_width}, fc {cfg.vggish_fc}); "
            "pretrained VGGish weights fit only full-width presets such as paper-r50 / paper-pvt"
        )
    _fit(model.audio, read_state_dict(path), IGNORED_VGGISH_PREFIXES, "VGGish audio encoder", path)
