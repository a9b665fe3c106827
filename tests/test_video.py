"""Video input without a server: container detection, uniform sampling and the limits on clips made
here with PyAV, the aggregation rule, and the real handler (model and face detector) on video
requests through a recording context. tests/test_video_serving.py covers a real TorchServe."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runtime.decoding import ImageError
from runtime.verdict import aggregate
from runtime.video import MAX_FRAMES, VideoLimits, container_of, open_video
from test_handler import FakeContext, handler, model_dir  # noqa: F401  (fixtures)
from video_clips import (
    CODECS,
    audio_only_mp4,
    corrupt,
    encode_clip,
    example_faces,
    face_clip,
    mixed_clip,
    truncated,
)


def grey_frames(count: int, step: int = 6, size: int = 32) -> list[Image.Image]:
    """Frame k is a flat grey of level step * k, so a decoded frame says which one it is."""
    return [Image.new("RGB", (size, size), (step * k,) * 3) for k in range(count)]


def refusal(data: bytes, **limits) -> ImageError:
    with pytest.raises(ImageError) as caught:
        open_video(data, VideoLimits(**limits))
    return caught.value


# ---------------------------------------------------------------- containers and sampling

@pytest.mark.parametrize("container", sorted(CODECS))
def test_each_container_is_recognised_by_its_bytes_and_decoded(container):
    clip = open_video(face_clip(container, frames=4))
    assert container_of(clip.data) == clip.container == container
    assert clip.size == (256, 256) and clip.frame_count == 4 and clip.duration_s == pytest.approx(1.0)
    frames = list(clip.frames())
    assert [time_s for time_s, _ in frames] == [0.0, 0.25, 0.5, 0.75]
    assert all(image.mode == "RGB" and image.size == (256, 256) for _, image in frames)


def test_images_and_other_bytes_are_not_taken_for_videos():
    jpeg = io.BytesIO()
    example_faces()[0].save(jpeg, "JPEG")
    avif_header = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"  # a still image in ISO boxes
    for data in (jpeg.getvalue(), avif_header, b"", b"RIFF\x00\x00\x00\x00AVI LIST", b"hello, plain text"):
        assert container_of(data) is None, data[:16]


def test_sampling_spreads_frames_evenly_and_decodes_exactly_those():
    """40 frames, 6 wanted: the middle frame of each sixth of the clip, 3, 10, 16, 23, 30 and 36."""
    clip = open_video(encode_clip(grey_frames(40), "mov", fps=10, codec="png"), VideoLimits(frames=6))
    assert clip.frame_count == 40 and clip.sample == [3, 10, 16, 23, 30, 36]
    decoded = list(clip.frames())
    assert [time_s for time_s, _ in decoded] == [0.3, 1.0, 1.6, 2.3, 3.0, 3.6]
    assert [int(np.asarray(image)[0, 0, 0]) for _, image in decoded] == [18, 60, 96, 138, 180, 216]


def test_a_rotated_clip_is_decoded_upright_as_players_show_it():
    """A phone's portrait video: frames stored on their side, with a display matrix that turns them a
    quarter clockwise (FFmpeg's rotation -90). Like EXIF orientation for images."""
    upright = example_faces()[0].crop((0, 0, 256, 192))  # not square: a missed rotation shows in the size
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    clip = open_video(encode_clip([stored], "mp4", rotation=-90))
    ((_, frame),) = list(clip.frames())
    assert frame.size == upright.size
    difference = np.abs(np.asarray(frame, dtype=np.int16) - np.asarray(upright, dtype=np.int16))
    assert difference.mean() < 4  # coding noise only; a wrong turn differs by ~50 grey levels


def test_short_clips_give_every_frame_and_the_frame_count_is_capped():
    assert open_video(encode_clip(grey_frames(5), "mkv", codec="ffv1")).sample == [0, 1, 2, 3, 4]
    long = open_video(encode_clip(grey_frames(200, step=1, size=16), "mkv", fps=50, codec="ffv1"), VideoLimits(frames=10_000))
    assert len(long.sample) == MAX_FRAMES == 128 and long.sample[0] == 0 and long.sample[-1] == 199


# ---------------------------------------------------------------- limits

def test_limits_each_refuse_with_their_own_code():
    clip = face_clip("mp4", frames=8, fps=2)  # 4 s of 256 x 256
    assert refusal(clip, max_bytes=len(clip) - 1).code == "video_too_large"
    assert refusal(clip, max_seconds=3.5).code == "video_too_long"
    assert refusal(clip, max_pixels=256 * 255).code == "frame_too_large"
    assert refusal(clip, min_side=257).code == "frame_too_small"
    open_video(clip, VideoLimits(max_bytes=len(clip), max_seconds=4, max_pixels=256 * 256, min_side=256))  # at the limits


def test_broken_clips_are_refused():
    assert refusal(audio_only_mp4()).code == "no_video_stream"
    for container in ("mp4", "webm", "mkv", "mov"):
        clip = face_clip(container, frames=8)
        for broken in (corrupt(clip), truncated(clip)):
            error = refusal(broken)
            assert error.code == "corrupt_video", (container, error.message)
    # a Matroska cut off after its first frames still parses: the declared duration gives it away
    assert "truncated" in refusal(truncated(face_clip("webm", frames=8))).message


# ---------------------------------------------------------------- aggregation

def test_the_clip_is_the_mean_over_frames_with_a_face():
    p, rule, strong = aggregate([0.9, 0.1, 0.2, 0.3, 0.99], [True, True, True, True, False])
    assert (round(p, 6), rule, strong) == (0.375, "mean", 1)  # the faceless 0.99 does not count


def test_a_large_enough_share_of_strongly_fake_frames_decides():
    # 3 of 7 frames above 0.8 (at least 40 % and at least 3): their mean, 0.9
    p, rule, strong = aggregate([0.95, 0.85, 0.9, 0.1, 0.2, 0.1, 0.15], [True] * 7)
    assert (round(p, 6), rule, strong) == (0.9, "confident_fake", 3)
    # 3 of 8 is under 40 %: the plain mean
    p, rule, _ = aggregate([0.95, 0.85, 0.9, 0.1, 0.2, 0.1, 0.15, 0.15], [True] * 8)
    assert (round(p, 6), rule) == (0.425, "mean")
    # 2 of 2 is a share of 100 % but fewer than 3 frames: the plain mean
    assert aggregate([0.9, 0.82], [True, True])[1] == "mean"


def test_without_any_face_every_frame_counts():
    p, rule, _ = aggregate([0.2, 0.4], [False, False])
    assert (round(p, 6), rule) == (0.3, "mean")


# ---------------------------------------------------------------- the real handler

def image_answers(handler, model_dir, images: list[Image.Image]) -> list[dict]:
    bodies = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        bodies.append({"body": buffer.getvalue()})
    return handler.handle(bodies, FakeContext(model_dir, {}))


def test_each_frame_is_scored_exactly_as_the_same_image(handler, model_dir):
    """Lossless frames (PNG in MOV): every timeline entry equals the answer for that frame sent as an
    image, face box and P(fake): same detector, crop and model."""
    faces = example_faces("fake") + example_faces("real")
    (video,) = handler.handle([{"body": encode_clip(faces, "mov", codec="png")}], FakeContext(model_dir, {}))
    images = image_answers(handler, model_dir, faces)
    assert video["media"] == "video" and video["frames_sampled"] == len(video["timeline"]) == 8
    for entry, image in zip(video["timeline"], images):
        assert entry["fake_probability"] == pytest.approx(image["fake_probability"], abs=1e-5)
        assert entry["face"] == image["face"]
    assert video["model"] == images[0]["model"] and video["threshold"] == images[0]["threshold"]


def test_frames_without_a_face_are_in_the_timeline_but_not_in_the_verdict(handler, model_dir):
    clip, has_face = mixed_clip("mp4")
    (answer,) = handler.handle([{"body": clip}], FakeContext(model_dir, {}))
    assert [entry["face"] is not None for entry in answer["timeline"]] == has_face
    assert answer["frames_with_face"] == sum(has_face) and "warning" not in answer
    with_face = [e["fake_probability"] for e in answer["timeline"] if e["face"]]
    assert min(with_face) <= answer["fake_probability"] <= max(with_face)
    assert answer["label"] == ("fake" if answer["fake_probability"] >= answer["threshold"] else "real")


def test_a_clip_without_faces_gets_no_verdict_on_a_face(handler, model_dir):
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((128, 128)) for _ in range(3)]
    (answer,) = handler.handle([{"body": encode_clip(frames, "webm")}], FakeContext(model_dir, {}))
    assert answer["frames_with_face"] == 0 and answer["frames_sampled"] == 3
    assert "no face" in answer["warning"] and answer["label"] == answer["band"] == "no_face"
    assert "kind" not in answer  # nothing to guess the kind of


