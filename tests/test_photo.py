"""Full-size photos through the reduced decode (runtime/photo.py, decode_photo): the same faces and
the same verdict as the full decode, on 12 MP and 24 MP photos made from real faces (the shipped
examples and scikit-image's astronaut, upscaled into phone-sized frames), with the real detector and
the default model. JPEGs decode through TurboJPEG (runtime/jpeg.py) where it is installed: its
pixels, full and DCT-scaled, are checked against Pillow's own decode, the path every JPEG took before."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage import data as skdata

from benchmarks.photos import PHONE_12MP, PHONE_24MP, jpeg_bytes, phone_photo
from runtime import jpeg
from runtime.decoding import ImageError, decode_image, decode_photo, to_rgb
from runtime.photo import Photo, detection_scale
from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch
from runtime.weights import Calibration, load_weights
from test_handler import model_dir  # noqa: F401  (fixture: the session archive, extracted)

ROOT = Path(__file__).resolve().parents[1]
# the eight 256 px FFHQ / StyleGAN examples (the others carry their kind in the name): faces the
# photo set scales to 200-2600 px, so every crop path (native, 1/2, 1/4, 1/8 views) is exercised
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.jpg") if "_" not in p.stem)
ASTRONAUT_FACE_SHARE = 0.22  # her face box is about 110 of the photo's 512 px


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    net, meta = load_weights(ROOT / "weights" / "default.safetensors")
    return net, Calibration.from_metadata(meta), PreprocessSettings.from_metadata(meta)


@pytest.fixture(scope="module")
def preprocessor(model):
    return FacePreprocessor.from_settings(model[2], threads=1)


def probability(model, crop: Image.Image) -> float:
    net, calibration, _ = model
    with torch.inference_mode():
        return float(calibration.probability(net(to_tensor_batch([crop])))[0])


def photo_set() -> list[tuple[str, bytes]]:
    """Faces from 200 px (a native crop) to 1800 px across, in 12 MP and 24 MP frames."""
    faces = [(Image.open(p), 0.6) for p in EXAMPLES] + [(Image.fromarray(skdata.astronaut()), ASTRONAUT_FACE_SHARE)]
    sizes = [200, 450, 700, 900, 1100, 1300, 1500, 1650, 1800]
    photos = [(f"12mp-{k}-{px}px", jpeg_bytes(phone_photo(face, PHONE_12MP, px, face_share=share, seed=k)))
              for k, ((face, share), px) in enumerate(zip(faces, sizes))]
    photos += [(f"24mp-{k}-{px}px", jpeg_bytes(phone_photo(faces[k][0], PHONE_24MP, px, face_share=faces[k][1], seed=k)))
               for k, px in ((8, 600), (1, 1200), (3, 2000), (5, 2600))]
    return photos


def pillow_decode(data: bytes, reduce: int = 1) -> Image.Image:
    """Pillow's own decode at 1/``reduce`` (draft), upright, RGB: what decode_image gave every JPEG
    before TurboJPEG."""
    image = Image.open(io.BytesIO(data))
    if reduce > 1:
        image.draft(None, (image.width // reduce, image.height // reduce))
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


@pytest.fixture(scope="module")
def compared(model, preprocessor) -> list[dict]:
    """Each photo through Pillow's full decode (the reference) and through decode_photo."""
    rows = []
    for name, body in photo_set():
        full = pillow_decode(body)
        reference = preprocessor.prepare(full)
        photo = decode_photo(body, max_side=model[2].max_side)
        fast = preprocessor.prepare(photo)
        rows.append({"name": name, "full": full, "photo": photo, "reference": reference, "fast": fast,
                     "p_full": probability(model, reference.crops[0]), "p_fast": probability(model, fast.crops[0])})
    return rows


@pytest.mark.slow
def test_the_reduced_decode_finds_the_same_faces(compared):
    for row in compared:
        reference, fast, size = row["reference"], row["fast"], row["full"].size
        assert fast.image_size == reference.image_size == size
        assert len(fast.faces) == len(reference.faces), row["name"]
        for a, b in zip(reference.faces, fast.faces):  # every box within 2 % of the image size
            assert max(abs(x - y) for x, y in zip(a.box, b.box)) <= 0.02 * max(size), row["name"]
    # the set is not vacuous: most photos have their face found, and the detector saw a reduced decode
    assert sum(bool(row["fast"].faces) for row in compared) >= len(compared) - 2
    assert all(row["photo"].preview[1] > 1 for row in compared)


