"""Recognise a video by its bytes, check it against the limits, and decode uniformly sampled frames.

MP4 and MOV (ISO base media: an ``ftyp``/``moov``/``mdat`` box first) and MKV and WebM (an EBML
header) are told apart from images by their first bytes, never by a file name or Content-Type, and
opened with that one demuxer of PyAV (FFmpeg inside the wheel, nothing downloaded at run time).

Two passes over the bytes: demuxing alone (no decoding, cheap) counts the frames, notes their
timestamps and keyframes, and catches a truncated or over-long stream; decoding then seeks to the
keyframe before each sampled frame where that skips a keyframe interval, and keeps only the sampled
frames as RGB images. Like
``runtime/decoding.py`` this module travels inside the model archive and must not import
TorchServe. Bad input raises ``ImageError`` with a machine-readable code, as images do.
"""

from __future__ import annotations

import bisect
import io
import math
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image

from runtime.decoding import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ISO_IMAGE_BRANDS, ImageError

DEFAULT_FRAMES = 32  # sampled per video (the DFDC winners scored 32 frames per clip)
MAX_FRAMES = 128  # hard cap on frames sampled, whatever the configuration says
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_MAX_BYTES = 64 * 2**20  # as TorchServe's max_request_size in config.properties
MAX_FRAME_RATE = 240  # frames per second of duration before a stream counts as over-long
# A stream whose frames stop this far short of the duration its container declares was cut off.
TRUNCATION_SHARE = 0.9

# ISO base media boxes a file may start with (QuickTime files from old tools may lack ftyp).
ISO_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"}
EBML_MAGIC = b"\x1a\x45\xdf\xa3"


def container_of(data: bytes) -> str | None:
    """"mp4", "mov", "webm" or "mkv" from the first bytes, or None when they are not one of those."""
    if data[:4] == EBML_MAGIC:
        return "webm" if b"webm" in data[:64] else "mkv"
    if len(data) >= 12 and data[4:8] in ISO_FIRST_BOXES:
        brand = data[8:12] if data[4:8] == b"ftyp" else b""
        if brand in ISO_IMAGE_BRANDS:  # a still image in the same box format (AVIF, HEIF)
            return None
        return "mov" if brand == b"qt  " or data[4:8] != b"ftyp" else "mp4"
    return None


def is_video(data: bytes) -> bool:
    return container_of(data) is not None


@dataclass(frozen=True)
class VideoLimits:
    frames: int = DEFAULT_FRAMES  # frames to sample (capped at MAX_FRAMES)
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS  # per frame, the image limit
    min_side: int = DEFAULT_MIN_SIDE

    @property
    def sampled(self) -> int:
        return max(1, min(int(self.frames), MAX_FRAMES))


@dataclass
class Clip:
    """A checked video: what the container says, and which decoded frames are sampled."""

    data: bytes = field(repr=False)
    container: str
    size: tuple[int, int]  # width, height of the stored frames (before any display rotation)
    frame_count: int  # frames in the stream (counted by demuxing)
    duration_s: float
    sample: list[int]  # indices (presentation order) of the frames to decode
    rate: float  # frames per second, for frames without a timestamp
    limits: VideoLimits
    threads: int = 1
    timestamps: list[int] = field(default_factory=list, repr=False)  # every frame's pts in presentation order; [] when some lack one
    keyframes: list[int] = field(default_factory=list, repr=False)  # pts of the keyframes

    def frames(self) -> Iterator[tuple[float, Image.Image]]:
        """(time in seconds from the first frame, RGB image) of each sampled frame, in order.
        Frames are decoded one by one, so a caller that consumes them in chunks holds only a chunk.
        Where the container gave every frame a timestamp, the decoder jumps to the keyframe before a
        sampled frame whenever a whole keyframe interval or more lies between (``_decoded``):
        frames between keyframes still have to be decoded, the ones in skipped intervals do not."""
        try:
            with _open(self.data, self.container) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = self.threads
                for index, frame in self._decoded(container, stream):
                    if self.timestamps and frame.pts is not None:
                        seconds = float((frame.pts - self.timestamps[0]) * stream.time_base)
                    else:
                        seconds = index / self.rate
                    yield round(max(0.0, seconds), 3), upright(frame.to_image().convert("RGB"), frame.rotation)
        except ImageError:
            raise
        except Exception as exc:  # FFmpegError mostly; anything a hostile stream provokes in PyAV or PIL
            raise ImageError("corrupt_video", f"the video could not be decoded: {_reason(exc)}") from None

    def _decoded(self, container, stream) -> Iterator[tuple[int, object]]:
        """(index, decoded frame) of each sampled frame; every decoded frame's size is checked (a
        stream may change its frame size after the header was checked)."""
        if not self.timestamps:  # no timestamps to seek by: decode up to the last sampled frame
            wanted, last = set(self.sample), max(self.sample)
            for index, frame in enumerate(container.decode(stream)):
                _check_pixels(frame.width, frame.height, self.limits.max_pixels, self.limits.min_side)
                if index in wanted:
                    yield index, frame
                if index >= last:
                    return
            return
        frames, position = None, None
        for index in self.sample:
            target = self.timestamps[index]
            before = bisect.bisect_right(self.keyframes, target)
            keyframe = self.keyframes[before - 1] if before else self.timestamps[0]
            if frames is None or position is None or keyframe > position:
                container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                _check_pixels(frame.width, frame.height, self.limits.max_pixels, self.limits.min_side)
                position = frame.pts if frame.pts is not None else position
                if frame.pts is None or frame.pts >= target:
                    yield index, frame
                    break
            else:
                return  # the stream ended early