def test_configured_limits_answer_4xx_and_leave_batch_mates_alone(model_dir):
    from handler.deepfake_handler import DeepfakeHandler

    strict = DeepfakeHandler()
    config = {"handler": {"max_video_seconds": 1.5, "max_image_bytes": 50_000, "video_frames": 3, "max_crops_per_pass": 2}}
    strict.initialize(FakeContext(model_dir, config))
    passes, outputs = [], strict.backend.outputs  # the real backend, its batch sizes recorded
    strict.backend.outputs = lambda batch: passes.append(len(batch)) or outputs(batch)
    small_png = io.BytesIO()
    example_faces()[0].resize((96, 96)).save(small_png, "PNG")
    big_png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(big_png, "PNG")
    context = FakeContext(model_dir, {})
    answers = strict.handle([{"body": face_clip("mp4", frames=8, fps=4)}, {"body": face_clip("mp4", frames=4, fps=4)},
                             {"body": big_png.getvalue()}, {"body": small_png.getvalue()}], context)
    assert [a.get("error") for a in answers] == ["video_too_long", None, "image_too_large", None]
    assert {i: code for i, (code, _) in context.statuses.items()} == {0: 413, 2: 413}
    assert answers[1]["frames_sampled"] == 3 and answers[3]["media"] == "image"
    assert context.metric("DeepfakeBatchCrops") == [1 + 3] and passes == [2, 2]  # the image's crop first


