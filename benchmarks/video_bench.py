"""Video profile: videos/s and sampled frames/s end to end through a TorchServe of its own, and how
image requests fare while videos are being served.

    python -m benchmarks.run --only video                      # inside a benchmark run (report section)
    python -m benchmarks.video_bench --profile quick --out v.json   # alone

A clip is made from the shipped example faces with PyAV (H.264 in MP4, ``clip_seconds`` at ``fps``,
each face held for a stretch); the served archive of the profile's model store is repacked with the
profile's batch and worker settings (an eager archive is built from the weights when the store has
none). Closed-loop client threads post back to back; after a warm-up, every request that starts and
ends inside the window counts. Levels: videos alone at each ``video_users``; images alone at
``image_users``; the same image users with ``mixed_video_users`` video users beside them. With
``separate_video_model`` the same archive is registered a second time for the videos, unbatched
(batch size 1) with ``video_workers`` workers: images and videos then queue apart.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

from PIL import Image

from benchmarks.photos import phone_photo
from benchmarks.profile import Profile, load_profile
from benchmarks.stats import latency_percentiles
from runtime.artifacts import MODEL_NAME
from runtime.photo import IMAGE_SUFFIXES
from export.archive import ServingConfig, archive_backend, build_archive, repack

# benchmarks.load is not imported: it patches the standard library for Locust (gevent), and this
# module measures with plain threads.
ROOT = Path(__file__).resolve().parents[1]
MODEL = f"{MODEL_NAME}-video-bench"
VIDEO_MODEL = f"{MODEL_NAME}-video-bench-videos"  # with separate_video_model


def served_archive(store: Path, backend: str) -> Path | None:
    """model_store/deepfake-detector-<backend>.mar, else the served archive when it holds that backend."""
    named, served = store / f"{MODEL_NAME}-{backend}.mar", store / f"{MODEL_NAME}.mar"
    if named.exists():
        return named
    return served if served.exists() and archive_backend(served) == backend else None


def make_clip(images: list[bytes], seconds: float, fps: int, size: tuple[int, int] | None = None, gop: int = 0) -> bytes:
    """An H.264 MP4 of the example faces in turn, each held for an equal stretch of the clip; with
    ``size``, each face upscaled into a frame of that size (``benchmarks/photos.py``, the face a
    third of the frame's height); ``gop``: a keyframe every that many frames (0: x264's default)."""
    import av  # only this phase needs FFmpeg

    faces = [Image.open(io.BytesIO(body)).convert("RGB") for body in images]
    if size:
        faces = [phone_photo(face, size, face_px=size[1] // 3, seed=k) for k, face in enumerate(faces)]
    size = faces[0].size
    faces = [face.resize(size) for face in faces]
    count = max(1, round(seconds * fps))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.options = {"g": str(gop)}
        for k in range(count):
            frame = av.VideoFrame.from_image(faces[k * len(faces) // count])
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def measure(client, model: str, kinds: dict[str, tuple[list[bytes], int]], warmup_s: float, seconds: float,
            models: dict[str, str] | None = None) -> dict:
    """Closed-loop threads per kind ({kind: (bodies, users)}) for warm-up + window, posting to
    ``model`` (or ``models[kind]``); per kind: rate, latency percentiles, failures, and for videos
    the frames sampled per second, over the answers that arrived inside the window."""
    start = time.monotonic()
    window = (start + warmup_s, start + warmup_s + seconds)
    records: dict[str, list] = {kind: [] for kind in kinds}
    lock = threading.Lock()

    def user(kind: str, bodies: list[bytes], offset: int):
        target = (models or {}).get(kind, model)
        i = offset
        while time.monotonic() < window[1]:
            body = bodies[i % len(bodies)]
            i += 1
            began = time.monotonic()
            try:
                reply = client.predict(target, body, headers={"Content-Type": "application/octet-stream"})
                ok, frames = reply.status_code == 200, (reply.json().get("frames_sampled", 0) if reply.status_code == 200 else 0)
            except Exception:  # a transport failure counts as a failed request
                ok, frames = False, 0
            ended = time.monotonic()
            # answers that arrive inside the window count, whenever they were sent: counting only
            # requests sent and answered inside it undercounts requests as long as a window
            if window[0] <= ended <= window[1]:
                with lock:
                    records[kind].append(((ended - began) * 1000, ok, frames))

    threads = [threading.Thread(target=user, args=(kind, bodies, n), daemon=True)
               for kind, (bodies, users) in kinds.items() for n in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = {}
    for kind, rows in records.items():
        done = [r for r in rows if r[1]]
        result[kind] = {
            "users": kinds[kind][1],
            "per_s": round(len(done) / seconds, 2),
            "frames_per_s": round(sum(r[2] for r in done) / seconds, 1) if kind == "video" else None,
            "latency_ms": latency_percentiles([r[0] for r in done], digits=1),
            "requests": len(rows),
            "failures": len(rows) - len(done),
        }
    return result


def archive(profile: Profile, store: Path, name: str, batch_size: int, max_batch_delay: int, workers: int) -> tuple[Path, str]:
    """(an archive named ``name`` in ``store`` with these settings, its backend): the profile's
    served archive repacked, else an eager one built from the weights."""
    s = profile.video
    serving = {"batchSize": batch_size, "maxBatchDelay": max_batch_delay, "minWorkers": workers, "maxWorkers": workers,
               "handler": {"threads": s.threads, "video_frames": s.frames}}
    source = served_archive(ROOT / profile.model_store, s.backend)
    if source is not None:
        return repack(source, store / f"{name}.mar", **serving), s.backend
    config = ServingConfig(batch_size=batch_size, max_batch_delay=max_batch_delay, min_workers=workers,
                           max_workers=workers, handler={"threads": s.threads, "video_frames": s.frames})
    return build_archive(ROOT / profile.weights, export_path=store, model_name=name, serving=config), "eager"


def run(profile: Profile, server_dir: Path, log=print) -> dict:
    """The ``video`` section of summary.json."""
    from handler.server import TorchServe

    s = profile.video
    images = [p.read_bytes() for p in sorted((ROOT / profile.images).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    clip = make_clip(images, s.clip_seconds, s.fps, tuple(s.clip_size) or None, s.gop)
    store = server_dir / "store"
    store.mkdir(parents=True, exist_ok=True)
    mar, backend = archive(profile, store, MODEL, s.batch_size, s.max_batch_delay, s.workers)
    served = {MODEL: mar.name}
    routes = {}
    if s.separate_video_model:  # the same archive again, unbatched, for the videos
        served[VIDEO_MODEL] = archive(profile, store, VIDEO_MODEL, 1, 0, s.video_workers)[0].name
        routes = {"video": VIDEO_MODEL}
    log(f"[video] {len(clip) / 1e6:.2f} MB clip, {s.clip_seconds:g} s at {s.fps} fps; serving a {backend} archive as {', '.join(served)}")
    server = TorchServe(store, served, run_dir=server_dir, properties={"disable_system_metrics": "true"})
    server.start()
    levels = []
    try:
        first = server.client.predict(routes.get("video", MODEL), clip).json()
        plan = [{"video": u, "image": 0} for u in s.video_users] + [{"video": 0, "image": s.image_users},
                                                                   {"video": s.mixed_video_users, "image": s.image_users}]
        for level in plan:
            kinds = {kind: (([clip] if kind == "video" else images), users) for kind, users in level.items() if users}
            if not kinds:  # e.g. image_users 0: a videos-only profile
                continue
            measured = measure(server.client, MODEL, kinds, s.warmup_s, s.seconds, routes)
            levels.append({"video_users": level["video"], "image_users": level["image"], **measured})
            log(f"[video] {level}: " + "; ".join(f"{k} {v['per_s']}/s p50 {v['latency_ms'].get('p50')} ms" for k, v in measured.items()))
    finally:
        server.stop()
    return {
        "backend": backend, "settings": profile.to_dict()["video"], "clip_bytes": len(clip),
        "clip": {k: first.get(k) for k in ("video", "frames_sampled", "frames_with_face")}, "results": levels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--server-dir", type=Path, default=ROOT / "build" / "bench-video-server")
    args = parser.parse_args(argv)
    result = run(load_profile(args.profile, args.set), args.server_dir)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
