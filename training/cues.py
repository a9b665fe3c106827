"""What a model keys on when a kind it never saw reads as real: ``python -m training.cues --weights W
--data DIR [DIR ...] --kind ROOT --out DIR``.

For the weights of a leave-one-kind-out run (``--kind`` the held-out root), on the test crops the
model sees (the served crop, as ``training.evaluate`` scores them):

* **scores per group**: P(fake) of the held-out kind's fakes beside the reals of every root, the
  median and the share above the served threshold: "more real than real" shows as held-out fakes
  under the reals of their own source;
* **the reals that score most fake**, with their root: which source the model calls fake;
* **image statistics per group** that a detector can read without any manipulation: high-frequency
  energy (mean |Laplacian|), JPEG-like 8x8 blockiness, and their rank correlation with P(fake) over
  all reals: a strong correlation names a shortcut (sharpness, compression) rather than an artefact;
* **radial spectra** (mean log power by spatial frequency) per group, plotted: where the held-out
  fakes differ from their reals, and whether the model's "fake" side looks like that.

Writes ``cues.json``, ``cues.md`` and ``spectra.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import laplace  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from runtime.weights import load_weights  # noqa: E402
from training.config import resolve_device  # noqa: E402
from training.data import centre_view  # noqa: E402
from training.evaluate import score_roots  # noqa: E402
from training.sampling import as_roots  # noqa: E402

MAX_PER_GROUP = 300  # images per group for the statistics and spectra (a fixed, evenly spaced draw)


def grey_view(crop) -> np.ndarray:
    with Image.open(crop.crop) as f:
        image = f.convert("L")
    return np.asarray(centre_view(image, crop.input_size) if crop.input_size else image, np.float64)


def radial_spectrum(grey: np.ndarray, bins: int = 48) -> np.ndarray:
    """Mean log power per ring of spatial frequency, DC to Nyquist."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    h, w = grey.shape
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h / 2, xx - w / 2) / (min(h, w) / 2)
    ring = np.minimum((radius * bins).astype(int), bins)
    sums = np.bincount(ring.ravel(), np.log(power.ravel() + 1e-8), minlength=bins + 1)
    counts = np.bincount(ring.ravel(), minlength=bins + 1)
    return (sums / np.maximum(counts, 1))[:bins]


def blockiness(grey: np.ndarray) -> float:
    """Mean jump across 8x8 block edges over the mean jump elsewhere (1 = no block structure)."""
    dx = np.abs(np.diff(grey, axis=1))
    edges = dx[:, 7::8].mean()
    return float(edges / max(dx.mean(), 1e-6))


def image_stats(grey: np.ndarray) -> dict:
    return {"laplacian": float(np.abs(laplace(grey)).mean()), "blockiness": blockiness(grey)}


def groups(scored: dict, kind: str) -> dict[str, tuple[list, np.ndarray]]:
    """{group name: (crops, P(fake))}: the held-out fakes, and each root's reals (each real once)."""
    out, seen = {}, set()
    fakes = [(c, p) for c, y, p in zip(scored[kind].crops, scored[kind].y, scored[kind].p) if y == 1]
    out[f"{kind} fakes (held out)"] = ([c for c, _ in fakes], np.array([p for _, p in fakes]))
    for name, s in scored.items():
        reals = [(c, p) for c, y, p in zip(s.crops, s.y, s.p) if y == 0 and c.crop not in seen]
        seen.update(c.crop for c, _ in reals)
        if reals:
            out[f"{name} reals"] = ([c for c, _ in reals], np.array([p for _, p in reals]))
    return out


def analyse(weights: Path, data, kind: str, out_dir: Path, cache_dir: str, threads: int, device: str = "auto") -> dict:
    torch.set_num_threads(threads)
    device = resolve_device(device)
    model, meta = load_weights(weights, map_location=device)
    scored = score_roots(model, meta, as_roots(data), "test", cache_dir, threads, 64, device)
    threshold = float(meta.get("threshold", 0.5))
    table, spectra, all_reals = {}, {}, []
    for name, (crops, p) in groups(scored, kind).items():
        pick = np.linspace(0, len(crops) - 1, min(MAX_PER_GROUP, len(crops))).astype(int)
        greys = [grey_view(crops[i]) for i in pick]
        stats = [image_stats(g) for g in greys]
        spectra[name] = np.mean([radial_spectrum(g) for g in greys], axis=0)
        table[name] = {"n": len(crops), "median_p_fake": float(np.median(p)), "share_called_fake": float((p >= threshold).mean()),
                       **{k: float(np.median([s[k] for s in stats])) for k in stats[0]}}
        if name.endswith("reals"):
            all_reals += [(crops[i], float(p[i]), stats[j], name) for j, i in enumerate(pick)]
    p_reals = np.array([r[1] for r in all_reals])
    correlation = {k: float(spearmanr([r[2][k] for r in all_reals], p_reals).statistic) for k in ("laplacian", "blockiness")}
    top = sorted(all_reals, key=lambda r: -r[1])[:15]
    report = {"weights": str(weights), "held_out": kind, "threshold": threshold, "groups": table,
              "spearman_with_p_fake_over_reals": correlation,
              "most_fake_reals": [{"source": str(c.source), "group": g, "p_fake": p} for c, p, _, g in top],
              "most_fake_reals_by_group": {g: sum(1 for *_, gg in top if gg == g) for g in table if g.endswith("reals")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cues.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "cues.md").write_text(markdown(report))
    plot_radial(spectra, out_dir / "spectra.png", kind)
    return report


def markdown(report: dict) -> str:
    lines = [f"Held out: **{report['held_out']}** (weights `{report['weights']}`), test crops, threshold {report['threshold']:.3f}.", "",
             "| group | n | median P(fake) | called fake | median \\|Laplacian\\| | blockiness |", "|---|---:|---:|---:|---:|---:|"]
    for name, g in report["groups"].items():
        lines.append(f"| {name} | {g['n']} | {g['median_p_fake']:.3f} | {g['share_called_fake']:.2f} | {g['laplacian']:.2f} | {g['blockiness']:.3f} |")
    c = report["spearman_with_p_fake_over_reals"]
    lines += ["", f"Rank correlation with P(fake) over the reals: |Laplacian| {c['laplacian']:+.2f}, blockiness {c['blockiness']:+.2f}.",
              "", "The 15 reals scored most fake, by group: "
              + ", ".join(f"{g} {n}" for g, n in report["most_fake_reals_by_group"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot_radial(spectra: dict[str, np.ndarray], path: Path, kind: str) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    freq = np.linspace(0, 1, len(next(iter(spectra.values()))), endpoint=False)
    for name, s in spectra.items():
        left.plot(freq, s, label=name, lw=2.5 if "held out" in name else 1.2)
    left.set(xlabel="spatial frequency (1 = Nyquist)", ylabel="mean log power", title="Radial spectra of the served crops")
    left.legend(fontsize=8)
    base = next((s for n, s in spectra.items() if n.startswith("faces reals")), None)
    for name, s in spectra.items():
        if base is not None and not name.startswith("faces reals"):
            right.plot(freq, s - base, label=f"{name} - faces reals")
    right.axhline(0, color="grey", lw=0.8)
    right.set(xlabel="spatial frequency (1 = Nyquist)", ylabel="difference of log power", title=f"Against FFHQ reals ({kind} held out)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--kind", required=True, help="the data root the weights were trained without")
    parser.add_argument("--out", type=Path, default=Path("build/cues"))
    parser.add_argument("--cache-dir", default="build/crops")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    report = analyse(args.weights, args.data, args.kind, args.out, args.cache_dir, args.threads)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
