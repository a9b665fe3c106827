"""The generator-artefact simulator: self-made GAN/diffusion-style fakes made from real photos.

After Zhang, Karaman and Chang ("Detecting and simulating artifacts in GAN fake images", WIFS 2019):
a small autoencoder whose decoder ends the way image generators end (a transposed convolution, or a
nearest / bilinear upsampling followed by a convolution), trained on real faces only. Its
reconstruction of a real face is that face again, drawn by a generator's last layers: real and fake
then differ by the upsampling's traces and nothing else (same person, framing, size and source).

Sharpness matters. A blurry reconstruction teaches "smooth = fake" (measured here: blurred reals did
as well on unseen GANs as a blurry autoencoder's output), so the decoder gets a skip connection at
half resolution and the last upsampling is the only path to full resolution: the output keeps the
detail (``MIN_PSNR`` on held-out reals, checked after training) while every pixel still comes out of
the upsampling layer.

One simulator per upsampling style, trained once on the training split's reals, cached under
``build/simulator/<key>/`` where the key hashes the reals' content hashes, the style and this
module's version: a new data set or recipe gets a new simulator, a rerun reuses it.

``python -m training.simulator --data ROOT [ROOT ...] [--styles transposed nearest bilinear]``
trains (or finds) them and prints their PSNR.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

STYLES = ("transposed", "nearest", "bilinear")
SIMULATOR_VERSION = 1  # bump when the architecture or its training changes
MIN_PSNR = 35.0  # dB on held-out reals: sharper than a blur at this fidelity would be
PATCH = 64  # training patches (the network is fully convolutional)


class Upsample(nn.Module):
    """x2 upsampling the way generators do it: a transposed convolution (checkerboard traces), or a
    fixed interpolation followed by a 3x3 convolution."""

    def __init__(self, style: str, channels_in: int, channels_out: int):
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"unknown upsampling {style!r}; one of {STYLES}")
        self.style = style
        if style == "transposed":
            self.conv = nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "transposed":
            return self.conv(x)
        options = {"align_corners": False} if self.style == "bilinear" else {}
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.style, **options))


def _conv(channels_in: int, channels_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class ArtefactSimulator(nn.Module):
    """RGB in [0, 1] (N, 3, H, W), H and W multiples of 4 -> its reconstruction, same shape."""

    def __init__(self, style: str = "transposed", width: int = 32):
        super().__init__()
        self.style = style
        self.down1 = nn.Sequential(_conv(3, width), _conv(width, width, 2))  # H/2
        self.down2 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width))  # H/4
        self.up2 = nn.Sequential(Upsample(style, 2 * width, width), nn.LeakyReLU(0.2))  # H/2
        self.merge = _conv(2 * width, width)  # with the H/2 skip
        self.up1 = Upsample(style, width, 3)  # H: the only way to full resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.down1(x * 2 - 1)
        quarter = self.down2(half)
        merged = self.merge(torch.cat([self.up2(quarter), half], 1))
        return (self.up1(merged) + 1) / 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def to_input(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> (1, 3, H', W') in [0, 1], cut to sides that are multiples of 4 (two x2 stages)."""
    cut = np.ascontiguousarray(image[: image.shape[0] // 4 * 4, : image.shape[1] // 4 * 4])
    return torch.from_numpy(cut).permute(2, 0, 1)[None].float() / 255


def simulator_key(digests: list[str], style: str, width: int, steps: int) -> str:
    text = json.dumps({"reals": sorted(digests), "style": style, "width": width, "steps": steps, "version": SIMULATOR_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _patches(images: list[np.ndarray], count: int, rng: np.random.Generator) -> torch.Tensor:
    out = np.empty((count, PATCH, PATCH, 3), np.uint8)
    for i in range(count):
        image = images[rng.integers(len(images))]
        y, x = rng.integers(0, image.shape[0] - PATCH + 1), rng.integers(0, image.shape[1] - PATCH + 1)
        out[i] = image[y : y + PATCH, x : x + PATCH]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


def train_simulator(images: list[np.ndarray], held_out: list[np.ndarray], style: str, width: int = 32,
                    steps: int = 1500, batch: int = 16, seed: int = 0, log=print) -> tuple[ArtefactSimulator, float]:
    """Fit one simulator to reconstruct ``images`` (uint8 HxWx3 reals); returns it with its PSNR on
    ``held_out`` (whole images)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ArtefactSimulator(style, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    start = time.time()
    for step in range(1, steps + 1):
        x = _patches(images, batch, rng)
        loss = F.l1_loss(model(x), x)  # L1: sharper than L2 at the same PSNR
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps:
            log(f"simulator {style}: step {step}/{steps} l1 {loss.item():.4f} ({time.time() - start:.0f} s)")
    model.eval()
    return model, held_out_psnr(model, held_out)


@torch.no_grad()
def held_out_psnr(model: ArtefactSimulator, images: list[np.ndarray]) -> float:
    values = []
    for image in images:
        x = to_input(image)
        values.append(psnr(model(x), x))
    return float(np.median(values))


class SimulatorBank:
    """The trained simulators, one per style; ``reconstruct`` draws a style per image."""

    def __init__(self, models: dict[str, ArtefactSimulator]):
        self.models = models
        self.styles = sorted(models)

    @torch.no_grad()
    def reconstruct(self, image: Image.Image, style_index: int) -> Image.Image:
        model = self.models[self.styles[style_index % len(self.styles)]]
        array = np.asarray(image, np.uint8)
        y = (model(to_input(array))[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        out = array.copy()
        out[: y.shape[0], : y.shape[1]] = y  # a side not a multiple of 4 keeps its last real rows/columns
        return Image.fromarray(out, "RGB")

    @classmethod
    def load(cls, folder: Path) -> "SimulatorBank":
        info = json.loads((folder / "simulators.json").read_text())
        models = {}
        for style, entry in info["styles"].items():
            model = ArtefactSimulator(style, info["width"])
            model.load_state_dict(load_file(folder / entry["file"]))
            models[style] = model.eval()
        return cls(models)


def build_bank(reals: list[tuple[str, Path]], cache_dir: Path, styles=STYLES, width: int = 32, steps: int = 1500,
               max_images: int = 2000, held_out_share: float = 0.05, log=print) -> Path:
    """Train (or find in ``cache_dir``) one simulator per style on ``reals`` ((content hash, image
    path) of the training split's real crops; ``max_images`` of them, drawn evenly); returns the
    folder holding them."""
    reals = sorted(reals)
    if len(reals) > max_images:  # a fixed draw, so the same reals give the same simulators
        reals = [reals[i] for i in sorted(np.random.default_rng(0).choice(len(reals), max_images, replace=False))]
    digests = [d for d, _ in reals]
    folder = cache_dir / simulator_key(digests, "+".join(styles), width, steps)
    if (folder / "simulators.json").exists():
        return folder
    order = np.random.default_rng(0).permutation(len(reals))
    images = [np.asarray(Image.open(reals[i][1]).convert("RGB")) for i in tqdm(order, desc="simulator reals", leave=False)]
    held = max(1, int(len(images) * held_out_share))
    info = {"version": SIMULATOR_VERSION, "width": width, "steps": steps, "reals": len(reals), "held_out": held,
            "min_psnr": MIN_PSNR, "styles": {}}
    folder.mkdir(parents=True, exist_ok=True)
    for style in styles:
        model, value = train_simulator(images[held:], images[:held], style, width, steps, log=log)
        if value < MIN_PSNR:
            log(f"warning: simulator {style} reaches {value:.1f} dB, under {MIN_PSNR} dB: its fakes may teach blur")
        save_file(model.state_dict(), folder / f"{style}.safetensors")
        info["styles"][style] = {"file": f"{style}.safetensors", "psnr_db": round(value, 2)}
        log(f"simulator {style}: {value:.2f} dB PSNR on {held} held-out reals")
    (folder / "simulators.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/train_face.yaml")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML")
    args = parser.parse_args(argv)
    from training.config import TrainConfig, with_settings
    from training.forgery import simulator_folder
    from training.sampling import prepare_crops

    config = with_settings(TrainConfig.load(args.config), args.set)
    config.simulator = {**config.simulator, "styles": tuple(args.styles)}
    crops, _, _ = prepare_crops(config, args.data)
    folder = simulator_folder(config, crops["train_whole"])
    print(json.dumps(json.loads((folder / "simulators.json").read_text()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
