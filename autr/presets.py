"""Model configurations and the preset registry (pure Python: no torch import).

A preset is a named `AutrConfig`. `get_config("small", dynamic_conv=False)` returns the preset
with fields overridden, which is how the paper's ablations (Table IV) are expressed.

| preset      | backbone   | d   | enc/dec layers | audio encoder        | use                          |
|-------------|------------|-----|----------------|----------------------|------------------------------|
| paper-r50   | resnet50   | 256 | 6 / 6          | VGGish (full)        | the paper's ResNet-50 model  |
| paper-pvt   | pvt_v2_b5  | 256 | 6 / 6          | VGGish (full)        | the paper's PVT-v2 model     |
| small       | pvt_v2_b0  | 128 | 3 / 3          | VGGish, 1/4 width    | real-time CPU streaming      |
| tiny        | resnet10t  | 64  | 1 / 2          | VGGish, 1/8 width    | unit tests (seconds per step)|

The paper fixes d=256, 8 heads, 4 sampling points and Nq=5 audio-aware queries; the numbers of
encoder / decoder layers follow Deformable-DETR (6 / 6), which AuTR builds on.
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


@dataclass(frozen=True)
class AutrConfig:
    """Every hyper-parameter of an AuTR model. Stored in checkpoints and export sidecars."""

    name: str = "custom"
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
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes, kept in checkpoints

    def __post_init__(self):
        if self.backbone not in _BACKBONES:
            raise ValueError(
                f"unknown backbone {self.backbone!r}; supported: {', '.join(sorted(_BACKBONES))}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for k in ("n_points", "n_queries", "enc_layers", "dec_layers", "max_frames", "dyn_layers"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")

    @property
    def feature_indices(self) -> tuple:
        return _BACKBONES[self.backbone]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AutrConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; this toolkit knows {sorted(names)}")
        return cls(**d)

    def replace(self, **overrides) -> "AutrConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


_PRESETS: dict[str, AutrConfig] = {}


def register_preset(cfg: AutrConfig) -> AutrConfig:
    if cfg.name in _PRESETS:
        raise ValueError(f"preset {cfg.name!r} is already registered")
    _PRESETS[cfg.name] = cfg
    return cfg


register_preset(AutrConfig(name="paper-r50", backbone="resnet50"))
register_preset(AutrConfig(name="paper-pvt", backbone="pvt_v2_b5"))
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
