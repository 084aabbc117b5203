"""Model configurations and the preset registry (pure Python: no torch import).

A preset is a named `AutrConfig`. `get_config("small", dynamic_conv=False)` returns the preset
with fields overridden, which is how the paper's ablations (Table IV) are expressed.

| preset      | backbone   | d   | enc/dec layers | audio encoder        | use                          |
|-------------|------------|-----|----------------|----------------------|------------------------------|
| paper-r50   | resnet50   | 256 | 6 / 6          | VGGish (full)        | the paper's ResNet-50 model  |
| paper-pvt   | pvt_v2_b5  | 256 | 6 / 6          | VGGish (full)        | the paper's PVT-v2 model     |
| small       | pvt_v2_b0  | 128 | 3 / 3          | VGGish, 1/4 width    | real-time CPU streaming      |
| tiny        | resnet10t  | 64  | 1 / 2          | VGGish, 1/8 width    | unit tests (seconds per step)|

The TPAVI family (`arch="tpavi"`: the AVSBench baseline of Zhou et al., ECCV 2022, in `autr/tpavi.py`, whose
docstring names the source of each of its design choices) shares the config class and the encoders:

| preset      | backbone   | C   | audio encoder        | use                                        |
|-------------|------------|-----|----------------------|--------------------------------------------|
| tpavi-r50   | resnet50   | 256 | VGGish (full)        | the paper's ResNet-50 TPAVI                |
| tpavi-pvt   | pvt_v2_b5  | 256 | VGGish (full)        | the paper's PVT-v2 TPAVI                   |
| tpavi-small | pvt_v2_b0  | 128 | VGGish, 1/4 width    | SynthAVS comparisons with AuTR `small`     |
| tpavi-tiny  | resnet10t  | 32  | VGGish, 1/8 width    | unit tests                                 |

TPAVI reads only `TPAVI_FIELDS` (C = `d_model`, the width of its neck, TPAVI blocks and decoder); the AuTR-only
fields (queries, heads, layers, the mask head's and the options') are ignored, and turning an AuTR-only option
on for a TPAVI config is an error.

Where each value comes from (`PROVENANCE` says it per field; a test keeps it complete). The AuTR paper
(Liu et al. 2023) fixes the design (VGGish audio encoder, three visual scales, audio-aware queries, dynamic
convolution, frozen pretrained encoders) and the ResNet-50 / PVT-v2 backbones, but it does not state the
transformer's width, heads, sampling points, layers or number of queries. Those are the defaults of the
code AuTR builds on: ReferFormer (Wu et al. 2022: d=256, 8 heads, 4 points, Nq=5, 4/4 layers, FFN 2048)
and Deformable-DETR (Zhu et al. 2021: d=256, 8 heads, 4 points, 6/6 layers, FFN 1024). The paper presets
take ReferFormer's d, heads, points and Nq, and Deformable-DETR's 6/6 layers and FFN 1024. The `small` and
`tiny` sizes and every option marked "ours" are this toolkit's.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

_BACKBONES = {
    # timm name -> feature indices for strides (4, 8, 16, 32)
    "resnet50": (1, 2, 3, 4),
    "resnet18": (1, 2, 3, 4),
    "resnet10t": (1, 2, 3, 4),
    "pvt_v2_b0": (0, 1, 2, 3),
    "pvt_v2_b1": (0, 1, 2, 3),
    "pvt_v2_b2": (0, 1, 2, 3),
    "pvt_v2_b5": (0, 1, 2, 3),
}


QUERY_RULES = ("clip", "frame")
ARCHS = {"autr": "AuTR", "tpavi": "TPAVI"}  # config value -> the architecture's name
# The fields a TPAVI model reads (autr/tpavi.py); the rest of AutrConfig is AuTR's.
TPAVI_FIELDS = ("backbone", "d_model", "audio_dim", "vggish_width", "vggish_fc", "image_size", "max_frames",
                "freeze_visual", "freeze_audio")
# AuTR-only options and their off values: a TPAVI config must leave them off (it has nothing they could change).
AUTR_OPTIONS = {"audio_queries": True, "dynamic_conv": True, "pixel_pool": False, "dynamic_reference": False,
                "aux_loss": False}
ENCODERS = {"visual": "freeze_visual", "audio": "freeze_audio"}  # encoder module -> its freeze field
# Fields that change how a model trains or which query it shows, not the shapes of its weights: a checkpoint
# loads into a config that differs from its own in these (e.g. `--init` with other freeze flags).
BEHAVIOUR_FIELDS = ("freeze_visual", "freeze_audio", "query_select", "aux_loss")
# Values that configs written before a field existed were made with (checkpoints and export sidecars of
# earlier versions): they picked the query per frame.
LEGACY_VALUES = {"query_select": "frame"}


@dataclass(frozen=True)
class AutrConfig:
    """Every hyper-parameter of an AuTR model. Stored in checkpoints and export sidecars."""

    name: str = "custom"
    arch: str = "autr"  # "autr" (autr/model.py) or "tpavi" (the AVSBench baseline, autr/tpavi.py)
    backbone: str = "resnet50"
    d_model: int = 256  # C_av: width of fusion, transformer and queries
    n_heads: int = 8
    n_points: int = 4  # deformable sampling points per head and level
    n_queries: int = 5  # Nq audio-aware queries
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 1024
    dropout: float = 0.1
    audio_dim: int = 128  # VGGish embedding width
    vggish_width: float = 1.0  # channel multiplier of the VGGish conv stack (1.0 = original)
    vggish_fc: int = 4096  # width of the VGGish fully connected layers (4096 = original)
    mask_dim: int = 8  # channels of the stride-4 mask features the dynamic conv reads
    dyn_channels: int = 8  # channels of the dynamic conv stack (CondInst uses 8)
    dyn_layers: int = 3  # layers of the dynamic conv stack
    image_size: int = 224  # default input size (H = W); any multiple of 32 works
    max_frames: int = 5  # T_max: frames per clip the model accepts (AVSBench clips have 5)
    audio_queries: bool = True  # ablation (paper Table IV): False = plain learnable queries
    dynamic_conv: bool = True  # ablation (paper Table IV): False = dot-product mask head
    # Frozen encoders: no gradients, batch-norm statistics fixed (eval mode even in model.train()).
    # build_model sets them for the encoders it loads from pretrained files, unless told otherwise.
    freeze_visual: bool = False
    freeze_audio: bool = False
    # Inference: "clip" shows, on every frame, the query with the highest mean sounding probability over
    # the clip (one query per clip, as training matches); "frame" picks the best query of each frame.
    # At T = 1 (the live runtime) the two are the same.
    query_select: str = "clip"
    pixel_pool: bool = False  # option: global-average-pooling context after each pixel-decoder stage
    dynamic_reference: bool = False  # option: decoder reference points refined from the queries, per layer
    aux_loss: bool = False  # training: the losses on every decoder layer's queries (adds "aux_outputs")
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes, kept in checkpoints

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {self.arch!r}")
        if self.backbone not in _BACKBONES:
            raise ValueError(
                f"unknown backbone {self.backbone!r}; supported: {', '.join(sorted(_BACKBONES))}"
            )
        if self.arch == "tpavi":
            on = [k for k, off in AUTR_OPTIONS.items() if getattr(self, k) != off]
            if on:
                raise ValueError(f"{', '.join(on)} {'is an AuTR option' if len(on) == 1 else 'are AuTR options'}; "
                                 f"arch 'tpavi' has no such part")
            if self.d_model < 2:
                raise ValueError(f"d_model must be >= 2 for arch 'tpavi' (its blocks use d_model // 2 channels), "
                                 f"got {self.d_model}")
        elif self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for k in ("n_points", "n_queries", "enc_layers", "dec_layers", "max_frames", "dyn_layers"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.query_select not in QUERY_RULES:
            raise ValueError(f"query_select must be one of {', '.join(QUERY_RULES)}; got {self.query_select!r}")

    @property
    def feature_indices(self) -> tuple:
        return _BACKBONES[self.backbone]

    @property
    def frozen_encoders(self) -> list[str]:
        """Names of the frozen encoder modules ("visual", "audio")."""
        return [name for name, flag in ENCODERS.items() if getattr(self, flag)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AutrConfig":
        """A config from its dict; keys missing from an older file take LEGACY_VALUES, then the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; this toolkit knows {sorted(names)}")
        return cls(**{**LEGACY_VALUES, **d})

    def replace(self, **overrides) -> "AutrConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


