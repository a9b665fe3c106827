"""A video request inside the handler: its sampled frames through the face preprocessor, and one
verdict from the per-frame scores.

Each sampled frame is scored like an image: its largest face (or, with no face, its centre crop)
through the same preprocessing and model; ``runtime.verdict.aggregate`` (shared with the clip
evaluation, ``training/clips.py``) turns the frames' scores into the clip's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from runtime.decoding import ImageError
from runtime.detector import Face
from runtime.preprocessing import Prepared
from runtime.verdict import STRONG_FAKE, aggregate
from runtime.video import Clip

FRAME_CHUNK = 8  # frames per face-detector call: only this many full frames are held at a time
NO_FACE_WARNING = ("no face found in any sampled frame: no verdict on a face was made (label and band no_face); "
                   "fake_probability is the mean score of the frames' centre crops")


@dataclass
class PreparedVideo:
    """A video's model input: one crop per sampled frame, with the frame's time and largest face."""

    clip: Clip
    times: list[float] = field(default_factory=list)
    crops: list[Image.Image] = field(default_factory=list)
    faces: list[Face | None] = field(default_factory=list)

    @property
    def frames_with_face(self) -> int:
        return sum(face is not None for face in self.faces)


def prepare_video(clip: Clip, prepare_many: Callable[[list[Image.Image]], list[Prepared | ImageError]]) -> PreparedVideo:
    """Decode the sampled frames and find their faces, FRAME_CHUNK frames per detector call."""
    video = PreparedVideo(clip)
    chunk: list[tuple[float, Image.Image]] = []

    def flush():
        for (time_s, _), prepared in zip(chunk, prepare_many([image for _, image in chunk])):
            if isinstance(prepared, ImageError):
                raise prepared
            video.times.append(time_s)
            video.crops.append(prepared.crops[0])  # largest face first, or the centre crop
            video.faces.append(prepared.faces[0] if prepared.faces else None)
        chunk.clear()

    for frame in clip.frames():
        chunk.append(frame)
        if len(chunk) == FRAME_CHUNK:
            flush()
    flush()
    if not video.crops:
        raise ImageError("corrupt_video", "none of the sampled frames could be decoded")
    return video


def most_suspicious(video: PreparedVideo, probabilities: list[float]) -> int:
    """The frame with the highest P(fake) among those with a face (any frame when none has one)."""
    candidates = [i for i, face in enumerate(video.faces) if face is not None] or range(len(probabilities))
    return max(candidates, key=lambda i: probabilities[i])


def video_verdict(video: PreparedVideo, probabilities: list[float], threshold: float, label: Callable[[float], str]) -> dict:
    """The answer's video-specific part (the handler adds ``model`` and ``batch_size``)."""
    probability, rule, strong = aggregate(probabilities, [face is not None for face in video.faces])
    answer = {
        "media": "video",
        "label": label(probability),
        "fake_probability": round(probability, 6),
        "threshold": threshold,
        "frames_sampled": len(video.crops),
        "frames_with_face": video.frames_with_face,
        "aggregation": {"rule": rule, "strong_fake_frames": strong, "strong_fake_above": STRONG_FAKE},
        "timeline": [
            {"time_s": time_s, "fake_probability": round(p, 6), "face": face.to_dict() if face else None}
            for time_s, p, face in zip(video.times, probabilities, video.faces)
        ],
        "video": {"container": video.clip.container, "size": list(video.clip.size),
                  "duration_s": video.clip.duration_s, "frames": video.clip.frame_count},
    }
    if not video.frames_with_face:
        answer["warning"] = NO_FACE_WARNING
    return answer
