"""Data discovery, splitting, the crop cache (through the serving preprocessor) and augmentations."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from runtime.detector import FaceDetector
from runtime.preprocessing import FacePreprocessor, PreprocessSettings
from training.augment import Augment, AugmentConfig, self_blend
from training.data import (
    centre_view,
    CropCache,
    CropDataset,
    Sample,
    SplitSpec,
    discover,
    discover_roots,
    list_class_folders,
    stratified_split,
)


def touch_images(folder, n, prefix="img"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:03d}.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, ignored")


def test_labels_are_explicit(tmp_path):
    # alphabetical order (ImageFolder's) would give fake = 0; the contract is real = 0, fake = 1
    touch_images(tmp_path / "fake", 2)
    touch_images(tmp_path / "real", 2)
    samples = list_class_folders(tmp_path)
    assert {s.path.parent.name: s.label for s in samples} == {"real": 0, "fake": 1}


def test_flat_folder_split_is_stratified_deterministic_and_disjoint(tmp_path):
    touch_images(tmp_path / "Real", 100)  # folder names are case-insensitive
    touch_images(tmp_path / "FAKE", 60)
    splits = discover(tmp_path, SplitSpec(val=0.15, test=0.15, seed=7))
    counts = {k: (sum(s.label == 0 for s in v), sum(s.label == 1 for s in v)) for k, v in splits.items()}
    assert counts == {"train": (70, 42), "val": (15, 9), "test": (15, 9)}
    paths = [set(s.path for s in v) for v in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert all(s.label == (1 if s.path.parent.name == "FAKE" else 0) for v in splits.values() for s in v)
    assert discover(tmp_path, SplitSpec(val=0.15, test=0.15, seed=7)) == splits
    assert discover(tmp_path, SplitSpec(val=0.15, test=0.15, seed=8))["test"] != splits["test"]


def test_split_does_not_depend_on_listing_order(tmp_path):
    samples = [Sample(tmp_path / f"{i}.jpg", i % 2) for i in range(40)]
    spec = SplitSpec(0.2, 0.2, 0)
    assert stratified_split(samples, spec) == stratified_split(list(reversed(samples)), spec)


def test_presplit_layout_is_used_as_given(tmp_path):
    for split, n in [("train", 5), ("Val", 2), ("test", 3)]:
        touch_images(tmp_path / split / "real", n)
        touch_images(tmp_path / split / "fake", n + 1)
    splits = discover(tmp_path)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [11, 5, 7]


def write_groups(root, rows):
    (root / "groups.csv").write_text("path,label,group\n" + "".join(f"{p},{p.split('/')[0]},{g}\n" for p, g in rows))


def test_a_root_with_groups_is_split_by_group_never_across_splits(tmp_path):
    # 40 groups of one real and one fake (a face swap and its source video), plus a group of three
    touch_images(tmp_path / "real", 41, "r")
    touch_images(tmp_path / "fake", 42, "f")
    rows = [(f"real/r{i:03d}.jpg", f"video{i}") for i in range(41)] + [(f"fake/f{i:03d}.jpg", f"video{i}") for i in range(40)]
    rows += [("fake/f040.jpg", "video40"), ("fake/f041.jpg", "video40")]
    write_groups(tmp_path, rows)
    group_of = {tmp_path / p: g for p, g in rows}
    splits = discover(tmp_path, SplitSpec(val=0.2, test=0.2, seed=3))
    groups = {name: {group_of[s.path] for s in samples} for name, samples in splits.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert [len(groups[k]) for k in ("train", "val", "test")] == [25, 8, 8]  # 41 groups: 8 + 8 + the rest
    assert sum(len(v) for v in splits.values()) == 83
    assert discover(tmp_path, SplitSpec(val=0.2, test=0.2, seed=3)) == splits
    assert discover(tmp_path, SplitSpec(val=0.2, test=0.2, seed=4))["test"] != splits["test"]


def test_an_image_missing_from_the_groups_file_is_an_error(tmp_path):
    touch_images(tmp_path / "real", 2, "r")
    touch_images(tmp_path / "fake", 2, "f")
    write_groups(tmp_path, [("real/r000.jpg", "a"), ("real/r001.jpg", "b"), ("fake/f000.jpg", "a")])
    with pytest.raises(ValueError, match="1 image.*no group.*f001"):
        discover(tmp_path)


def test_a_fake_only_root_takes_the_real_images_of_its_donor_in_the_same_splits(tmp_path):
    touch_images(tmp_path / "faces" / "real", 20, "r")
    touch_images(tmp_path / "faces" / "fake", 20, "g")
    touch_images(tmp_path / "diffusion" / "fake", 10, "d")
    spec = SplitSpec(val=0.2, test=0.2, seed=1)
    found = discover_roots([tmp_path / "faces", tmp_path / "diffusion"], spec, {"diffusion": "faces"})
    for split in ("train", "val", "test"):
        donor_reals = [s for s in found["faces"][split] if s.label == 0]
        paired = found["diffusion"][split]
        assert [s for s in paired if s.label == 0] == donor_reals  # the same reals, split as the donor splits them
        assert {s.path.parent.parent.name for s in paired if s.label == 1} == {"diffusion"}
    assert [sum(s.label for s in found["diffusion"][k]) for k in ("train", "val", "test")] == [6, 2, 2]
    with pytest.raises(ValueError, match="'fake' folder"):  # unpaired, a fake-only root is refused
        discover_roots([tmp_path / "diffusion"], spec)
    with pytest.raises(ValueError, match="not given as data.*faces"):
        discover_roots([tmp_path / "diffusion"], spec, {"diffusion": "faces"})


def test_missing_class_folder_is_an_error(tmp_path):
    touch_images(tmp_path / "real", 3)
    with pytest.raises(ValueError, match="real.*fake"):
        discover(tmp_path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    (root / "real").mkdir()
    (root / "fake").mkdir()
    Image.fromarray(skdata.astronaut()).save(root / "real" / "astronaut.jpg", quality=95)
    Image.new("RGB", (120, 90), (200, 120, 40)).save(root / "fake" / "flat.png")
    (root / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"truncated" * 10)
    return root


def test_crop_cache_skips_corrupt_images_and_matches_serving(image_folder, tmp_path):
    samples = discover(image_folder, SplitSpec(0.0, 0.0))["train"]
    settings = PreprocessSettings(input_size=96, margin=0.3)
    crops, skipped = CropCache(tmp_path, settings).prepare(samples)

    assert [(s.source.name, s.code) for s in skipped] == [("broken.jpg", "not_an_image")]
    by_name = {c.source.name: c for c in crops}
    assert set(by_name) == {"astronaut.jpg", "flat.png"}
    assert by_name["astronaut.jpg"].face_found and not by_name["flat.png"].face_found
    assert (by_name["astronaut.jpg"].label, by_name["flat.png"].label) == (0, 1)

    # the cached crop holds exactly the pixels serving computes for the same file
    served = FacePreprocessor(96, 0.3).prepare(Image.open(image_folder / "real" / "astronaut.jpg").convert("RGB"))
    cached = Image.open(by_name["astronaut.jpg"].crop)
    assert np.array_equal(np.asarray(cached), np.asarray(served.crops[0]))

    # a second cache on the same folder answers from disk: no detector is ever built
    again = CropCache(tmp_path, settings)
    crops2, skipped2 = again.prepare(samples)
    assert again._preprocessor is None
    assert [c.crop for c in crops2] == [c.crop for c in crops] and len(skipped2) == 1

    # other settings -> another cache folder
    assert PreprocessSettings(96, 0.2).key() != settings.key()

    x, y = CropDataset(crops)[0]
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.item() in (0.0, 1.0)


def test_augment_is_reproducible_under_a_seed():
    image = Image.fromarray(skdata.astronaut()).resize((128, 128))
    augment = Augment(AugmentConfig(jpeg=1.0, blur=1.0))
    torch.manual_seed(5)
    a, _ = augment(image, 0)
    torch.manual_seed(5)
    b, _ = augment(image, 0)
    assert a.size == (128, 128)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_self_blended_fake():
    image = Image.fromarray(skdata.astronaut()).resize((128, 128))
    fake = self_blend(image, seed=3)
    assert fake.size == image.size and fake.mode == "RGB"
    diff = np.abs(np.asarray(fake, np.int16) - np.asarray(image, np.int16)).sum(axis=2)
    # blended inside the face, untouched at the corners
    assert diff[48:80, 48:80].mean() > 2
    assert diff[:8, :8].mean() < 1 and diff[-8:, -8:].mean() < 1
    assert np.array_equal(np.asarray(self_blend(image, seed=3)), np.asarray(fake))


def test_sbi_turns_real_into_fake_only():
    from training.forgery import Forger

    forger = Forger.from_augment(AugmentConfig(sbi=1.0))
    assert forger.choose(0) == "sbi" and forger.choose(1) is None
    assert Forger.from_augment(AugmentConfig(sbi=0.0)) is None
    image = Image.new("RGB", (64, 64), (100, 120, 140))
    assert forger.after_view("sbi", image).size == image.size


def test_dataset_report(image_folder, tmp_path):
    from training.dataset_report import dataset_report

    report = dataset_report(image_folder, tmp_path, SplitSpec(0.0, 0.0), spectrum_size=64)
    assert report["total"] == {"real": 1, "fake": 2}
    assert [u["error"] for u in report["unreadable"]] == ["not_an_image"]
    assert report["resolutions"] == {"512x512": 1, "120x90": 1}
    assert report["spectrum_images"] == {"real": 1, "fake": 1}
    with Image.open(tmp_path / "spectra.png") as png:
        assert png.format == "PNG"


def test_native_crop_keeps_original_pixels_and_the_cache_keeps_context(tmp_path):
    root = tmp_path / "small"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    portrait = Image.fromarray(skdata.astronaut()).resize((256, 256), Image.LANCZOS)
    portrait.save(root / "real" / "astronaut.png")
    settings = PreprocessSettings(input_size=96, margin=0.3, crop="native")
    served = FacePreprocessor.from_settings(settings, threads=1).prepare(portrait)
    x1, y1, x2, y2 = served.faces[0].box
    assert max(x2 - x1, y2 - y1) <= 96 * 1.25  # small enough for a native crop

    # serving: a 96 px window of untouched original pixels centred on the face
    left, top, right, bottom = served.crop_boxes[0]
    assert right - left == 96 and abs((left + right) / 2 - (x1 + x2) / 2) <= 1
    assert np.array_equal(np.asarray(served.crops[0]), np.asarray(portrait.crop(served.crop_boxes[0])))

    # the cache stores twice the window around the same centre; its centre is the served crop
    crops, _ = CropCache(tmp_path / "cache", settings).prepare(discover(root, SplitSpec(0.0, 0.0))["train"])
    with Image.open(crops[0].crop) as cached:
        assert cached.size == (192, 192)
        assert np.array_equal(np.asarray(centre_view(cached.convert("RGB"), 96)), np.asarray(served.crops[0]))
    x, _ = CropDataset(crops)[0]
    assert torch.equal(x, torch.from_numpy(np.asarray(served.crops[0]).copy()).permute(2, 0, 1).float() / 255)

    # a face bigger than the window is resized (the legacy crop), so a huge upload still fits
    big = FacePreprocessor.from_settings(PreprocessSettings(input_size=32, crop="native"), threads=1).prepare(portrait)
    assert max(x2 - x1, y2 - y1) > 32 * 1.25
    assert big.crops[0].size == (32, 32) and big.crop_boxes[0][2] - big.crop_boxes[0][0] > 32


def test_min_face_shows_a_downscaled_upload_at_the_trained_face_size(tmp_path):
    portrait = Image.fromarray(skdata.astronaut()).resize((256, 256), Image.LANCZOS)
    plain = PreprocessSettings(input_size=96, crop="native")
    x1, y1, x2, y2 = FacePreprocessor.from_settings(plain, threads=1).prepare(portrait).faces[0].box
    face = round(max(x2 - x1, y2 - y1))
    settings = PreprocessSettings(input_size=96, crop="native", min_face=face)
    assert PreprocessSettings.from_metadata({"preprocessing": settings.to_metadata()}) == settings
    half = portrait.resize((128, 128), Image.BICUBIC)

    def crop(s, image):
        return np.asarray(FacePreprocessor.from_settings(s, threads=1).prepare(image).crops[0], dtype=float)

    # the full-size face is at min_face already: its native pixels, untouched, as without the setting
    assert np.array_equal(crop(settings, portrait), crop(plain, portrait))

    # at half size it is upsampled back: the detector finds a face of about min_face in the crop,
    # where the plain crop shows one half as large
    def face_in(s, image):
        served = Image.fromarray(crop(s, image).astype(np.uint8))
        x1, y1, x2, y2 = FaceDetector(threads=1).detect([served])[0][0].box
        return max(x2 - x1, y2 - y1)

    assert face_in(settings, half) == pytest.approx(face, rel=0.15)
    assert face_in(plain, half) == pytest.approx(face / 2, rel=0.15)

    # training caches twice the window, upsampled alike: its centre is the served crop
    root = tmp_path / "small"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    half.save(root / "real" / "half.png")
    crops, _ = CropCache(tmp_path / "cache", settings).prepare(discover(root, SplitSpec(0.0, 0.0))["train"])
    with Image.open(crops[0].crop) as cached:
        centre = np.asarray(centre_view(cached.convert("RGB"), 96), dtype=float)
    served = crop(settings, half)
    assert np.array_equal(centre[4:-4, 4:-4], served[4:-4, 4:-4])  # bicubic support aside, at the edges


def test_zoom_out_view_shrinks_the_face_like_a_downscaled_upload():
    context = Image.fromarray(skdata.astronaut()).resize((128, 128))
    centre = centre_view(context, 64)
    plain = Augment(AugmentConfig())
    assert np.array_equal(np.asarray(plain.view(context, 64)), np.asarray(centre))
    zoom = Augment(AugmentConfig(zoom_out=1.0, zoom_out_factor=(0.5, 0.5)))
    torch.manual_seed(0)
    # factor 0.5: the whole 128 px context shrunk to 64 px
    assert np.array_equal(np.asarray(zoom.view(context, 64)),
                          np.asarray(context.resize((64, 64), Image.BICUBIC, reducing_gap=None)))