# The source of every AutrConfig default, i.e. of the paper presets' values. "ReferFormer" is Wu et al.
# 2022 (github.com/wjn922/ReferFormer, opts.py); "Deformable-DETR" is Zhu et al. 2021.
PROVENANCE = {
    "name": "ours (a label)",
    "arch": "ours: the AuTR paper's model; 'tpavi' selects the AVSBench baseline (Zhou et al., ECCV 2022)",
    "backbone": "paper: ResNet-50 (paper-r50)",
    "d_model": "ReferFormer and Deformable-DETR (hidden_dim 256); the paper does not state it",
    "n_heads": "ReferFormer and Deformable-DETR (nheads 8); the paper does not state it",
    "n_points": "ReferFormer and Deformable-DETR (enc/dec_n_points 4); the paper does not state it",
    "n_queries": "ReferFormer (num_queries 5); the paper does not state it",
    "enc_layers": "Deformable-DETR (6; ReferFormer uses 4); the paper does not state it",
    "dec_layers": "Deformable-DETR (6; ReferFormer uses 4); the paper does not state it",
    "ffn_dim": "Deformable-DETR (1024; ReferFormer uses 2048); the paper does not state it",
    "dropout": "ReferFormer and Deformable-DETR (0.1)",
    "audio_dim": "paper: VGGish's 128-d embedding",
    "vggish_width": "paper: the original VGGish",
    "vggish_fc": "paper: the original VGGish",
    "mask_dim": "CondInst (8 mask-feature channels read by the dynamic convolution)",
    "dyn_channels": "ReferFormer (dynamic_mask_channels 8, as CondInst)",
    "dyn_layers": "ReferFormer (controller_layers 3, as CondInst)",
    "image_size": "AVSBench (224 x 224 frames), which the paper uses",
    "max_frames": "AVSBench (5 frames per clip)",
    "audio_queries": "paper (audio-aware queries; Table IV ablates them)",
    "dynamic_conv": "paper (dynamic-convolution mask head; Table IV ablates it)",
    "freeze_visual": "paper (pretrained encoders are frozen): build_model freezes an encoder it loads from a "
                     "pretrained file; False by default because an encoder without one trains from scratch",
    "freeze_audio": "paper (pretrained encoders are frozen): as freeze_visual, for the VGGish audio encoder",
    "query_select": "ReferFormer's inference (the query of highest clip-mean score), the rule consistent with "
                    "training's per-clip matching; no difference measured on SynthAVS "
                    "(benchmarks/results/paper_fidelity_synth.json)",
    "pixel_pool": "ours (the paper's pixel decoder aggregates 'with cross-attention and pooling', no details); "
                  "off: on SynthAVS it lowered held-out mIoU and audio_swap "
                  "(benchmarks/results/paper_fidelity_synth.json)",
    "dynamic_reference": "ours, after Deformable-DETR's iterative refinement and ReferFormer's predicted "
                         "reference points; off: on SynthAVS its mIoU gain stayed within the seed spread and "
                         "audio_swap did not rise (benchmarks/results/paper_fidelity_synth.json)",
    "aux_loss": "DETR / ReferFormer option (ReferFormer trains with it); off: no change beyond the seed spread on "
                "SynthAVS (benchmarks/results/paper_fidelity_synth.json)",
    "extra": "ours (free-form notes)",
}

