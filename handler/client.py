"""Command-line client for the served detector.

    python -m handler.client face.jpg                       # the JSON verdict
    python -m handler.client clip.mp4                       # a video: one verdict with a timeline
    python -m handler.client photos/ --csv verdicts.csv -c 8  # a folder -> CSV, 8 requests in flight
    python -m handler.client face.jpg --explain heatmap.png   # Grad-CAM of the face crop to a PNG
    python -m handler.client examples --repeat 25 -c 16 --csv /tmp/v.csv   # a quick load check

The token comes from --token, else $DEEPFAKE_TOKEN, else the key file of the server ``make serve``
started (``build/serve/key_file.json``). Images and videos are sent raw with their own Content-Type
(TorchServe would parse a body without one as a URL-encoded form); the server tells them apart by
their bytes.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import mimetypes
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import requests

from handler.tsclient import TorchServeClient, read_keys
from runtime.artifacts import MODEL_NAME
from runtime.photo import IMAGE_SUFFIXES as PHOTO_SUFFIXES

ROOT = Path(__file__).resolve().parents[1]
PHONE_SUFFIXES = {".heic", ".heif", ".avif"}  # decoded by the server (HEIC/HEIF, AVIF), not by runtime.photo
IMAGE_SUFFIXES = set(PHOTO_SUFFIXES) | PHONE_SUFFIXES
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm"}
CSV_FIELDS = ["path", "status", "media", "label", "fake_probability", "threshold", "faces", "face_score",
              "frames_sampled", "frames_with_face", "declared", "warning", "error", "latency_ms"]
# Content types older Pythons' mimetypes lack (the server reads the format from the bytes either way)
for _type, _suffix in (("image/heic", ".heic"), ("image/heif", ".heif"), ("image/avif", ".avif")):
    mimetypes.add_type(_type, _suffix)


class Client:
    """Files in, verdicts out, through the project's TorchServe client (thread-safe)."""

    def __init__(self, url: str, model: str, token: str | None, timeout: float = 120):
        self.server = TorchServeClient(url, keys={"inference": token} if token else {})
        self.model = model
        self.timeout = timeout

    def post(self, path: Path, explain: bool = False) -> requests.Response:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        send = self.server.explain if explain else self.server.predict
        return send(self.model, path.read_bytes(), self.timeout, headers={"Content-Type": content_type})

    def row(self, path: Path) -> dict:
        """One CSV row; transport errors become rows too, so a folder run never stops half-way."""
        start = time.perf_counter()
        try:
            response = self.post(path)
            body = _json(response)
        except requests.RequestException as exc:
            return {"path": str(path), "status": "", "error": f"{type(exc).__name__}: {exc}"}
        row = {"path": str(path), "status": response.status_code, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}
        if response.status_code == 200:
            face = body.get("face") or {}
            row.update(
                label=body["label"],
                fake_probability=body["fake_probability"],
                threshold=body["threshold"],
                faces=len(body.get("faces", [])),
                face_score=face.get("score", ""),
                warning=body.get("warning", ""),
                media=body.get("media", ""),
                frames_sampled=body.get("frames_sampled", ""),  # videos only
                frames_with_face=body.get("frames_with_face", ""),
                declared=(body.get("provenance") or {}).get("declared", ""),  # what the file declares about its origin
            )
        else:
            row["error"] = body.get("error") or body.get("message") or response.text[:200]
        return row


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


def find_token(args) -> str | None:
    if args.token:
        return args.token
    if os.environ.get("DEEPFAKE_TOKEN"):
        return os.environ["DEEPFAKE_TOKEN"]
    key_file = args.run_dir / "key_file.json"
    if key_file.exists():
        return read_keys(key_file).get("inference")
    return None


def images_in(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        else:
            found.append(path)
    return found


def run_many(client: Client, paths: list[Path], concurrency: int, out) -> int:
    """Verdicts for many images as CSV (in input order), then a throughput and latency summary on
    stderr; returns how many failed."""
    from tqdm import tqdm

    rows: list[dict | None] = [None] * len(paths)
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(paths), unit="img", file=sys.stderr) as bar:
        futures = {pool.submit(client.row, path): i for i, path in enumerate(paths)}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            bar.update(1)
    elapsed = time.perf_counter() - start
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    failed = sum(1 for row in rows if row.get("status") != 200)
    print(summary(rows, elapsed, concurrency), file=sys.stderr)
    return failed


def summary(rows: list[dict], elapsed: float, concurrency: int) -> str:
    import numpy as np

    latencies = np.array([row["latency_ms"] for row in rows if row.get("status") == 200])
    text = f"{len(rows)} requests, {len(rows) - len(latencies)} failed, {concurrency} in flight: {len(rows) / elapsed:.1f} req/s"
    if len(latencies):
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        text += f", latency p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="image or video files and/or folders")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference API")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--token", help="inference key (default: $DEEPFAKE_TOKEN or the make-serve key file)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "build/serve", help="where make serve keeps key_file.json")
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="requests in flight for folders")
    parser.add_argument("--csv", type=Path, help="write folder results here instead of stdout")
    parser.add_argument("--explain", type=Path, metavar="PNG", help="save the Grad-CAM heatmap of one image (of a video: its most suspicious frame)")
    parser.add_argument("--repeat", type=int, default=1, help="send the images this many times (a quick load check)")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    client = Client(args.url, args.model, find_token(args), args.timeout)
    paths = images_in(args.paths)
    if not paths:
        parser.error("no images or videos found")
    paths = paths * max(1, args.repeat)

    if args.explain:
        if len(paths) != 1:
            parser.error("--explain takes exactly one image")
        response = client.post(paths[0], explain=True)
        body = _json(response)
        if response.status_code != 200:
            print(json.dumps(body or {"status": response.status_code, "body": response.text[:500]}, indent=2))
            return 1
        explanation = body.pop("explanation")
        args.explain.write_bytes(base64.b64decode(explanation["heatmap_png"]))
        print(json.dumps(body, indent=2))
        print(f"Grad-CAM heatmap ({explanation['size'][0]}x{explanation['size'][1]}) written to {args.explain}", file=sys.stderr)
        return 0

    if len(paths) == 1 and not args.csv:  # one image: the answer itself
        response = client.post(paths[0])
        print(json.dumps(_json(response) or {"status": response.status_code, "body": response.text[:500]}, indent=2))
        return 0 if response.status_code == 200 else 1

    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as out:
            failed = run_many(client, paths, args.concurrency, out)
        print(f"{len(paths) - failed}/{len(paths)} verdicts written to {args.csv}", file=sys.stderr)
    else:
        failed = run_many(client, paths, args.concurrency, sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
