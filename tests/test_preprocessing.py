"""Face preprocessing shared by training and serving, on a real photo (scikit-image's astronaut)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from runtime.decoding import ImageError, decode_image
from runtime.preprocessing import FacePreprocessor, to_tensor_batch

# Eileen Collins' face in astronaut.png (512x512), located by eye: forehead to chin, ear to ear
FACE_REGION = (170, 50, 280, 185)


@pytest.fixture(scope="module")
def preprocessor():
    return FacePreprocessor(192, margin=0.3)


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skdata.astronaut())


def test_finds_and_crops_the_astronaut_face(preprocessor, astronaut):
    prepared = preprocessor.prepare(astronaut)
    assert prepared.face_found and len(prepared.faces) == 1
    face = prepared.faces[0]
    x1, y1, x2, y2 = face.box
    rx1, ry1, rx2, ry2 = FACE_REGION
    assert face.score > 0.9
    # the box sits on the face: its centre inside the region, its size face-like
    assert rx1 < (x1 + x2) / 2 < rx2 and ry1 < (y1 + y2) / 2 < ry2
    assert 60 < x2 - x1 < 160 and 60 < y2 - y1 < 160
    # the crop is square, holds the whole box plus margin, and has the model's input size
    left, top, right, bottom = prepared.crop_boxes[0]
    assert right - left == bottom - top
    assert left <= x1 and top <= y1 and right >= x2 and bottom >= y2
    assert right - left == pytest.approx(max(x2 - x1, y2 - y1) * 1.3, abs=2)
    assert prepared.crops[0].size == (192, 192)
    # the crop's pixels are that region of the photo, resized
    expected = astronaut.resize((192, 192), Image.BICUBIC, box=prepared.crop_boxes[0], reducing_gap=None)
    assert np.array_equal(np.asarray(prepared.crops[0]), np.asarray(expected))


def test_no_face_gives_a_centre_crop_and_a_flag(preprocessor):
    prepared = preprocessor.prepare(Image.new("RGB", (300, 200), (120, 130, 140)))
    assert not prepared.face_found and prepared.faces == []
    assert prepared.crop_boxes == [(50, 0, 250, 200)]
    assert prepared.crops[0].size == (192, 192)


def test_batched_detection_matches_single(preprocessor, astronaut):
    small = astronaut.resize((256, 256))
    one = preprocessor.prepare(small)
    many = preprocessor.prepare_many([astronaut, small])
    assert np.array_equal(np.asarray(many[1].crops[0]), np.asarray(one.crops[0]))
    assert many[1].faces[0].box == pytest.approx(one.faces[0].box, abs=1.0)


def test_exif_orientation_is_applied(astronaut):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90° clockwise
    astronaut.crop((0, 0, 512, 300)).save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (300, 512)


@pytest.mark.parametrize(
    "payload, code",
    [(b"", "empty_body"), (b"hello, not an image", "not_an_image"), (b"\xff\xd8\xff\xe0" + b"\0" * 40, "not_an_image")],
)
def test_bad_bytes_raise_image_error(payload, code):
    with pytest.raises(ImageError) as err:
        decode_image(payload)
    assert err.value.code == code


def test_tensor_batch_is_the_model_input(preprocessor, astronaut):
    batch = to_tensor_batch(preprocessor.prepare(astronaut).crops)
    assert batch.shape == (1, 3, 192, 192)
    assert batch.dtype.is_floating_point and 0.0 <= batch.min() and batch.max() <= 1.0


def test_detector_calls_group_images_of_about_one_size():
    """One onnxruntime call per group of similar sizes: a 640 x 480 photo view does not make three
    256 px uploads pay for its canvas (largest first)."""
    from runtime.detector import size_buckets

    assert size_buckets([(256, 256), (256, 256), (480, 640), (250, 256)]) == [[2], [0, 1, 3]]
    assert size_buckets([(480, 640), (640, 480)]) == [[0], [1]]  # a 640 x 640 canvas would be 25 % padding each
    assert size_buckets([]) == []


def test_mixed_sizes_detect_exactly_as_one_at_a_time(preprocessor, astronaut):
    small, wide = astronaut.resize((256, 256)), astronaut.resize((640, 400))
    together = preprocessor.detector.detect([small, wide, small])
    alone = [preprocessor.detector.detect([image])[0] for image in (small, wide, small)]
    assert together == alone


def test_tensor_batch_is_exactly_what_training_feeds_the_model(preprocessor, astronaut):
    from training.data import pil_to_tensor

    crops = preprocessor.prepare(astronaut).crops + [Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)).resize((192, 192))]
    batch = to_tensor_batch(crops)
    for k, crop in enumerate(crops):
        assert torch.equal(batch[k], pil_to_tensor(crop))
    assert batch.is_contiguous()
