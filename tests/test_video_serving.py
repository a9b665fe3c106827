"""Video requests through a real TorchServe (the session server: batching on, token auth on): one
verdict with a timeline per clip, a 4xx with a JSON reason for every broken clip, images batched with
a video answered exactly as on their own, Grad-CAM of the most suspicious frame, the CLI client."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import MODEL
from test_batch_isolation import essentials, good_images
from video_clips import audio_only_mp4, corrupt, encode_clip, face_clip, mixed_clip, truncated

pytestmark = pytest.mark.integration

ATTEMPTS = 3  # bursts tried until a video provably shares a batch with images
VIDEO_KEYS = {"media", "label", "band", "fake_probability", "threshold", "frames_sampled", "frames_with_face", "aggregation",
              "timeline", "video", "model", "batch_size", "provenance"}


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_a_clip_gets_one_verdict_with_a_timeline(torchserve, container):
    clip, has_face = mixed_clip(container)
    reply = torchserve.predict(MODEL, clip, headers={"Content-Type": "application/octet-stream"})  # by content
    assert reply.status_code == 200, reply.text[:300]
    answer = reply.json()
    assert set(answer) - {"kind"} == VIDEO_KEYS, set(answer) ^ VIDEO_KEYS
    assert ("kind" in answer) == (answer["label"] == "fake")  # the kind head's guess, for a fake verdict only
    assert answer["media"] == "video" and answer["video"]["container"] == container
    # the container's tags (FFmpeg's muxer names itself), no manifest, nothing declared
    assert answer["provenance"]["c2pa"] == {"present": False} and answer["provenance"]["declared"] == "none"
    assert answer["provenance"]["metadata"]["tags"]
    assert answer["frames_sampled"] == len(answer["timeline"]) == len(has_face)
    assert answer["frames_with_face"] == sum(has_face)
    assert [entry["time_s"] for entry in answer["timeline"]] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert [entry["face"] is not None for entry in answer["timeline"]] == has_face
    assert all(0.0 <= entry["fake_probability"] <= 1.0 for entry in answer["timeline"])
    assert answer["label"] == ("fake" if answer["fake_probability"] >= answer["threshold"] else "real")
    image = torchserve.predict(MODEL, good_images()["astronaut"]).json()
    assert answer["model"] == image["model"] and answer["threshold"] == image["threshold"]
    assert image["media"] == "image"


def test_a_clip_as_json_base64_and_as_a_multipart_field(torchserve):
    clip = face_clip("mp4", frames=4)
    raw = torchserve.predict(MODEL, clip, headers={"Content-Type": "video/mp4"}).json()
    as_json = torchserve.predict(MODEL, json={"video": base64.b64encode(clip).decode()}).json()
    as_form = torchserve.predict(MODEL, files={"data": ("clip.bin", clip, "application/octet-stream")}).json()
    for answer in (as_json, as_form):
        assert answer["frames_sampled"] == raw["frames_sampled"] == 4
        assert answer["fake_probability"] == pytest.approx(raw["fake_probability"], abs=1e-5)


BROKEN = {
    "corrupt_mp4": (lambda: corrupt(face_clip("mp4")), "corrupt_video"),
    "truncated_mp4": (lambda: truncated(face_clip("mp4")), "corrupt_video"),
    "corrupt_webm": (lambda: corrupt(face_clip("webm")), "corrupt_video"),
    "truncated_webm": (lambda: truncated(face_clip("webm")), "corrupt_video"),
    "audio_only_mp4": (audio_only_mp4, "no_video_stream"),
    # over the default limits: 61 s (limit 60 s); 40.06 MP frames (the image limit, 40 MP), refused
    # from the stream header before any frame is decoded
    "61_seconds": (lambda: encode_clip([Image.new("RGB", (32, 32), (k, k, k)) for k in range(61)], "webm", fps=1), "video_too_long"),
    "40_megapixel_frames": (lambda: encode_clip([Image.new("RGB", (8000, 5008), (90, 120, 150))], "mov", codec="png"), "frame_too_large"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_clip_gets_a_4xx_with_a_json_reason(torchserve, name):
    from handler.payload import HTTP_STATUS

    make, code = BROKEN[name]
    clip = make()
    for send in (torchserve.predict, torchserve.explain):
        reply = send(MODEL, clip, headers={"Content-Type": "video/mp4"})
        assert reply.status_code == HTTP_STATUS[code], (reply.status_code, reply.text[:300])
        assert 400 <= reply.status_code < 500
        body = reply.json()
        assert body["error"] == code and body["message"], body


def test_images_batched_with_a_video_get_their_own_answers(torchserve):
    """A video in the batch adds its frames to the forward pass; the images' verdicts do not move."""
    images = good_images()
    clip = face_clip("mp4", frames=8)
    single = {name: essentials(torchserve.predict(MODEL, body).json()) for name, body in images.items()}
    alone = torchserve.predict(MODEL, clip).json()

    burst = [("video", clip)] + list(images.items())
    shared = 0
    for _ in range(ATTEMPTS):
        with ThreadPoolExecutor(len(burst)) as pool:
            replies = list(pool.map(lambda item: torchserve.predict(MODEL, item[1]), burst))
        assert all(r.status_code == 200 for r in replies), [r.text[:200] for r in replies]
        video = replies[0].json()
        assert video["fake_probability"] == pytest.approx(alone["fake_probability"], abs=1e-4)
        assert [e["face"] is not None for e in video["timeline"]] == [e["face"] is not None for e in alone["timeline"]]
        for (name, _), reply in zip(burst[1:], replies[1:]):
            got, want = essentials(reply.json()), single[name]
            assert got["label"] == want["label"] and got["faces"] == want["faces"], (name, got, want)
            assert abs(got["p"] - want["p"]) < 1e-4, (name, got, want)
            assert (got["box"] is None) == (want["box"] is None)
            if want["box"] is not None:
                assert np.allclose(got["box"], want["box"], atol=1.0), (name, got, want)
        shared += video["batch_size"] > 1
        if shared:
            break
    assert shared, "the video never shared a batch with the images; batching is off?"