@pytest.mark.slow
def test_crops_are_the_full_decodes_crops(model, preprocessor, compared):
    """For the same face box, the crop from decode_photo (TurboJPEG where installed) is pixel for
    pixel Pillow's full decode's, native or resized, so the verdict cannot move (a reduced decode's
    one-level differences moved it 0.038)."""
    resized = 0
    for row in compared:
        for face in row["fast"].faces[:1]:
            crop, window = preprocessor.crop(row["photo"], face.box)
            exact, same_window = preprocessor.crop(row["full"], face.box)
            assert window == same_window
            assert np.array_equal(np.asarray(crop), np.asarray(exact)), row["name"]
            resized += not preprocessor.is_native(face.box)
    assert resized >= len(compared) - 4  # most faces in the set are too large for a native crop


@pytest.mark.slow
def test_the_verdict_matches_the_full_decode_where_the_detector_agrees(compared):
    """End to end: max |ΔP(fake)| <= 0.02 against the full decode whenever the detector returned the
    same box. (RetinaFace's boxes are whole pixels of its 640 px input, so a reduced decode can move
    a box by one of them, 6 px of a 12 MP photo; the benchmark report measures how far the verdict
    then moves, and how far it moves on the full decode when the photo itself shifts that much.)"""
    agreeing = [row for row in compared if row["fast"].faces
                and row["fast"].faces[0].box == pytest.approx(row["reference"].faces[0].box, abs=1e-6)]
    assert len(agreeing) >= len(compared) // 2
    for row in agreeing:
        assert abs(row["p_fast"] - row["p_full"]) <= 0.02, row["name"]


