"""Describe a dataset before training: ``python -m training.dataset_report --data DIR``.

Class balance per split, image resolutions and formats, unreadable files, and the mean log-magnitude
FFT spectrum per class (GAN upsampling often leaves periodic peaks there). Writes ``report.json``
and ``spectra.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime.decoding import ImageError, decode_image
from training.data import CLASS_NAMES, SplitSpec, class_counts, discover
from training.plots import plot_spectra


def log_spectrum(image: Image.Image, size: int) -> np.ndarray:
    """Centred log |FFT2| of the grey image, centre-cropped square and resized to ``size``."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    grey = image.convert("L").resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    spectrum = np.fft.fftshift(np.fft.fft2(np.asarray(grey, dtype=np.float64)))
    return np.log(np.abs(spectrum) + 1e-8)


def dataset_report(data: Path, out_dir: Path, spec: SplitSpec = SplitSpec(), spectrum_size: int = 256,
                   max_per_class: int | None = None) -> dict:
    splits = discover(data, spec)
    samples = [s for split in splits.values() for s in split]
    sizes, formats, modes, unreadable = Counter(), Counter(), Counter(), []
    sums = {name: np.zeros((spectrum_size, spectrum_size)) for name in CLASS_NAMES.values()}
    counts = Counter()
    for sample in tqdm(samples, desc="reading images", unit="img"):
        data_bytes = sample.path.read_bytes()
        try:
            image = decode_image(data_bytes)  # the checks serving applies
        except ImageError as exc:
            unreadable.append({"path": str(sample.path), "error": exc.code})
            continue
        with Image.open(sample.path) as raw:
            formats[raw.format] += 1
            modes[raw.mode] += 1
        sizes[f"{image.width}x{image.height}"] += 1
        name = CLASS_NAMES[sample.label]
        if max_per_class is None or counts[name] < max_per_class:
            sums[name] += log_spectrum(image, spectrum_size)
            counts[name] += 1

    spectra = {name: sums[name] / counts[name] for name in sums if counts[name]}
    out_dir.mkdir(parents=True, exist_ok=True)
    if spectra:
        plot_spectra(spectra, out_dir / "spectra.png")
    widths = [int(k.split("x")[0]) for k, n in sizes.items() for _ in range(n)]
    heights = [int(k.split("x")[1]) for k, n in sizes.items() for _ in range(n)]
    report = {
        "data": str(data),
        "splits": {name: class_counts(items) for name, items in splits.items()},
        "total": class_counts(samples),
        "resolutions": dict(sizes.most_common(20)),
        "width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)} if widths else {},
        "height": {"min": min(heights), "median": float(np.median(heights)), "max": max(heights)} if heights else {},
        "formats": dict(formats),
        "modes": dict(modes),
        "unreadable": unreadable,
        "spectrum_images": dict(counts),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("build/dataset-report"))
    parser.add_argument("--seed", type=int, default=0, help="split seed for an unsplit real/fake folder")
    parser.add_argument("--spectrum-size", type=int, default=256)
    parser.add_argument("--max-per-class", type=int, help="cap the images averaged into each spectrum")
    args = parser.parse_args(argv)
    report = dataset_report(args.data, args.out, SplitSpec(seed=args.seed), args.spectrum_size, args.max_per_class)
    for name, counts in report["splits"].items():
        print(f"{name:>5}: {counts['real']:5d} real {counts['fake']:5d} fake")
    print(f"resolutions: {report['resolutions']}")
    print(f"unreadable: {len(report['unreadable'])}")
    print(f"wrote {args.out}/report.json and {args.out}/spectra.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
