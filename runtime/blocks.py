"""Building blocks shared by the model families: the exportable frequency channel, separable
convolutions, CBAM attention and a dtype cast. Depends on torch alone (travels inside the archive)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


class BlockSpectrum(nn.Module):
    """log |DCT-II| of every ``block`` x ``block`` tile of the grey image: (N, block², S/block, S/block).

    JPEG's own frequency grid, as a map aligned with the image: each position holds the spectrum of
    its tile, so a convolution can relate local frequency content to where it sits on the face. The
    2-D DCT is two products with a fixed orthonormal basis (exportable: no FFT op); it costs
    2 * block multiply-adds per pixel, against 4 * S for a whole-image DFT.
    """

    def __init__(self, block: int = 8, eps: float = 1e-3):
        super().__init__()
        self.block = block
        self.eps = eps
        k = torch.arange(block, dtype=torch.float64)
        basis = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * block)) * math.sqrt(2 / block)
        basis[0] /= math.sqrt(2)
        self.register_buffer("basis", basis.float(), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        gray = rgb.mean(dim=1)
        n, size, b = gray.shape[0], gray.shape[-1], self.block
        tiles = gray.reshape(n, size // b, b, size // b, b).transpose(2, 3)  # (N, rows, cols, b, b)
        coefficients = self.basis @ tiles @ self.basis.T
        flat = coefficients.reshape(n, size // b, size // b, b * b).permute(0, 3, 1, 2)
        return torch.log(coefficients.new_tensor(self.eps) + flat.abs())


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1, followed by batch norm."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


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


class ToDtype(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class Cast(nn.Module):
    """Runs the wrapped module on its input cast to ``dtype``."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype))