_PRESETS: dict[str, AutrConfig] = {}
_SOURCES: dict[str, dict] = {}


def register_preset(cfg: AutrConfig, sources: "dict | str" = "ours") -> AutrConfig:
    """Register a preset; `sources` names the source of every field it overrides ("ours": all of them)."""
    if cfg.name in _PRESETS:
        raise ValueError(f"preset {cfg.name!r} is already registered")
    base = AutrConfig()
    changed = [f.name for f in dataclasses.fields(cfg)
               if f.name != "name" and getattr(cfg, f.name) != getattr(base, f.name)]
    sources = {k: sources for k in changed} if isinstance(sources, str) else dict(sources)
    missing = sorted(set(changed) - set(sources))
    if missing:
        raise ValueError(f"preset {cfg.name!r} overrides {missing} without naming their source")
    _PRESETS[cfg.name] = cfg
    _SOURCES[cfg.name] = sources
    return cfg


def provenance(preset: str) -> dict:
    """{field: where the preset's value comes from} for every config field of a registered preset."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(_PRESETS)}")
    return {f.name: _SOURCES[preset].get(f.name, PROVENANCE[f.name]) for f in dataclasses.fields(AutrConfig)}


register_preset(AutrConfig(name="paper-r50", backbone="resnet50"))
register_preset(AutrConfig(name="paper-pvt", backbone="pvt_v2_b5"),
                sources={"backbone": "paper: PVT-v2 (the b5 size is AVSBench's TPAVI baseline's)"})
register_preset(
    AutrConfig(
        name="small", backbone="pvt_v2_b0", d_model=128, enc_layers=3, dec_layers=3,
        ffn_dim=512, vggish_width=0.25, vggish_fc=512,
    )
)
register_preset(
    AutrConfig(
        name="tiny", backbone="resnet10t", d_model=64, n_heads=4, n_points=2, enc_layers=1,
        dec_layers=2, ffn_dim=128, vggish_width=0.125, vggish_fc=128, dropout=0.0,
    )
)


# Sources of the TPAVI presets' values, for the fields TPAVI reads ("AVSBench code" is the public repository
# github.com/OpenNLPLab/AVSBench, avs_scripts/avs_s4 and avs_ms3). The fields it does not read say so.
TPAVI_PROVENANCE = {
    "arch": "AVSBench baseline (Zhou et al., ECCV 2022); each design choice and its source: autr/tpavi.py",
    "backbone": "AVSBench paper and code (ResNet_AVSModel: ResNet-50)",
    "d_model": "AVSBench code (train.py builds the model with channel=256)",
    "audio_dim": "AVSBench paper and code (VGGish 128-d embeddings, no PCA post-processing)",
    "vggish_width": "AVSBench code (the original VGGish)",
    "vggish_fc": "AVSBench code (the original VGGish)",
    "image_size": "AVSBench (224 x 224 frames)",
    "max_frames": "AVSBench (5 frames per clip; the TPAVI block attends over them)",
    "freeze_visual": "ours (as AuTR: frozen when loaded from a pretrained file, so both train alike); the AVSBench "
                     "code trains its ResNet / PVT backbone",
    "freeze_audio": "AVSBench code (VGGish runs frozen, under no_grad) when loaded from a file, as AuTR",
}


def register_tpavi_preset(cfg: AutrConfig, sources: dict | None = None) -> AutrConfig:
    """Register a TPAVI preset: TPAVI_PROVENANCE for the fields TPAVI reads, "not read" for the rest."""
    unread = {f.name: "not read by arch 'tpavi' (an AuTR field)" for f in dataclasses.fields(cfg)
              if f.name not in (*TPAVI_FIELDS, *TPAVI_PROVENANCE, "name", "extra")}
    return register_preset(cfg, sources={**unread, **TPAVI_PROVENANCE, **(sources or {})})


register_tpavi_preset(AutrConfig(name="tpavi-r50", arch="tpavi", backbone="resnet50"))
register_tpavi_preset(AutrConfig(name="tpavi-pvt", arch="tpavi", backbone="pvt_v2_b5"),
                      sources={"backbone": "AVSBench paper and code (PVT_AVSModel: pvt_v2_b5)"})
register_tpavi_preset(
    AutrConfig(name="tpavi-small", arch="tpavi", backbone="pvt_v2_b0", d_model=128, vggish_width=0.25,
               vggish_fc=512),
    sources={"backbone": "ours (AuTR small's encoders, so SynthAVS runs compare at like cost)",
             "d_model": "ours (AuTR small's width)", "vggish_width": "ours (as AuTR small)",
             "vggish_fc": "ours (as AuTR small)"})
register_tpavi_preset(
    AutrConfig(name="tpavi-tiny", arch="tpavi", backbone="resnet10t", d_model=32, vggish_width=0.125,
               vggish_fc=128),
    sources={k: "ours (unit tests)" for k in ("backbone", "d_model", "vggish_width", "vggish_fc")})


def list_presets() -> list[str]:
    return list(_PRESETS)


def get_config(preset: "str | AutrConfig", **overrides) -> AutrConfig:
    """The preset's config with `overrides` applied (unknown names raise ValueError)."""
    if isinstance(preset, AutrConfig):
        cfg = preset
    else:
        if preset not in _PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(_PRESETS)}")
        cfg = _PRESETS[preset]
    return cfg.replace(**overrides) if overrides else cfg
