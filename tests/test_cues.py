"""The cue measurements (training.cues) and the first-groups data root (scripts/first-groups.sh)."""

import io
import subprocess

import numpy as np
from PIL import Image, ImageFilter
from skimage import data as skdata

from conftest import ROOT
from training.cues import blockiness, image_stats, radial_spectrum
from training.data import SplitSpec, discover


def grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), np.float64)


def test_radial_spectrum_sees_lost_detail_at_high_frequency():
    sharp = Image.fromarray(skdata.astronaut()).resize((192, 192))
    soft = sharp.filter(ImageFilter.GaussianBlur(1.5))
    a, b = radial_spectrum(grey(sharp)), radial_spectrum(grey(soft))
    assert a.shape == b.shape == (48,)
    assert abs(a[2:6].mean() - b[2:6].mean()) < 1.0  # the coarse structure is the same ...
    assert a[30:].mean() - b[30:].mean() > 2.0  # ... the fine detail is gone
    assert image_stats(grey(sharp))["laplacian"] > 2 * image_stats(grey(soft))["laplacian"]


def test_blockiness_finds_jpeg_blocks():
    image = Image.fromarray(skdata.astronaut()).resize((192, 192))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=10)
    blocky = Image.open(io.BytesIO(buffer.getvalue()))
    assert blockiness(grey(blocky)) > 1.2 > blockiness(grey(image)) > 0.8


def grouped_root(root, groups: int) -> list[str]:
    lines = ["path,label,group,face_width_before_resize"]
    for i in range(groups):
        for label in ("real", "fake"):
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / f"{label}{i:02d}.jpg").write_bytes(b"x")
            lines.append(f"{label}/{label}{i:02d}.jpg,{label},g{i:02d},100")
    (root / "groups.csv").write_text("\n".join(lines) + "\n")
    return lines


def test_first_groups_keeps_whole_groups_in_their_order(tmp_path):
    root = tmp_path / "faceswap"
    lines = grouped_root(root, 12)
    out = tmp_path / "first" / "faceswap"
    subprocess.run([str(ROOT / "scripts" / "first-groups.sh"), str(root), "8", str(out)], check=True, capture_output=True)
    kept = (out / "groups.csv").read_text().splitlines()
    assert kept == lines[: 1 + 16]  # the header and the first 8 groups, both images each
    assert sorted(p.name for p in (out / "real").iterdir()) == [f"real{i:02d}.jpg" for i in range(8)]
    # a split of the subset is the split the root had when it held only those groups
    before = tmp_path / "before" / "faceswap"
    grouped_root(before, 8)
    names = lambda root: {k: sorted(s.path.name for s in v) for k, v in discover(root, SplitSpec(0.25, 0.25, 0)).items()}  # noqa: E731
    assert names(out) == names(before) != names(root)
