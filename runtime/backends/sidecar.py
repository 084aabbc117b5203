"""Reading the JSON sidecar that ``autr export`` writes next to an artifact.

The runtime never guesses how a model wants its inputs. It reads what the exporter recorded:

* ``input_size``: ``[H, W]``;
* ``frames``: ``{"min": T_MIN, "max": T_MAX}``, the range of T the graph / engine accepts;
* ``preprocessing``: :func:`autr.preprocess.parameters` at export time, which must equal this runtime's --
  a model exported for other preprocessing is refused with the differences named, never fed inputs it
  never saw.

``autr export onnx`` writes ``DIR/model.json`` next to the graphs; ``autr export trt`` writes
``DIR/model.engine.json`` next to the engine (the same three keys, plus the build facts).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SidecarError, one_line

__all__ = ["ModelSpec", "find_sidecar", "read_sidecar", "parse_spec", "check_preprocessing", "frames_may_share_a_call",
           "ONNX_SIDECAR"]

ONNX_SIDECAR = "model.json"  # written by `autr export onnx` beside model.portable.onnx / model.plugin.onnx
_REEXPORT = "re-export the model with `autr export onnx` (or rebuild the engine with `autr export trt`)"


@dataclass
class ModelSpec:
    input_size: tuple
    t_min: int
    t_max: int


def frames_may_share_a_call(config: dict) -> bool:
    """Whether frames of different requests (streams) may go through one call of the model of `config`: an AuTR
    model (TPAVI's block mixes the frames of a call) whose query rule is "frame" (AuTR's "clip" rule picks one
    query from all frames of a call; a config from before the rule existed picks per frame)."""
    return config.get("arch", "autr") == "autr" and config.get("query_select", "frame") == "frame"


def find_sidecar(artifact) -> Path | None:
    """The sidecar of an artifact: its own ``<file>.json`` (an engine's), else ``model.json`` beside it."""
    p = Path(artifact)
    for c in (p.with_name(p.name + ".json"), p.with_name(ONNX_SIDECAR)):
        if c.is_file() and c != p:
            return c
    return None


def read_json_object(path) -> dict:
    """The JSON object in `path`; SidecarError (one line) when it cannot be read or is not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SidecarError(f"cannot read the sidecar {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise SidecarError(f"the sidecar {path} is not a JSON object")
    return data


def read_sidecar(artifact) -> tuple:
    """(path, dict) of the artifact's sidecar; SidecarError when missing or unreadable."""
    path = find_sidecar(artifact)
    if path is None:
        raise SidecarError(f"no sidecar next to {artifact} (looked for {Path(artifact).name}.json and "
                           f"{ONNX_SIDECAR}): the runtime reads the input size and T range from it and never guesses "
                           "-- export with `autr export onnx` (and `autr export trt` for an engine) to get one")
    return path, read_json_object(path)


def _ints(value, n: int):
    if isinstance(value, (list, tuple)) and len(value) == n and \
            all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value):
        return tuple(value)
    return None


def parse_spec(data: dict, where: str = "the sidecar") -> ModelSpec:
    """Input size, T range and preprocessing check of a sidecar dict (SidecarError naming what is wrong)."""
    size = _ints(data.get("input_size"), 2)
    if size is None:
        raise SidecarError(f"{where} does not record the model's input size as input_size [H, W] "
                           f"(found {data.get('input_size')!r}); {_REEXPORT} -- the runtime does not guess it")
    frames = data.get("frames")
    t_range = _ints([frames.get("min"), frames.get("max")], 2) if isinstance(frames, dict) else None
    if t_range is None:
        raise SidecarError(f"{where} does not record the range of T as frames {{min, max}} (found {frames!r}); "
                           f"{_REEXPORT} -- the runtime does not guess it")
    if t_range[1] < t_range[0]:
        raise SidecarError(f"{where} records an impossible T range {t_range[0]}..{t_range[1]}")
    check_preprocessing(data.get("preprocessing"), where)
    return ModelSpec(input_size=size, t_min=t_range[0], t_max=t_range[1])


def _leaves(block: dict, prefix: str = ""):
    for key, value in block.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    try:
        return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-9))
    except (ValueError, TypeError):
        return False


def check_preprocessing(recorded, where: str = "the sidecar") -> None:
    """The sidecar's ``preprocessing`` must be :func:`autr.preprocess.parameters` of this runtime: every value
    recorded there, and nothing this runtime does left unrecorded."""
    import autr.preprocess as pp

    if not isinstance(recorded, dict):
        raise SidecarError(f"{where} does not record the preprocessing the model was exported for; {_REEXPORT}")
    ours = dict(_leaves(pp.parameters()))
    theirs = dict(_leaves(recorded))
    bad = [f"{k}={theirs[k]!r} (runtime: {v!r})" for k, v in ours.items() if k in theirs and not _same(theirs[k], v)]
    bad += [f"{k} not recorded" for k in ours if k not in theirs]
    bad += [f"{k}={theirs[k]!r} unknown to this runtime" for k in theirs if k not in ours]
    if bad:
        raise SidecarError(f"{where} was exported for other preprocessing than autr.preprocess: {', '.join(bad)}; "
                           f"{_REEXPORT}")