def textured(size: tuple[int, int]) -> Image.Image:
    """A photo with detail everywhere (the astronaut, tiled, plus noise), so that a view mapped one
    pixel off would show."""
    tile = np.asarray(Image.fromarray(skdata.astronaut()).resize((300, 300)))
    reps = (size[1] // 300 + 1, size[0] // 300 + 1, 1)
    pixels = np.tile(tile, reps)[: size[1], : size[0]].astype(np.int16)
    pixels += np.random.default_rng(0).integers(-20, 20, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_views_map_onto_the_upright_full_image(orientation):
    """A JPEG whose size is no multiple of 8, stored in each EXIF orientation: a region of the
    upright full decode and the same region cut from the 1/4 view through Photo's mapping agree
    (both brought to the same size), and a region one view pixel off does not."""
    stored = textured((2403, 1801))
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = jpeg_bytes(stored, quality=95, exif=exif)
    full = decode_image(body)
    photo = decode_photo(body, max_side=400)
    view, scale = photo.preview
    assert scale == 4 and photo.size == full.size
    box = (803.0, 611.0, 1203.0, 1011.0)  # upright full-resolution pixels

    (ox, oy), = photo.to_full([(0.0, 0.0)], scale)  # view pixel (x, y) is full pixel (x * scale + ox, y * scale + oy)

    def region(box):
        in_view = ((box[0] - ox) / scale, (box[1] - oy) / scale, (box[2] - ox) / scale, (box[3] - oy) / scale)
        return np.asarray(view.resize((100, 100), Image.BILINEAR, box=in_view), dtype=float)

    expected = np.asarray(full.resize((100, 100), Image.BILINEAR, box=box), dtype=float)
    assert np.abs(region(box) - expected).mean() < 4.0
    off = (box[0] + 4, box[1] + 4, box[2] + 4, box[3] + 4)
    assert np.abs(region(off) - expected).mean() > 2 * np.abs(region(box) - expected).mean()


def test_small_images_and_other_formats_decode_whole(tmp_path):
    """Below twice the detector's input, and for formats without DCT scaling, decode_photo is
    decode_image: one full view, the same pixels (training and serving see the same crops)."""
    body = EXAMPLES[0].read_bytes()
    photo = decode_photo(body)
    assert list(photo.views) == [1] and np.array_equal(np.asarray(photo.views[1]), np.asarray(decode_image(body)))
    big_png = io.BytesIO()
    textured((1600, 1200)).save(big_png, "PNG")
    assert list(decode_photo(big_png.getvalue(), max_side=200).views) == [1]
    assert detection_scale((4032, 3024), 640) == 4 and detection_scale((1279, 900), 640) == 1
    assert detection_scale((6000, 4000), 128) == 8


def test_refusals_are_the_same_as_the_full_decode():
    body = jpeg_bytes(textured((2400, 1800)))
    for data, kwargs, code in [(body[: len(body) // 3], {}, "corrupt_image"), (body, {"max_pixels": 1_000_000}, "image_too_large"),
                               (b"not an image", {}, "not_an_image"), (b"", {}, "empty_body")]:
        for decode in (decode_image, decode_photo):
            with pytest.raises(ImageError) as err:
                decode(data, **kwargs)
            assert err.value.code == code, (decode.__name__, code)


def test_photo_whole_is_the_image_itself():
    image = Image.new("RGB", (64, 48))
    photo = Photo.whole(image)
    assert photo.preview == (image, 1) and photo.full() is image and photo.size == (64, 48)


def test_the_handler_decodes_for_the_weights_detector_size(model_dir, tmp_path):
    """max_side is the weights' setting (``preprocessing`` in their metadata) and the whole request
    path follows it: weights saying 128 get a 128 px detector and a 1/8 decode of a 12 MP photo, and
    the verdict keeps the photo's own pixels for its size and box."""
    import json
    import shutil

    from handler.deepfake_handler import DeepfakeHandler
    from test_handler import FakeContext

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["preprocessing"]["max_side"] = 128
    (folder / "model.json").write_text(json.dumps(meta))
    handler = DeepfakeHandler()
    handler.initialize(FakeContext(folder, {"handler": {"backend": "eager", "threads": 1}}))
    assert handler.preprocessor.detector.max_side == 128 and handler.max_side == 128

    body = jpeg_bytes(phone_photo(Image.open(EXAMPLES[0]), PHONE_12MP, 1200))
    context = FakeContext(folder, {}, {0: {"Content-Type": "image/jpeg"}})
    answer = handler.handle([{"body": bytearray(body)}], context)[0]
    assert answer["image_size"] == [4032, 3024] and answer["face"] is not None
    x1, y1, x2, y2 = answer["face"]["box"]
    assert 700 < x2 - x1 < 1600 and abs((x1 + x2) / 2 - 2016) < 200  # the face, in the photo's pixels
    assert decode_photo(body, max_side=128).preview[1] == 8


def jpeg_variants() -> dict[str, bytes]:
    """One textured image (1203 x 901: no multiple of a block or an MCU) stored every way a phone,
    an editor or a scanner might: each chroma subsampling, progressive, greyscale, RGB without the
    YCbCr transform, CMYK, and each EXIF orientation."""
    image = textured((1203, 901))
    variants = {}

    def save(name: str, picture: Image.Image = image, **options) -> None:
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90, **options)
        variants[name] = buffer.getvalue()

    for subsampling, name in ((0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")):
        save(name, subsampling=subsampling)
        save(f"{name} progressive", subsampling=subsampling, progressive=True)
    save("greyscale", image.convert("L"))
    save("greyscale progressive", image.convert("L"), progressive=True)
    save("rgb", keep_rgb=True)
    save("cmyk", image.convert("CMYK"))
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"orientation {orientation}", exif=exif)
    return variants


VARIANTS = jpeg_variants()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_jpegs_decode_to_pillows_pixels(name):
    """decode_image at full size and at each DCT scale (what decode_photo asks for) is pixel for
    pixel Pillow's decode, whichever decoder made it; TurboJPEG made it for every file but CMYK."""
    data = VARIANTS[name]
    for reduce in (1, 2, 4, 8):
        expected, got = np.asarray(pillow_decode(data, reduce)), np.asarray(decode_image(data, reduce=reduce))
        assert got.shape == expected.shape and np.array_equal(got, expected), (name, reduce)
    if jpeg.turbo() is not None:
        header = Image.open(io.BytesIO(data))
        assert (jpeg.decode_array(data, header) is None) == (name == "cmyk")


def test_turbojpeg_is_installed_where_the_setup_ran():
    """pyproject.toml pins PyTurboJPEG and scripts/install-system.sh installs libturbojpeg wherever
    apt has it; elsewhere JPEGs decode through Pillow, slower, with the same pixels."""
    if jpeg.turbo() is None:
        pytest.skip("libturbojpeg is not installed here (scripts/install-system.sh installs it where apt has it)")
    assert jpeg.decoder() == "turbojpeg"


def test_without_turbojpeg_pillow_decodes_and_says_so():
    """A host without PyTurboJPEG or libturbojpeg: the same pixels through Pillow, one warning in
    the log, and ``decoder()`` says which path decodes (the handler's description shows it)."""
    code = (
        "import sys; sys.modules['turbojpeg'] = None\n"  # what an import of a missing package does
        "import hashlib, numpy as np\n"
        "from runtime.jpeg import decoder\n"
        "from runtime.decoding import decode_image\n"
        "pixels = np.asarray(decode_image(sys.stdin.buffer.read(), reduce=2))\n"
        "print(decoder(), hashlib.sha256(pixels.tobytes()).hexdigest())\n"
    )
    data = VARIANTS["4:2:0"]
    run = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, cwd=ROOT, check=True)
    expected = hashlib.sha256(np.asarray(pillow_decode(data, 2)).tobytes()).hexdigest()
    assert run.stdout.decode().split() == ["pillow", expected]
    assert b"JPEGs decode through Pillow: TurboJPEG is not available" in run.stderr


def test_a_truncated_jpeg_is_refused_as_pillow_refuses_it():
    """TurboJPEG only warns on a truncated file and fills the rest grey; the warning hands it to
    Pillow, which refuses it."""
    data = VARIANTS["4:2:0"]
    assert jpeg.decode_array(data[: len(data) // 2], Image.open(io.BytesIO(data))) is None
    for reduce in (1, 4):
        with pytest.raises(ImageError) as err:
            decode_image(data[: len(data) // 2], reduce=reduce)
        assert err.value.code == "corrupt_image"


@pytest.mark.parametrize("orientation", [1, 6])
def test_crops_read_from_the_array_are_the_full_images_crops(orientation):
    """TurboJPEG's full decode stays an array and a crop converts only the pixels it reads
    (Photo.window): native windows, windows past every edge, small faces upsampled and resized
    squares of every shrink give Pillow's full decode's crops, pixel for pixel."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = jpeg_bytes(textured((2403, 1801)), quality=95, exif=exif)
    full = pillow_decode(body)
    width, height = full.size
    boxes = [(0.0, 0.0, 150.0, 170.0), (width - 120.5, height - 200.2, width, height), (900.3, 700.7, 1010.2, 830.9),
             (30.0, 400.0, 90.0, 470.0), (10.0, 10.0, 1500.0, 1600.0), (width - 700.0, 100.0, width - 1.0, 900.0)]
    rng = np.random.default_rng(orientation)
    for _ in range(12):
        x, y, side = rng.uniform(0, width - 50), rng.uniform(0, height - 50), rng.uniform(20, 1400)
        boxes.append((x, y, min(width, x + side), min(height, y + side * rng.uniform(0.8, 1.3))))
    for crop, min_face in (("native", 0), ("native", 150), ("resize", 0)):
        preprocessor = FacePreprocessor(192, crop=crop, min_face=min_face, threads=1)
        photo = decode_photo(body, max_side=400)
        for box in boxes:
            got, window = preprocessor.crop(photo, box)
            expected, same = preprocessor.crop(full, box)
            assert window == same and np.array_equal(np.asarray(got), np.asarray(expected)), (crop, min_face, box)
    if jpeg.turbo() is not None:
        assert isinstance(photo.views[1], np.ndarray)  # the array path was the one tested


def heic_bytes(image: Image.Image, thumbnails: list[int]) -> bytes:
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=80, thumbnails=thumbnails)
    return buffer.getvalue()


def test_heic_detection_sees_its_embedded_thumbnail_and_the_crop_the_full_decode():
    """A HEIC with a thumbnail of at least the detector's input gives the detector that thumbnail
    (no full-size shrink) and maps its faces to full-resolution pixels; every crop is the full
    decode's. Without such a thumbnail (phones embed 320 px ones) it is decoded whole, as before."""
    picture = phone_photo(Image.fromarray(skdata.astronaut()), (1600, 1200), 400, face_share=ASTRONAUT_FACE_SHARE, seed=3)
    body = heic_bytes(picture, [160, 512])
    full = decode_image(body)
    photo = decode_photo(body, max_side=400)
    view, scale = photo.preview
    assert view.size == (512, 384) and scale == pytest.approx(1600 / 512) and photo.size == full.size
    preprocessor = FacePreprocessor(192, crop="native", threads=1, max_side=400)
    fast, reference = preprocessor.prepare(photo), preprocessor.prepare(full)
    assert fast.faces and len(fast.faces) == len(reference.faces)
    box, same = fast.faces[0].box, reference.faces[0].box
    assert max(abs(a - b) for a, b in zip(box, same)) <= 0.02 * max(full.size)  # the same face
    crop, window = preprocessor.crop(photo, box)
    exact, same_window = preprocessor.crop(full, box)
    assert window == same_window and np.array_equal(np.asarray(crop), np.asarray(exact))
    for small in (heic_bytes(picture, [160]), heic_bytes(picture, [])):
        assert list(decode_photo(small, max_side=400).views) == [1]