def test_mutated_clips_decode_or_are_refused_never_crash():
    """Random byte flips, cuts and insertions in real clips of each container: every one decodes or
    is refused with an ImageError; nothing else escapes (the handler would answer 500)."""
    rng = np.random.default_rng(0)
    seeds = [face_clip(container, frames=6) for container in sorted(CODECS)]
    outcomes = {}
    for i in range(160):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 12))):
            at, kind = int(rng.integers(0, len(data))), int(rng.integers(0, 3))
            if kind == 0:
                data[at] = int(rng.integers(0, 256))
            elif kind == 1:
                del data[at : at + int(rng.integers(1, 64))]
            else:
                data[at:at] = rng.bytes(int(rng.integers(1, 32)))
        try:
            frames = list(open_video(bytes(data)).frames())
            assert frames and all(image.mode == "RGB" for _, image in frames)
            outcome = "decoded"
        except ImageError as error:
            outcome = error.code
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"\nmutated clips: {outcomes}")
    assert set(outcomes) <= {"decoded", "corrupt_video", "not_a_video", "no_video_stream", "frame_too_large", "frame_too_small", "video_too_long"}


def test_clip_evaluation_scores_each_test_image_as_a_small_face_in_a_compressed_clip(tmp_path):
    """training/clips.py on a root made of the shipped examples: every clip has its face found in
    its frames, its verdict is the serving rule over those frames, and the still score is the image's."""
    import json
    import shutil

    from training.clips import evaluate_clips
    from video_clips import ROOT

    root = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", root, ignore=shutil.ignore_patterns("*.md"))
    weights = ROOT / "weights" / "default.safetensors"
    report = evaluate_clips(weights, root, tmp_path / "out", clips=2, face_px=100, frame=(320, 240), seconds=0.4,
                            crf=23, frames=4, threads=1)
    rows = json.loads((tmp_path / "out" / "clips.json").read_text())["rows"]
    assert sorted(r["label"] for r in rows) == [0, 1] and report["clips"] == 2
    for row in rows:
        assert len(row["frames"]) == 4 and row["frames_with_face"] == 4
        assert row["clip"] == pytest.approx(aggregate(row["frames"], [True] * 4)[0])
    assert {"still", "frame", "clip"} <= set(report) and "| the clip's verdict |" in (tmp_path / "out" / "report.md").read_text()


def test_decoding_seeks_past_keyframe_intervals_and_gives_the_same_frames(monkeypatch):
    """H.264 with a keyframe every 5 frames and B-frames, 6 of 60 frames sampled: the decoder jumps
    to the keyframe before each sampled frame (a whole interval lies between them), and the frames
    and times are exactly those of decoding every frame in order."""
    import dataclasses
    from fractions import Fraction

    import av

    import runtime.video as video

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"crf": "10", "g": "5", "bf": "2"}
        for frame in grey_frames(60, step=4, size=64):
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    clip = open_video(buffer.getvalue(), VideoLimits(frames=6))
    assert len(clip.timestamps) == 60 and len(clip.keyframes) == 12

    seeks = []
    opened = video._open

    class Counting:  # the real container, with its seeks counted
        def __init__(self, container):
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.container.__exit__(*exc)

        def seek(self, offset, **kwargs):
            seeks.append(offset)
            return self.container.seek(offset, **kwargs)

    def counting(data, name):
        return Counting(opened(data, name))

    monkeypatch.setattr(video, "_open", counting)
    jumped = [(t, np.asarray(image)) for t, image in clip.frames()]
    monkeypatch.setattr(video, "_open", opened)
    in_order = [(t, np.asarray(image)) for t, image in dataclasses.replace(clip, timestamps=[], keyframes=[]).frames()]
    assert len(seeks) == 6  # one jump per sampled frame: each lies in its own keyframe interval
    assert [t for t, _ in jumped] == [t for t, _ in in_order] == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(jumped, in_order))
    assert [int(a[0, 0, 0]) for _, a in jumped] == pytest.approx([4 * i for i in clip.sample], abs=3)
