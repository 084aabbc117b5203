"""The two encoders: a timm visual backbone (strides 4/8/16/32) and a VGGish-architecture audio encoder; and
`EncoderModel`, the base of the models built on them (AuTR, TPAVI): encoder freezing by config."""
from __future__ import annotations

import timm
import torch
from torch import nn


class VisualBackbone(nn.Module):
    """A timm model cut into feature maps at strides 4, 8, 16 and 32.

    Strides 8/16/32 feed the transformer (the paper's three scales); stride 4 feeds only the pixel
    decoder's last FPN stage, where the mask features are made. Never downloads weights: load a
    local file with `autr.weights.load_backbone_weights`. Freezing is the model's config
    (`freeze_visual`, applied by `autr.model.AuTR`), not this module's.
    """

    def __init__(self, name: str, feature_indices: tuple):
        super().__init__()
        self.body = timm.create_model(name, pretrained=False, features_only=True,
                                      out_indices=feature_indices)
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if self.strides != [4, 8, 16, 32]:
            raise ValueError(f"backbone {name} gives strides {self.strides}, expected [4, 8, 16, 32]")

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        return self.body(frames)


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


class VGGish(nn.Module):
    """The VGGish network (Hershey et al. 2017) on one 0.96 s log-mel example [B, 1, 96, 64] -> [B, 128].

    Module names follow the common PyTorch port (torchvggish), so its state dict loads key for key
    at width 1.0: `features.{0,3,6,8,11,13}` are the six 3x3 convs, `embeddings.{0,2,4}` the three
    fully connected layers. The conv output is flattened in (time, frequency, channel) order, as
    the TensorFlow original does, so those weights mean what they meant there. `width` scales the
    conv channels and `fc` the hidden fully connected width for the small presets.
    """

    def __init__(self, width: float = 1.0, fc: int = 4096, out_dim: int = 128):
        super().__init__()
        c1, c2, c3, c4 = (_ch(c, width) for c in (64, 128, 256, 512))

        def conv(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(inplace=True)]

        pool = nn.MaxPool2d(2, 2)
        self.features = nn.Sequential(
            *conv(1, c1), pool,
            *conv(c1, c2), pool,
            *conv(c2, c3), *conv(c3, c3), pool,
            *conv(c3, c4), *conv(c4, c4), pool,
        )
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * 6 * 4, fc), nn.ReLU(inplace=True),
            nn.Linear(fc, fc), nn.ReLU(inplace=True),
            nn.Linear(fc, out_dim), nn.ReLU(inplace=True),
        )

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.features(log_mel)  # [B, C, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)


class EncoderModel(nn.Module):
    """A model with the two encoders as attributes `visual` and `audio` and a config `cfg`: the encoders its
    config freezes (`cfg.frozen_encoders`) take no gradient and stay in eval mode (fixed batch-norm statistics),
    even under `model.train()`. Subclasses build their modules, then call `freeze_encoders()`."""

    # Each frame computed on its own (AuTR; DESIGN.md): training may run only the frames with ground truth
    # (`autr.engine.supervised_frames`). TPAVI (autr/tpavi.py), whose block attends across the clip, sets False.
    frames_independent = True

    def freeze_encoders(self) -> None:
        for name in self.cfg.frozen_encoders:
            getattr(self, name).requires_grad_(False)
        self.train()

    def train(self, mode: bool = True):
        """As nn.Module.train, but frozen encoders stay in eval mode (fixed batch-norm statistics)."""
        super().train(mode)
        for name in self.cfg.frozen_encoders:
            getattr(self, name).eval()
        return self

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters of the frozen encoders (none of which may reach an optimiser)."""
        return [p for name in self.cfg.frozen_encoders for p in getattr(self, name).parameters()]
