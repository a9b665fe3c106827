"""Coarse-to-fine face detection (FaceDetector's ``coarse_side``, the weights' ``preprocessing``
setting, off by default): the same faces as the detector at ``max_side`` alone, at every face size from 40 to 400 px
in 480p frames, with boxes within a few pixels. Real faces (scikit-image's astronaut and the shipped
examples) pasted into frames as benchmarks/detector_size.py does; no timing here."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from benchmarks.detector_size import embed, iou, largest
from runtime.decoding import decode_image
from runtime.detector import FaceDetector
from runtime.preprocessing import FacePreprocessor, PreprocessSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FACE_SIZES = [40, 60, 80, 100, 150, 200, 300, 400]
BOX_TOLERANCE_PX = 6.0  # frame pixels: under 5 pixels of the 640 px view the full-size path looks at


@pytest.fixture(scope="module")
def faces() -> tuple[list[Image.Image], list]:
    images = [Image.fromarray(skdata.astronaut())] + [decode_image(p.read_bytes()) for p in sorted(EXAMPLES.rglob("*.jpg"))[:3]]
    boxes = [largest(found) for found in FaceDetector(max_side=640, threads=1).detect(images)]
    assert all(boxes)
    return images, boxes


def matched(detector: FaceDetector, frame: Image.Image, pasted) -> tuple | None:
    return next((face.box for face in detector.detect([frame])[0] if iou(face.box, pasted) >= 0.3), None)


@pytest.mark.parametrize("face_px", FACE_SIZES)
def test_coarse_to_fine_finds_the_faces_the_full_size_view_finds(faces, face_px):
    full, coarse = FaceDetector(max_side=640, threads=1), FaceDetector(max_side=640, coarse_side=320, threads=1)
    for seed in (0, 1):
        frames, pasted = embed(*faces, face_px, seed=seed)
        for frame, box in zip(frames, pasted):
            reference, found = matched(full, frame, box), matched(coarse, frame, box)
            assert (found is None) == (reference is None), (face_px, seed, box)
            if reference:
                assert max(abs(a - b) for a, b in zip(reference, found)) <= BOX_TOLERANCE_PX, (face_px, reference, found)


def test_the_window_path_is_taken_where_the_coarse_view_finds_a_face(faces):
    """Not vacuous: at 100 px the coarse view finds the face and the second look is a window, a
    small part of the 640 px view; below the coarse view's reach the whole view is looked at."""
    detector = FaceDetector(max_side=640, coarse_side=320, threads=1)
    frames, _ = embed(*faces, 100)
    for frame in frames:
        window = detector._window(detector._detect([frame], 320)[0], frame.size)
        assert window is not None and (window[2] - window[0]) * (window[3] - window[1]) < 0.4 * 640 * 360
    frames, _ = embed(*faces, 40)
    assert all(detector._window(detector._detect([frame], 320)[0], frame.size) is None for frame in frames)


def test_images_no_larger_than_the_coarse_view_are_looked_at_once_as_before(faces):
    image = faces[0][0].resize((300, 300))
    assert FaceDetector(max_side=640, coarse_side=320, threads=1).detect([image]) == FaceDetector(max_side=640, threads=1).detect([image])


def test_the_setting_lives_in_the_weights_metadata_and_older_metadata_still_loads():
    """Weights that say ``coarse_side`` get a coarse-to-fine detector; metadata written before the
    setting loads with it off, and off, the crop cache's folder names are the ones from before it
    (the keys below were computed at a41d296)."""
    older = PreprocessSettings.from_metadata({"preprocessing": {"input_size": 192, "crop": "native", "max_side": 640}})
    assert older.coarse_side == 0 and FacePreprocessor.from_settings(older, threads=1).detector.coarse_side == 0
    on = PreprocessSettings.from_metadata({"preprocessing": {**older.to_metadata(), "coarse_side": 320}})
    assert PreprocessSettings.from_metadata(on.to_metadata()) == on
    assert FacePreprocessor.from_settings(on, threads=1).detector.coarse_side == 320
    assert older.key() == "1ad11e9fd8d3f8c7" and on.key() != older.key()
    assert PreprocessSettings(192, crop="native", min_face=176).key() == "d84df919ea548cb2"
