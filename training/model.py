"""Hybrid-attention deepfake classifiers: the model registry, the Xception-style family trained from
scratch (`small`, `base`) and the FP16 wrapper. The face-pretrained family (`face`, the default) is in
``training/face_hybrid.py``; both share ``training/blocks.py``.

The Xception family: depthwise-separable convolutions, CBAM attention after the entry, middle and
exit flows, and a fourth input channel holding the log FFT magnitude of the image.

Everything a served model needs happens inside ``forward``: it takes plain RGB in [0, 1] of shape
(N, 3, S, S), normalises it, computes the frequency channel as a DFT by matrix products (fixed cos/sin
bases, so ONNX and TensorRT can export it; they have no FFT op) and returns one logit per image,
positive meaning "fake".

These modules depend on torch alone: they travel inside the TorchServe archive.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from training.blocks import CBAM, Cast, FrequencyFeatures, SeparableConv
from training.face_hybrid import FAMILY as FACE_FAMILY
from training.face_hybrid import SIZES as FACE_SIZES
from training.face_hybrid import FaceHybridConfig, FaceHybridNet

# ImageNet statistics; the frequency channel is standardised per image instead.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """One architecture, fully described; stored in the weights' metadata."""

    size: str
    input_size: int
    entry_channels: tuple[int, int]  # the two plain convolutions of the entry flow
    entry_blocks: tuple[int, ...]  # output channels of the strided entry blocks
    middle_channels: int
    middle_blocks: int
    exit_channels: tuple[int, int]  # the exit block's output, then the final separable conv
    reduction: int = 16  # CBAM channel-attention reduction
    spatial_kernel: int = 7  # CBAM spatial-attention kernel
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


SIZES: dict[str, ModelConfig] = {
    # close to the seed design (about 15 M parameters)
    "base": ModelConfig(
        size="base",
        input_size=224,
        entry_channels=(32, 64),
        entry_blocks=(128, 256, 512),
        middle_channels=640,
        middle_blocks=8,
        exit_channels=(896, 1280),
    ),
    # for fast CPU serving (about 3 M parameters)
    "small": ModelConfig(
        size="small",
        input_size=192,
        entry_channels=(24, 48),
        entry_blocks=(96, 192, 320),
        middle_channels=320,
        middle_blocks=5,
        exit_channels=(448, 640),
    ),
}


class XceptionBlock(nn.Module):
    """``reps`` x (ReLU, separable conv) with a 1x1 residual shortcut; optional stride-2 max-pool."""

    def __init__(self, cin: int, cout: int, reps: int, stride: int = 1, relu_first: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(reps):
            if i > 0 or relu_first:
                layers.append(nn.ReLU(inplace=i > 0))
            layers.append(SeparableConv(cin if i == 0 else cout, cout))
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
        self.body = nn.Sequential(*layers)
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class HybridAttentionNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("rgb_mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(RGB_STD).view(1, 3, 1, 1), persistent=False)
        self.frequency = FrequencyFeatures(c.input_size)

        e0, e1 = c.entry_channels
        entry: list[nn.Module] = [
            nn.Conv2d(4, e0, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(e0),
            nn.ReLU(inplace=True),
            nn.Conv2d(e0, e1, 3, padding=1, bias=False),
            nn.BatchNorm2d(e1),
            nn.ReLU(inplace=True),
        ]
        cin = e1
        for i, cout in enumerate(c.entry_blocks):
            entry.append(XceptionBlock(cin, cout, reps=2, stride=2, relu_first=i > 0))
            cin = cout
        self.entry = nn.Sequential(*entry)
        self.entry_attention = CBAM(cin, c.reduction, c.spatial_kernel)

        middle: list[nn.Module] = []
        if cin != c.middle_channels:
            middle.append(XceptionBlock(cin, c.middle_channels, reps=1))
        middle += [XceptionBlock(c.middle_channels, c.middle_channels, reps=3) for _ in range(c.middle_blocks)]
        self.middle = nn.Sequential(*middle)
        self.middle_attention = CBAM(c.middle_channels, c.reduction, c.spatial_kernel)

        x0, x1 = c.exit_channels
        self.exit = nn.Sequential(
            XceptionBlock(c.middle_channels, x0, reps=2, stride=2),
            SeparableConv(x0, x1),
            nn.ReLU(inplace=True),
        )
        self.exit_attention = CBAM(x1, c.reduction, c.spatial_kernel)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(x1, 1)

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling (the Grad-CAM target)."""
        x = torch.cat([(rgb - self.rgb_mean) / self.rgb_std, self.frequency(rgb)], dim=1)
        x = self.entry_attention(self.entry(x))
        x = self.middle_attention(self.middle(x))
        return self.exit_attention(self.exit(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        return self.classifier(self.dropout(pooled)).squeeze(1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], shape (N, 3, S, S) -> logits of shape (N,); sigmoid gives P(fake)."""
        return self.head(self.features(rgb))


class HalfPrecision(nn.Module):
    """The model in float16 behind float32 I/O, so an FP16 artifact is a drop-in replacement for the
    FP32 one (same input tensor, same output dtype).

    Input normalisation and the frequency channel stay in float32 and see the float32 input: the DFT
    sums 192 terms per output and takes the log of small high-frequency magnitudes, which float16
    (and float16-rounded pixels) resolve badly: errors above one standard deviation in that channel,
    measured. It costs two small matrix products per image; the convolutions, where the time goes,
    run in float16.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        # kept aside before .half() rounds their constants (the DFT bases, the input statistics)
        frequency = copy.deepcopy(model.frequency) if hasattr(model, "frequency") else None
        kept = {name: buffer.clone() for name, buffer in model.named_buffers(recurse=False)}
        model = model.half()
        for name, buffer in kept.items():
            setattr(model, name, buffer)
        if isinstance(model, FaceHybridNet):
            # float32 in, float16 from the first layer of each stream on
            model.backbone.stage1 = Cast(model.backbone.stage1, torch.float16)
            if model.config.highpass_channels:
                model.highpass = Cast(model.highpass, torch.float16)
            if frequency is not None:
                model.frequency = nn.Sequential(Cast(frequency, torch.float32), ToDtype(torch.float16))
        else:
            model.frequency = Cast(frequency, torch.float32)
            model.entry = Cast(model.entry, torch.float16)  # the first layer that sees the 4-channel input
        self.model = model

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model(rgb.float()).float()


class ToDtype(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


# Every architecture by its size name; `family` in a stored config says which class builds it.
FAMILIES = {"xception": (ModelConfig, HybridAttentionNet), FACE_FAMILY: (FaceHybridConfig, FaceHybridNet)}
ALL_SIZES = {**SIZES, **FACE_SIZES}


def build_model(size: str | ModelConfig | FaceHybridConfig = "small", **overrides) -> nn.Module:
    """A fresh model by size name (``small``, ``base``, ``face``) or config, with field overrides."""
    config = ALL_SIZES[size] if isinstance(size, str) else size
    if overrides:
        config = type(config).from_dict({**config.to_dict(), **overrides})
    return FAMILIES[getattr(config, "family", "xception")][1](config)


def model_from_config(architecture: dict) -> nn.Module:
    """The model described by a stored ``architecture`` dict (weights metadata); older dicts have no family."""
    config_class, model_class = FAMILIES[architecture.get("family", "xception")]
    return model_class(config_class.from_dict(architecture))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
