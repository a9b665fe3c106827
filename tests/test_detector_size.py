"""The detector-size benchmark's small-face mode: a face pasted into a 480p frame is where it says."""

from pathlib import Path

from benchmarks.detector_size import FRAME, embed, largest, recall
from runtime.decoding import decode_image
from runtime.detector import FaceDetector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_a_pasted_100px_face_is_found_at_its_pasted_box_by_the_full_size_detector():
    image = decode_image(sorted((EXAMPLES / "real").glob("*.jpg"))[0].read_bytes())
    box = largest(FaceDetector(max_side=640, threads=1).detect([image])[0])
    frames, pasted = embed([image], [box], 100)
    assert frames[0].size == FRAME
    assert abs((pasted[0][2] - pasted[0][0]) - 100) < 1e-6
    rows = recall(frames, pasted, [640], 100)
    assert rows == [{"face_px": 100, "frame": list(FRAME), "max_side": 640, "coarse_side": 0, "faces": 1, "found": 1,
                     "max_box_shift_px": 0.0}]
    coarse = recall(frames, pasted, [640], 100, coarse=[320])
    assert [row["found"] for row in coarse] == [1, 1] and coarse[1]["coarse_side"] == 320
