"""Hybrid-attention deepfake classifier.

Xception-style depthwise-separable convolutions, CBAM attention after the entry, middle and exit
flows, and a fourth input channel holding the log FFT magnitude of the image.

Everything a served model needs happens inside ``forward``: it takes plain RGB in [0, 1] of shape
(N, 3, S, S), normalises it, computes the frequency channel as a DFT by matrix products (fixed cos/sin
bases, so ONNX and TensorRT can export it; they have no FFT op) and returns one logit per image,
positive meaning "fake".

This module depends on torch alone: it travels inside the TorchServe archive.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

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


class FrequencyFeatures(nn.Module):
    """log |FFT2| of the channel-mean image, centred (fftshift) and standardised per image.

    Computed as C·g·Cᵀ products with fixed cos/sin bases instead of ``torch.fft.fft2`` so that the
    ONNX and TensorRT exporters can express it. The bases use the orthonormal scale 1/sqrt(S) per axis,
    which keeps squared magnitudes inside the FP16 range; the per-image standardisation removes
    that constant factor anyway.
    """

    def __init__(self, size: int, eps: float = 1e-4):
        super().__init__()
        self.size = size
        self.eps = eps
        k = torch.arange(size, dtype=torch.float64)
        # fftshift folded into the basis: output row i holds frequency (i - size // 2) mod size
        shifted = (k - size // 2) % size
        angle = 2 * math.pi * shifted[:, None] * k[None, :] / size
        scale = 1 / math.sqrt(size)
        self.register_buffer("cos", (torch.cos(angle) * scale).float(), persistent=False)
        self.register_buffer("sin", (torch.sin(angle) * scale).float(), persistent=False)

    def magnitude(self, rgb: torch.Tensor) -> torch.Tensor:
        """|DFT| of the channel mean, centred, shape (N, S, S)."""
        gray = rgb.mean(dim=1)
        c, s = self.cos, self.sin
        # F = C - iS, so F g Fᵀ = (CgCᵀ - SgSᵀ) - i(SgCᵀ + CgSᵀ)
        gc, gs = gray @ c.T, gray @ s.T
        real = c @ gc - s @ gs
        imag = s @ gc + c @ gs
        return torch.sqrt(real * real + imag * imag)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        log_mag = torch.log(self.magnitude(rgb) + self.eps).unsqueeze(1)
        mean = log_mag.mean(dim=(2, 3), keepdim=True)
        std = log_mag.std(dim=(2, 3), keepdim=True)
        return (log_mag - mean) / (std + 1e-6)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1, followed by batch norm."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


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


class ChannelAttention(nn.Module):
    """Shared MLP over average- and max-pooled descriptors (CBAM, Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """A 7x7 convolution over the per-pixel channel mean and max (CBAM)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Sequential):
    def __init__(self, channels: int, reduction: int, kernel: int):
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention(kernel))


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


class Cast(nn.Module):
    """Runs the wrapped module on its input cast to ``dtype``."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype))


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
        # kept aside before .half() rounds their constants (the DFT bases, the RGB statistics)
        frequency, mean, std = copy.deepcopy(model.frequency), model.rgb_mean.clone(), model.rgb_std.clone()
        model = model.half()
        model.rgb_mean, model.rgb_std = mean, std
        model.frequency = Cast(frequency, torch.float32)
        model.entry = Cast(model.entry, torch.float16)  # the first layer that sees the 4-channel input
        self.model = model

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model(rgb.float()).float()


def build_model(size: str | ModelConfig = "small", **overrides) -> HybridAttentionNet:
    config = SIZES[size] if isinstance(size, str) else size
    if overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    return HybridAttentionNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
