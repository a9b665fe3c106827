"""Datasets: find the images, split them, turn them into cached face crops, serve them to the trainer.

Two layouts are accepted (folder names case-insensitive):

* ``root/{train,val,test}/{real,fake}/`` — the splits are taken as given;
* ``root/{real,fake}/`` — split deterministically from a seed: stratified by class, or, when the
  root has a ``groups.csv`` (``path,label,group``: e.g. the source video of a face swap and of its
  real original), by group, so that no group is in two splits.

A root with only a ``fake/`` folder (generated faces with no real counterpart of their own) borrows
the real images of another root, split as that root splits them (``discover_roots``).

Labels are explicit, never alphabetical: real = 0, fake = 1.

Every image goes once through ``runtime.decoding`` and ``runtime.preprocessing`` (decode, face detection, square crop) —
the code serving runs — and the crop is stored as a lossless PNG under the cache folder, keyed by the
file's content hash and the preprocessing settings. Unreadable images are reported and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from runtime.decoding import ImageError, decode_photo
from runtime.photo import IMAGE_SUFFIXES
from runtime.preprocessing import FacePreprocessor, PreprocessSettings
from training.forgery import blend_target, context_points
from training.regions import UNKNOWN, target_mask

log = logging.getLogger(__name__)

LABELS = {"real": 0, "fake": 1}
CLASS_NAMES = {v: k for k, v in LABELS.items()}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
GROUPS_FILE = "groups.csv"  # path,label,group: images of one group are never split apart
CACHE_VERSION = 3  # bump when the crop procedure changes in a way the settings do not capture
# Native crops are cached this many times wider than the model input, around the same centre, so
# augmentation can zoom out (a smaller face, as in a downscaled upload); the centre is the served crop.
CONTEXT = 2


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 real, 1 fake


DEFAULT_SPLIT_FRACTION = 0.15  # of each class, for validation and again for test, when a folder is not split


@dataclass(frozen=True)
class SplitSpec:
    """How a flat real/fake folder is split; stored in the weights' metadata for reproducibility."""

    val: float = DEFAULT_SPLIT_FRACTION
    test: float = DEFAULT_SPLIT_FRACTION
    seed: int = 0


def _child_dirs(root: Path, names: dict[str, str]) -> dict[str, Path]:
    """Sub-folders of ``root`` whose lower-cased name is a key of ``names``, keyed by ``names`` value."""
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        key = names.get(child.name.lower())
        if child.is_dir() and key is not None:
            if key in found:
                raise ValueError(f"{root} has two folders for '{key}': {found[key].name}, {child.name}")
            found[key] = child
    return found


def list_class_folders(root: str | Path, required: Sequence[str] = tuple(LABELS)) -> list[Sample]:
    """All image files under ``root/real`` and ``root/fake`` (recursive), sorted by path; the root
    must have exactly the ``required`` class folders."""
    root = Path(root)
    classes = _child_dirs(root, {name: name for name in LABELS})
    if set(classes) != set(required):
        wanted = " and ".join(f"'{name}'" for name in required)
        raise ValueError(f"{root} must contain {wanted} folder(s) only (found: {sorted(classes) or 'none'})")
    samples = []
    for name, folder in classes.items():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [Sample(p, LABELS[name]) for p in files]
    return sorted(samples, key=lambda s: str(s.path))


def stratified_split(samples: Sequence[Sample], spec: SplitSpec) -> dict[str, list[Sample]]:
    """Per class: sort, shuffle with the seed, cut into test / val / train by the fractions."""
    if not 0 <= spec.val < 1 or not 0 <= spec.test < 1 or spec.val + spec.test >= 1:
        raise ValueError(f"bad split fractions val={spec.val} test={spec.test}")
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(LABELS.values()):
        group = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        random.Random(f"{spec.seed}-{label}").shuffle(group)
        n_test = round(len(group) * spec.test)
        n_val = round(len(group) * spec.val)
        splits["test"] += group[:n_test]
        splits["val"] += group[n_test : n_test + n_val]
        splits["train"] += group[n_test + n_val :]
    return {k: sorted(v, key=lambda s: str(s.path)) for k, v in splits.items()}