def test_the_explanation_of_a_video_is_its_most_suspicious_frame(torchserve):
    clip, _ = mixed_clip("mp4")
    reply = torchserve.explain(MODEL, clip)
    assert reply.status_code == 200, reply.text[:300]
    answer = reply.json()
    with_face = [e for e in answer["timeline"] if e["face"]]
    worst = max(with_face, key=lambda e: e["fake_probability"])
    assert answer["explanation"]["frame_time_s"] == worst["time_s"]
    heatmap = Image.open(io.BytesIO(base64.b64decode(answer["explanation"]["heatmap_png"])))
    assert heatmap.size == tuple(answer["explanation"]["size"])


def test_the_client_sends_videos_from_a_folder(torchserve, tmp_path):
    import csv
    from pathlib import Path

    from handler.client import main as client

    (tmp_path / "clip.mp4").write_bytes(face_clip("mp4", frames=4))
    (tmp_path / "clip.webm").write_bytes(face_clip("webm", frames=4))
    (tmp_path / "broken.mov").write_bytes(truncated(face_clip("mov", frames=4)))
    (tmp_path / "notes.txt").write_text("not media: skipped")
    out = tmp_path / "verdicts.csv"
    common = ["--url", torchserve.inference_url, "--model", MODEL, f"--token={torchserve.key('inference')}"]
    assert client([str(tmp_path), "--csv", str(out), "-c", "2", *common]) == 1  # the broken clip
    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"clip.mp4", "clip.webm", "broken.mov"}
    assert rows["broken.mov"]["status"] == "422" and rows["broken.mov"]["error"] == "corrupt_video"
    for name in ("clip.mp4", "clip.webm"):
        row = rows[name]
        assert row["status"] == "200" and row["media"] == "video" and row["frames_sampled"] == "4", row
        assert row["label"] in ("real", "fake")


def test_the_video_benchmark_measures_videos_and_images_side_by_side(torchserve):
    """benchmarks/video_bench.py against this server: a short closed-loop window with one video user
    beside one image user, and its report section."""
    from benchmarks import report, video_bench

    images = [path.read_bytes() for path in sorted((video_bench.ROOT / "examples" / "fake").glob("*.jpg"))]
    clip = video_bench.make_clip(images, seconds=2, fps=5)
    measured = video_bench.measure(torchserve.client, MODEL, {"video": ([clip], 1), "image": (images, 1)}, warmup_s=0.5, seconds=3)
    video, image = measured["video"], measured["image"]
    assert video["failures"] == image["failures"] == 0
    assert video["requests"] >= 1 and image["requests"] >= 1
    assert video["frames_per_s"] == pytest.approx(10 * video["per_s"], abs=0.1)  # all 10 frames of the clip sampled
    assert set(image["latency_ms"]) == {"p50", "p90", "p99"}

    summary = {"video": {"backend": "eager", "clip_bytes": len(clip), "results": [{"video_users": 1, "image_users": 1, **measured}],
                         "clip": {"video": {"size": [256, 256]}, "frames_sampled": 10},
                         "settings": {"clip_seconds": 2, "fps": 5, "batch_size": 8, "max_batch_delay": 100, "workers": 1,
                                      "threads": 1, "warmup_s": 0.5, "seconds": 3}}}
    section = "\n".join(report.video_section(summary))
    assert "## Video" in section and f"| 1 | 1 | {report.fmt(video['per_s'])} |" in section
