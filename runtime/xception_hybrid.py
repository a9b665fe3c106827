"""The Xception-style hybrid family trained from scratch (sizes ``small``, ``base``).

Depthwise-separable convolutions, CBAM attention after the entry, middle and exit flows, and a
fourth input channel holding the log FFT magnitude of the image, computed as a DFT by matrix
products (fixed cos/sin bases, so ONNX and TensorRT can export it; they have no FFT op).

Everything a served model needs happens inside ``forward``: plain RGB in [0, 1] of shape
(N, 3, S, S) in, one logit per image out, positive meaning "fake". Depends on torch alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.blocks import CBAM, Cast, FrequencyFeatures, SeparableConv

FAMILY = "xception"
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
    kind_classes: int = 0  # > 0: a second head guesses which kind of fake (``forward_with_kinds``)

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
        self.kind_classifier = nn.Linear(x1, c.kind_classes) if c.kind_classes else None

    def forward_features(self, rgb: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling (the Grad-CAM target)."""
        x = torch.cat([(rgb - self.rgb_mean) / self.rgb_std, self.frequency(rgb)], dim=1)
        x = self.entry_attention(self.entry(x))
        x = self.middle_attention(self.middle(x))
        return self.exit_attention(self.exit(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of shape (N,); with ``pre_logits`` the pooled vector both heads read."""
        pre = self.dropout(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))
        return pre if pre_logits else self.classifier(pre).squeeze(1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], shape (N, 3, S, S) -> logits of shape (N,); sigmoid gives P(fake)."""
        return self.forward_head(self.forward_features(rgb))

    def cast_entry_layers(self, frequency: nn.Module) -> None:
        """For the float16 variant (``runtime.precision.HalfPrecision``): the DFT channel in float32
        (its float32 copy ``frequency``), float16 from the first layer that sees the 4-channel input on."""
        self.frequency = Cast(frequency, torch.float32)
        self.entry = Cast(self.entry, torch.float16)

    def forward_with_kinds(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N,), kind logits (N, kind_classes)) from one pass."""
        pre = self.forward_head(self.forward_features(rgb), pre_logits=True)
        return self.classifier(pre).squeeze(1), self.kind_classifier(pre)