def read_groups(root: Path) -> dict[Path, str]:
    """``root/groups.csv`` as {image path: group}; empty when the root has none."""
    table = root / GROUPS_FILE
    if not table.exists():
        return {}
    with table.open(newline="") as f:
        return {root / row["path"]: row["group"] for row in csv.DictReader(f)}


def grouped_split(samples: Sequence[Sample], groups: dict[Path, str], spec: SplitSpec) -> dict[str, list[Sample]]:
    """Whole groups to test / val / train by the fractions of groups: sorted, shuffled with the seed."""
    missing = [s.path for s in samples if s.path not in groups]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no group in {GROUPS_FILE}, e.g. {missing[0]}")
    names = sorted({groups[s.path] for s in samples})
    random.Random(f"{spec.seed}-groups").shuffle(names)
    n_test, n_val = round(len(names) * spec.test), round(len(names) * spec.val)
    split_of = {g: "test" for g in names[:n_test]} | {g: "val" for g in names[n_test : n_test + n_val]}
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for sample in samples:
        splits[split_of.get(groups[sample.path], "train")].append(sample)
    return {k: sorted(v, key=lambda s: str(s.path)) for k, v in splits.items()}


def discover(root: str | Path, spec: SplitSpec = SplitSpec(), classes: Sequence[str] = tuple(LABELS)) -> dict[str, list[Sample]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from either layout; ``classes`` are the
    class folders the root must have (``("fake",)`` for a fake-only root)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    split_dirs = _child_dirs(root, SPLIT_NAMES)
    if split_dirs:
        if "train" not in split_dirs:
            raise ValueError(f"{root} has split folders {sorted(split_dirs)} but no 'train'")
        return {name: list_class_folders(split_dirs[name], classes) if name in split_dirs else [] for name in ("train", "val", "test")}
    samples = list_class_folders(root, classes)
    groups = read_groups(root)
    return grouped_split(samples, groups, spec) if groups else stratified_split(samples, spec)


def root_name(root: str | Path) -> str:
    """A data root's name in logs, metrics and configs: its folder name (``faces``, ``faceswap``)."""
    return Path(root).resolve().name


def discover_roots(roots: Sequence[str | Path], spec: SplitSpec, real_from: dict[str, str] | None = None) -> dict[str, dict[str, list[Sample]]]:
    """``{root name: {split: samples}}`` for several roots, each split on its own. A root named in
    ``real_from`` has fake images only and takes the real images of the root it names, in the same
    splits as there (so a real photo never sits in one root's training split and another's test)."""
    real_from = dict(real_from or {})
    by_name = {root_name(r): Path(r) for r in roots}
    unknown = sorted(set(real_from) - set(by_name)) + sorted(set(real_from.values()) - set(by_name))
    if unknown:
        raise ValueError(f"real_from names root(s) not given as data: {unknown} (data: {sorted(by_name)})")
    found = {name: discover(root, spec, ("fake",) if name in real_from else tuple(LABELS)) for name, root in by_name.items()}
    for name, donor in real_from.items():
        for split, samples in found[name].items():
            reals = [s for s in found[donor][split] if s.label == LABELS["real"]]
            found[name][split] = sorted(samples + reals, key=lambda s: str(s.path))
    return found


def class_counts(samples: Sequence[Sample]) -> dict[str, int]:
    return {name: sum(1 for s in samples if s.label == label) for name, label in LABELS.items()}


# ---------------------------------------------------------------------------------------------
# Crop cache


@dataclass(frozen=True)
class CachedCrop:
    crop: Path  # PNG, input_size x input_size
    label: int
    source: Path
    face_found: bool
    dataset: str = ""  # which data root it came from (metrics are reported per dataset)
    input_size: int = 0  # the model's input: a wider (context) crop is cut down to this
    # where the crop lies in the original image: (left, top, right, bottom) in its pixels, and the
    # image's size; with the face's landmarks (original pixels), they place regions in the crop
    window: tuple[float, float, float, float] | None = None
    image_size: tuple[int, int] | None = None
    landmarks: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Skipped:
    source: Path
    code: str
    message: str


class CropCache:
    """Face crops on disk: ``<cache_dir>/<settings key>/<sha[:2]>/<sha>.png`` plus ``index.json``.

    The index maps content hash -> detection result (or the decode error), so a second run neither
    decodes nor detects anything; a file whose bytes change gets a new hash and is redone.
    """

    def __init__(self, cache_dir: str | Path, settings: PreprocessSettings, batch_size: int = 16, threads: int = 1):
        self.settings = settings
        self.root = Path(cache_dir) / settings.key(CACHE_VERSION)
        self.batch_size = batch_size
        self.threads = threads
        self.index_path = self.root / "index.json"
        self.index: dict[str, dict] = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        self._preprocessor: FacePreprocessor | None = None

    @property
    def preprocessor(self) -> FacePreprocessor:
        if self._preprocessor is None:  # loading the detector is only needed on a cache miss
            self._preprocessor = FacePreprocessor.from_settings(self.settings, threads=self.threads, context=CONTEXT)
        return self._preprocessor

    def crop_path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.png"

    def prepare(self, samples: Sequence[Sample], desc: str = "crops", dataset: str = "") -> tuple[list[CachedCrop], list[Skipped]]:
        """Crops for ``samples`` (computing missing ones in detector batches) and the files skipped."""
        digests = [hashlib.sha256(s.path.read_bytes()).hexdigest() for s in samples]
        missing = [(s, d) for s, d in zip(samples, digests) if d not in self.index or (
            "error" not in self.index[d] and not self.crop_path(d).exists())]
        if missing:
            self.root.mkdir(parents=True, exist_ok=True)
            with tqdm(total=len(missing), desc=f"face crops ({desc})", unit="img", leave=False) as bar:
                for start in range(0, len(missing), self.batch_size):
                    self._compute(missing[start : start + self.batch_size])
                    bar.update(len(missing[start : start + self.batch_size]))
            self.index_path.write_text(json.dumps(self.index, sort_keys=True))

        crops, skipped = [], []
        for sample, digest in zip(samples, digests):
            entry = self.index[digest]
            if "error" in entry:
                skipped.append(Skipped(sample.path, entry["error"], entry["message"]))
                log.warning("skipping %s: %s (%s)", sample.path, entry["message"], entry["error"])
            else:
                crops.append(CachedCrop(self.crop_path(digest), sample.label, sample.path, entry["face_found"], dataset,
                                          self.settings.input_size, tuple(entry["window"]), tuple(entry["image_size"]),
                                          tuple(tuple(point) for point in entry["landmarks"])))
        return crops, skipped

    def _compute(self, batch: Sequence[tuple[Sample, str]]) -> None:
        images, keep = [], []
        for sample, digest in batch:
            try:
                images.append(decode_photo(sample.path.read_bytes(), max_side=self.settings.max_side))  # as serving decodes
                keep.append(digest)
            except ImageError as exc:
                self.index[digest] = {"error": exc.code, "message": exc.message}
        for digest, prepared in zip(keep, self.preprocessor.prepare_many(images)):
            path = self.crop_path(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            prepared.crops[0].save(path, format="PNG", compress_level=1)
            face = prepared.faces[0].to_dict() if prepared.faces else None
            landmarks = [list(point) for point in prepared.faces[0].landmarks] if prepared.faces else []
            self.index[digest] = {"face_found": prepared.face_found, "face": face, "landmarks": landmarks,
                                  "window": list(prepared.crop_boxes[0]), "image_size": list(prepared.image_size)}


# ---------------------------------------------------------------------------------------------
# Torch dataset


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float in [0, 1], the same conversion as ``to_tensor_batch``."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def centre_view(image: Image.Image, size: int, mask: Image.Image | None = None):
    """The centre ``size`` square: a cached context crop cut down to exactly what serving crops (and
    a dense-target ``mask`` cut the same way, returned beside it when given)."""
    left = (image.width - size) // 2
    box = (left, left, left + size, left + size)
    window = image if image.width == size else image.crop(box)
    if mask is None:
        return window
    return window, (mask if mask.width == size else mask.crop(box))


class CropDataset(Dataset):
    """Cached crops -> (image tensor, label). ``view`` cuts a context crop to the input size (the
    centre by default); ``transform`` maps (PIL crop, label) -> (PIL crop, label). ``forger``
    (``training.forgery.Forger``) may first turn a real face into a self-made fake (label 1), with
    another real crop of the set as the donor of a region blend. With ``kind_of`` (item, label,
    forgery name or None) -> class, a third item: the kind-of-fake target (``training.kinds``); with
    ``source_of`` (item, label) -> class, one more: the source target (``training.adversary``). With
    ``dense_targets``, a third item instead: the crop's dense target (``training.regions``), a uint8
    (S, S) tensor moved with the pixels."""

    def __init__(self, items: Sequence[CachedCrop], transform: Callable | None = None, view: Callable | None = None,
                 dense_targets: bool = False, kind_of: Callable[[CachedCrop, int, str | None], int] | None = None,
                 forger=None, source_of: Callable[[CachedCrop, int], int] | None = None):
        if dense_targets and (kind_of is not None or source_of is not None):
            raise ValueError("a dataset gives dense targets or kind and source targets, not both")
        self.items = list(items)
        self.transform = transform
        self.view = view or centre_view
        self.dense_targets = dense_targets
        self.kind_of = kind_of
        self.source_of = source_of
        self.forger = forger
        # donors for region blends: real crops with their five landmarks
        self.donors = [i for i, item in enumerate(self.items) if item.label == 0 and len(item.landmarks) == 5] if forger else []

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        return np.array([item.label for item in self.items], dtype=np.int64)

    def _forge_context(self, item: CachedCrop, image: Image.Image):
        """(forgery name or None, context crop, blend mask or None) for one drawn item."""
        if self.forger is None:
            return None, image, None
        forgery = self.forger.choose(item.label)
        if forgery == "region" and (len(item.landmarks) != 5 or item.window is None):
            forgery = "sbi"  # no landmarks to place a region on: blend the whole face instead
        if forgery != "region":
            return forgery, image, None
        donor = None
        if self.donors:
            other = self.items[self.donors[int(torch.randint(len(self.donors), ()).item())]]
            with Image.open(other.crop) as f:
                donor_image = f.convert("RGB")
            donor = donor_image, context_points(other.window, other.landmarks, donor_image.width)
        image, blend = self.forger.before_view(forgery, image, context_points(item.window, item.landmarks, image.width), donor)
        return forgery, image, blend

    def __getitem__(self, index: int):
        item = self.items[index]
        with Image.open(item.crop) as f:
            image = f.convert("RGB")
        forgery, image, blend = self._forge_context(item, image)
        label = 1 if forgery else item.label
        if not self.dense_targets:
            if item.input_size and image.width != item.input_size:
                image = self.view(image, item.input_size)
            if forgery:
                image = self.forger.after_view(forgery, image)
            if self.transform is not None:
                image, label = self.transform(image, label)
            sample = [pil_to_tensor(image), torch.tensor(label, dtype=torch.float32)]
            if self.kind_of is not None:
                sample.append(torch.tensor(self.kind_of(item, label, forgery)))
            if self.source_of is not None:
                sample.append(torch.tensor(self.source_of(item, label)))
            return tuple(sample)

        mask = self._dense_target(item, image.width, forgery, blend)
        if item.input_size and image.width != item.input_size:
            image, mask = self.view(image, item.input_size, mask)
        if forgery:
            image = self.forger.after_view(forgery, image)
        if self.transform is not None:
            image, label, mask = self.transform(image, label, mask)
        return (pil_to_tensor(image), torch.tensor(label, dtype=torch.float32),
                torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()))

    @staticmethod
    def _dense_target(item: CachedCrop, side: int, forgery: str | None, blend) -> Image.Image:
        if forgery is None:
            return target_mask(item, side)
        if blend is not None:  # a region blend knows where it pasted
            return blend_target(blend)
        return Image.new("L", (side, side), UNKNOWN)  # where a whole-face forgery shows is not tracked
