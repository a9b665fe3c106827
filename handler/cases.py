"""The labelled cases (host side): the uploads a reviewer labelled on the page, and only those.

The service never stores uploads, only their sha256. When a reviewer labels a verdict on the page,
the page already holds the file and sends it with the label; the page's server keeps it here, named by
its sha256 (``<folder>/<sha256>.<suffix>``), within a size cap (the oldest files go first) and a
retention (files older than ``keep_days`` go). ``export_labelled`` writes the kept cases as a training
root that ``make train`` reads like any root in ``../shared/data``: ``real/``, ``fake/`` and a
``groups.csv`` (``path,label,group``, the group being the sha256, so one file is never split across
train, validation and test), each file under its latest label in the records.

Settings: the folder ``DEEPFAKE_CASES_DIR`` (default ``<run folder>/labelled-cases``), the cap
``DEEPFAKE_CASES_MB`` (default 1024) and the retention ``DEEPFAKE_CASES_KEEP_DAYS`` (default 365), or
the page's and the CLI's ``--cases-dir``, ``--cases-mb``, ``--cases-keep-days``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sqlalchemy import Engine

from handler.labels import labelled_predictions
from runtime.decoding import ImageError, decode_image
from runtime.photo import IMAGE_SUFFIXES
from runtime.video import container_of

FOLDER = "labelled-cases"
DEFAULT_MB = 1024.0
DEFAULT_KEEP_DAYS = 365.0
# the first bytes of each image format the handler reads, and the file suffix that says it
MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def suffix_of(data: bytes) -> str:
    """The file suffix the bytes say: an image format, a video container, else ``.bin``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    container = container_of(data[:64])
    if container:
        return f".{container}"
    if data[4:8] == b"ftyp":  # ISO boxes with an image brand
        return ".avif" if data[8:12] in (b"avif", b"avis") else ".heic"
    return next((suffix for magic, suffix in MAGIC if data.startswith(magic)), ".bin")


@dataclass(frozen=True)
class CaseStore:
    folder: Path
    max_bytes: int = int(DEFAULT_MB * 2**20)
    keep_days: float = DEFAULT_KEEP_DAYS

    @classmethod
    def resolve(cls, run_dir: str | Path, environ: Mapping[str, str], folder: str | Path | None = None,
                mb: float | None = None, keep_days: float | None = None) -> "CaseStore":
        """The arguments, else the environment, else the defaults (the folder under the run folder)."""
        folder = folder or environ.get("DEEPFAKE_CASES_DIR") or Path(run_dir) / FOLDER
        mb = mb if mb is not None else float(environ.get("DEEPFAKE_CASES_MB") or DEFAULT_MB)
        keep_days = keep_days if keep_days is not None else float(environ.get("DEEPFAKE_CASES_KEEP_DAYS") or DEFAULT_KEEP_DAYS)
        if mb <= 0 or keep_days <= 0:
            raise ValueError("the labelled cases' cap and retention must be positive")
        return cls(Path(folder), int(mb * 2**20), keep_days)

    def keep(self, data: bytes) -> Path:
        """Keep one labelled upload under its sha256 (again: the same file, its time refreshed), then
        apply the retention and the cap; raises ValueError when the file alone is over the cap."""
        if len(data) > self.max_bytes:
            raise ValueError(f"the file is over the labelled cases' cap ({self.max_bytes / 2**20:g} MiB)")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{hashlib.sha256(data).hexdigest()}{suffix_of(data)}"
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # a reader never sees half a file
        self.sweep(keep=path)
        return path

    def files(self) -> dict[str, Path]:
        """{sha256: path} of the kept cases."""
        if not self.folder.is_dir():
            return {}
        return {p.name.split(".")[0]: p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")}

    def sweep(self, keep: Path | None = None) -> list[Path]:
        """Remove files past the retention, then the oldest until the folder is within its cap."""
        oldest_first = sorted(self.files().values(), key=lambda p: p.stat().st_mtime)
        removed, cutoff = [], time.time() - self.keep_days * 86400
        total = sum(p.stat().st_size for p in oldest_first)
        for path in oldest_first:
            if path != keep and (path.stat().st_mtime < cutoff or total > self.max_bytes):
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed


def training_file(path: Path) -> tuple[str, bytes] | None:
    """(suffix, bytes) as training reads them: its own image formats as they are, HEIC and AVIF as a
    lossless PNG through the handler's decoder; None for a video or anything undecodable."""
    data = path.read_bytes()
    if path.suffix in IMAGE_SUFFIXES:
        return path.suffix, data
    if container_of(data[:64]):
        return None
    try:
        image = decode_image(data)
    except ImageError:
        return None
    out = io.BytesIO()
    image.save(out, "PNG")
    return ".png", out.getvalue()


def export_labelled(engine: Engine, store: CaseStore, out_dir: str | Path) -> dict[str, int]:
    """Write the kept cases that have a label as a training root; returns counts by outcome. A file
    predicted several times takes the latest label given to any of its predictions."""
    truth_of = {}
    for row in sorted(labelled_predictions(engine), key=lambda r: r["labelled_at"]):
        truth_of[row["sha256"]] = row["truth"]
    out_dir = Path(out_dir)
    clear_export(out_dir)
    counts = {"real": 0, "fake": 0, "unlabelled": 0, "not_an_image": 0}
    table = []
    for digest, path in sorted(store.files().items()):
        truth = truth_of.get(digest)
        made = training_file(path) if truth else None
        if truth is None or made is None:
            counts["unlabelled" if truth is None else "not_an_image"] += 1
            continue
        target = out_dir / truth / f"{digest}{made[0]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(made[1])
        table.append({"path": f"{truth}/{target.name}", "label": truth, "group": digest})
        counts[truth] += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "groups.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(table)
    return counts


def clear_export(out_dir: Path) -> None:
    """An earlier export's class folders and table, so a case relabelled since is not in both."""
    for name in ("real", "fake"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "groups.csv").unlink(missing_ok=True)