# The display matrix's rotation (FFmpeg's av_display_rotation_get: degrees counter-clockwise, as
# phones record a portrait video) -> the PIL transpose that shows the frame upright, as players do.
ROTATIONS = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270, 270: Image.Transpose.ROTATE_270,
             180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180}


def upright(image: Image.Image, rotation: float | int | None) -> Image.Image:
    """The frame as a player shows it (the video counterpart of EXIF orientation for images)."""
    turn = ROTATIONS.get(round(rotation or 0))
    return image.transpose(turn) if turn is not None else image


def sample_indices(frame_count: int, wanted: int) -> list[int]:
    """``wanted`` frame indices spread evenly over ``frame_count`` frames (each the middle of its
    share of the clip), or every frame when there are no more than that."""
    if frame_count <= wanted:
        return list(range(frame_count))
    return [int((i + 0.5) * frame_count / wanted) for i in range(wanted)]


def open_video(data: bytes, limits: VideoLimits = VideoLimits(), threads: int = 1) -> Clip:
    """Check a video against ``limits`` and choose the frames to sample, without decoding any.

    Refusals (``ImageError.code``): ``video_too_large`` (bytes), ``video_too_long`` (duration, or
    more frames than MAX_FRAME_RATE per second allowed), ``frame_too_large`` / ``frame_too_small``
    (pixels per frame), ``no_video_stream`` (none, or none that FFmpeg can decode), ``corrupt_video``
    (the container does not parse, or its frames stop short of what it declares: truncated).
    """
    container_name = container_of(data)
    if container_name is None:
        raise ImageError("not_a_video", "the bytes are not an MP4, MOV, MKV or WebM video")
    if len(data) > limits.max_bytes:
        raise ImageError("video_too_large", f"{len(data)} bytes exceeds the video limit of {limits.max_bytes} bytes")
    try:
        with _open(data, container_name) as container:
            if not container.streams.video:
                raise ImageError("no_video_stream", "the container holds no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None or stream.codec_context.codec is None:
                raise ImageError("no_video_stream", "the video stream's codec cannot be decoded here")
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:
                raise ImageError("no_video_stream", "the video stream has no frame size")
            _check_pixels(width, height, limits.max_pixels, limits.min_side)
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > limits.max_seconds:
                raise ImageError("video_too_long", f"{declared:.1f} s exceeds the limit of {limits.max_seconds:g} s")
            frame_count, covered, timestamps, keyframes = _demux(container, stream, limits.max_seconds)
    except ImageError:
        raise
    except Exception as exc:  # FFmpegError mostly; anything a hostile container provokes in PyAV
        raise ImageError("corrupt_video", f"the video container is corrupt or truncated: {_reason(exc)}") from None
    if frame_count == 0:
        raise ImageError("corrupt_video", "the video stream holds no frames")
    declared_frames = stream.frames or 0
    if declared_frames and frame_count < declared_frames:
        raise ImageError("corrupt_video", f"truncated: the container declares {declared_frames} frames, {frame_count} are present")
    if declared is not None and covered < TRUNCATION_SHARE * declared:
        raise ImageError("corrupt_video", f"truncated: the container declares {declared:.2f} s, its frames stop at {covered:.2f} s")

    rate = float(stream.average_rate) if stream.average_rate else frame_count / max(covered, 1e-3)
    duration = declared if declared is not None else covered
    return Clip(data, container_name, (width, height), frame_count, round(duration, 3),
                sample_indices(frame_count, limits.sampled), rate, limits, threads, timestamps, keyframes)


def _open(data: bytes, container_name: str):
    """The container opened with the demuxer its magic bytes name (no probing of other formats)."""
    import av  # here, not at the top: a host serving only images needs no FFmpeg (the GPU bundle has none)

    demuxer = "matroska" if container_name in ("webm", "mkv") else "mov"
    return av.open(io.BytesIO(data), mode="r", format=demuxer)


def _reason(error: Exception) -> str:
    """FFmpeg's own words, without the errno and the stream name PyAV adds."""
    return getattr(error, "strerror", None) or str(error)


def _check_pixels(width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageError("frame_too_large", f"{width}x{height} frames exceed the limit of {max_pixels} pixels per frame")
    if min(width, height) < min_side:
        raise ImageError("frame_too_small", f"{width}x{height} frames are smaller than {min_side} pixels on a side")


def _declared_seconds(container, stream) -> float | None:
    """The video stream's duration as its container states it. The container-wide duration counts
    only when the video is the container's one stream (an audio track may run longer)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
    return None


def _demux(container, stream, max_seconds: float) -> tuple[int, float, list[int], list[int]]:
    """(frames, seconds from the first frame to the end of the last, every frame's pts in
    presentation order ([] when a packet has none), the keyframes' pts) by reading packets only;
    stops with video_too_long as soon as the stream runs past the limit, whatever its header said."""
    count, first, end = 0, None, 0.0
    timestamps, keyframes, complete = [], [], True
    max_count = math.ceil(max_seconds * MAX_FRAME_RATE)
    time_base = float(stream.time_base) if stream.time_base else None
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        count += 1
        if packet.pts is None:
            complete = False
        else:
            timestamps.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
        if packet.pts is not None and time_base:
            start = packet.pts * time_base
            first = start if first is None else min(first, start)
            end = max(end, start + (packet.duration or 0) * time_base)
        if count > max_count or (first is not None and end - first > max_seconds):
            raise ImageError("video_too_long", f"the video runs past the limit of {max_seconds:g} s")
    seekable = complete and bool(keyframes) and len(set(timestamps)) == len(timestamps)
    return count, (end - first) if first is not None else 0.0, sorted(timestamps) if seekable else [], sorted(keyframes) if seekable else []
