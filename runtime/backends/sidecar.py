"""Reading the JSON sidecar of an exported artifact (``DIR/model.json`` next to ``DIR/model.portable.onnx``).

The runtime never guesses how a model wants its inputs: the input size and the range of T come from the
sidecar, and every preprocessing parameter the sidecar records is checked against :mod:`autr.preprocess`
(the one definition of preprocessing) -- a model exported for other preprocessing is refused with a clear
error rather than fed inputs it never saw.

Accepted spellings (the exporter's sidecar is the reference; older or hand-written ones are read too):

* input size: ``input_size`` (int, ``[H, W]`` or ``{"height", "width"}``), ``image_size``, or the same
  keys inside ``preprocessing`` / ``model_config`` / ``config``;
* T range: ``t_range`` / ``T_range`` / ``frames_range`` (``[min, max]`` or ``{"min", "max"}``),
  ``t_min`` + ``t_max``, ``T_min`` + ``T_max``, or ``max_frames`` (min 1);
* preprocessing: a ``preprocessing`` (or ``preprocess``) mapping; every key that names a constant of
  :mod:`autr.preprocess` (``sample_rate``, ``num_mel_bins``, ``live_window_samples``, ``imagenet_mean`` /
  ``mean``, ``imagenet_std`` / ``std``, ``log_offset``, ...) must match it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SidecarError

__all__ = ["ModelSpec", "find_sidecar", "read_sidecar", "parse_spec", "check_preprocessing"]


@dataclass
class ModelSpec:
    input_size: tuple
    t_min: int
    t_max: int | None
    path: Path | None = None
    raw: dict = field(default_factory=dict)


def find_sidecar(artifact) -> Path | None:
    """The sidecar of an artifact: ``<file>.json``, ``<stem>.json``, ``<dir>/<engine stem>.json`` or
    ``<dir>/model.json`` (first that exists)."""
    p = Path(artifact)
    cands = [p.with_name(p.name + ".json"), p.with_suffix(".json")]
    first = p.name.split(".")[0]
    cands += [p.with_name(first + ".json"), p.with_name("model.json")]
    for c in cands:
        if c.is_file() and c != p:
            return c
    return None


def read_sidecar(artifact) -> tuple:
    """(path, dict) of the artifact's sidecar; SidecarError when missing or unreadable."""
    path = find_sidecar(artifact)
    if path is None:
        raise SidecarError(f"no sidecar next to {artifact} (looked for {Path(artifact).name}.json, "
                           f"{Path(artifact).stem}.json and model.json): the runtime reads the input size and T "
                           "range from it and never guesses -- export with `autr export` to get one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SidecarError(f"cannot read the sidecar {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SidecarError(f"the sidecar {path} is not a JSON object")
    return path, data


def _size(value, where: str):
    if value is None:
        return None
    if isinstance(value, bool):
        raise SidecarError(f"bad input size {value!r} in {where}")
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, dict):
        h = value.get("height", value.get("h", value.get("H")))
        w = value.get("width", value.get("w", value.get("W")))
        if h is None or w is None:
            raise SidecarError(f"bad input size {value!r} in {where}")
        return int(h), int(w)
    if isinstance(value, (list, tuple)):
        v = [int(x) for x in value]
        if len(v) == 2:
            return v[0], v[1]
        if len(v) == 1:
            return v[0], v[0]
        if len(v) in (3, 4) and v[-3] == 3:  # [3, H, W] / [T, 3, H, W]
            return v[-2], v[-1]
    raise SidecarError(f"bad input size {value!r} in {where}")


def _range(value, where: str):
    if isinstance(value, dict):
        lo, hi = value.get("min", 1), value.get("max")
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
    else:
        raise SidecarError(f"bad T range {value!r} in {where}; expected [min, max]")
    return int(lo), (None if hi is None else int(hi))


_SIZE_KEYS = ("input_size", "image_size", "frame_size")
_NESTS = ("", "preprocessing", "preprocess", "model_config", "config", "model", "inputs")


def _lookup(data: dict, keys):
    for nest in _NESTS:
        d = data if not nest else data.get(nest)
        if isinstance(d, str):
            try:
                d = json.loads(d)
            except ValueError:
                d = None
        if not isinstance(d, dict):
            continue
        for k in keys:
            if k in d and d[k] is not None:
                return d[k], (k if not nest else f"{nest}.{k}")
    return None, None


def parse_spec(data: dict, where: str = "the sidecar") -> ModelSpec:
    """Input size and T range from a sidecar dict (SidecarError when it does not record them)."""
    value, key = _lookup(data, _SIZE_KEYS)
    if value is None:
        frames = data.get("inputs", {}).get("frames") if isinstance(data.get("inputs"), dict) else None
        if isinstance(frames, dict) and isinstance(frames.get("shape"), list) and \
                all(isinstance(x, int) for x in frames["shape"][-2:]):
            value, key = frames["shape"], "inputs.frames.shape"
    size = _size(value, f"{where} ({key})")
    if size is None:
        raise SidecarError(f"{where} does not record the model's input size (input_size); re-export the model "
                           "with `autr export` -- the runtime does not guess it")
    t_min, t_max = 1, None
    found = False
    frames = data.get("frames")  # the exporter's form: "frames": {"min": 1, "max": T_MAX, ...}
    if isinstance(frames, dict) and ("max" in frames or "min" in frames):
        t_min, t_max = _range(frames, f"{where} (frames)")
        found = True
    for k in ("t_range", "T_range", "frames_range", "time_range", "T"):
        if found:
            break
        value, _ = _lookup(data, (k,))
        if value is not None and not isinstance(value, (int, float)):
            t_min, t_max = _range(value, f"{where} ({k})")
            found = True
    if not found:
        for lo_k, hi_k in (("t_min", "t_max"), ("T_min", "T_max"), ("min_frames", "max_frames")):
            lo, _ = _lookup(data, (lo_k,))
            hi, _ = _lookup(data, (hi_k,))
            if lo is not None or hi is not None:
                t_min, t_max = int(lo if lo is not None else 1), (None if hi is None else int(hi))
                found = True
                break
    if not found:
        raise SidecarError(f"{where} does not record the range of T (t_range [min, max]); re-export the model "
                           "with `autr export` -- the runtime does not guess it")
    if t_min < 1 or (t_max is not None and t_max < t_min):
        raise SidecarError(f"{where} records an impossible T range {t_min}..{t_max}")
    check_preprocessing(data, where)
    return ModelSpec(input_size=size, t_min=t_min, t_max=t_max, raw=data)


_ALIASES = {"mean": "IMAGENET_MEAN", "std": "IMAGENET_STD", "image_mean": "IMAGENET_MEAN", "image_std": "IMAGENET_STD",
            "audio_sample_rate": "SAMPLE_RATE", "sr": "SAMPLE_RATE", "mel_bins": "NUM_MEL_BINS",
            "window_samples": "LIVE_WINDOW_SAMPLES", "audio_window_samples": "LIVE_WINDOW_SAMPLES",
            "hop_samples": "STFT_HOP_SAMPLES"}


def _walk(block: dict, prefix: str = ""):
    for key, value in block.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", key, value


def check_preprocessing(data: dict, where: str = "the sidecar") -> None:
    """Every preprocessing constant the sidecar records must equal :mod:`autr.preprocess`'s.

    Nested groups (the exporter writes ``preprocessing.frames`` and ``preprocessing.audio``) are walked;
    a key naming a constant of :mod:`autr.preprocess` (or an alias: ``mean``, ``std``, ...) must match it,
    ``scale`` must be 1/255 and ``color`` RGB. Descriptive strings (layouts, resize method) are not checked.
    """
    import autr.preprocess as pp

    block = data.get("preprocessing", data.get("preprocess"))
    if isinstance(block, str):
        try:
            block = json.loads(block)
        except ValueError:
            block = None
    if not isinstance(block, dict):
        return
    bad = []
    for path, key, value in _walk(block):
        low = key.lower()
        if low in ("color", "colour", "channel_order") and isinstance(value, str):
            if value.upper() != "RGB":
                bad.append(f"{path}={value!r} (runtime: 'RGB')")
            continue
        if low == "scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not np.isclose(float(value), 1.0 / 255.0, rtol=1e-6):
                bad.append(f"{path}={value!r} (runtime: 1/255)")
            continue
        const = _ALIASES.get(low, key.upper())
        if const not in getattr(pp, "__all__", ()) or isinstance(value, str) or value is None:
            continue
        ours = getattr(pp, const)
        if isinstance(ours, np.ndarray) and ours.ndim > 1:
            continue
        try:
            same = np.allclose(np.asarray(value, dtype=np.float64), np.asarray(ours, dtype=np.float64),
                               rtol=1e-6, atol=1e-9)
        except (ValueError, TypeError):
            same = False
        if not same:
            bad.append(f"{path}={value!r} (runtime: {np.asarray(ours).tolist()!r})")
    if bad:
        raise SidecarError(f"{where} was exported for other preprocessing than autr.preprocess: {', '.join(bad)}")
