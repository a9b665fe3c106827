"""The upload page: one HTML page on loopback, and the small server behind it.

The browser talks only to this server. It forwards images and videos to TorchServe with the
inference key, which never leaves the server, and reads the history from the prediction records
(``handler/records_store.py``, ``handler/records_query.py``) of the same run folder::

    python -m handler.page --run-dir build/serve          # make ui; prints http://127.0.0.1:8090/

Routes: ``GET /`` the page (``handler/static/``: local HTML, JS and CSS, nothing from the
internet); ``POST /api/predict`` and ``POST /api/explain`` take the raw image or video bytes as the
body and answer TorchServe's JSON with its status; ``POST /api/preview`` a JPEG of an uploaded
image for formats a browser cannot draw (HEIC), decoded by the handler's own guarded decoder;
``GET /api/limits`` the byte limits the page enforces; ``GET /api/history`` a page of records
(newest first, filters ``label``, ``model``, ``since``, ``until``, ``declared``); ``GET
/api/history.csv`` the same rows as CSV; ``POST /api/label`` a reviewer's truth for a verdict
(``request_id``, ``truth`` real|fake, ``by``, ``note`` in the query; the body, when the page still holds
the file, is kept in the labelled-cases folder, ``handler/cases.py``); ``GET /api/quality`` the live
quality and drift report (``handler/quality.py``). While the records store is down they answer 503
``records_unavailable`` (JSON, or a short HTML page for a browser), never a 500.

An upload over its media's byte limit (the handler's defaults: an image 16 MiB, a video 64 MiB,
TorchServe's request cap) is refused here, before it is forwarded; a video is told from an image by
its first bytes (``runtime.video``), as the handler tells them.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import requests
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from handler import cases, labels, quality, records_query, records_store
from handler.payload import http_status
from handler.server import ROOT, TorchServe
from handler.tsclient import TorchServeClient
from runtime.artifacts import MODEL_NAME
from runtime.decoding import DEFAULT_MAX_IMAGE_BYTES, ImageError, decode_image
from runtime.video import DEFAULT_MAX_BYTES as DEFAULT_MAX_VIDEO_BYTES
from runtime.video import is_video

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8090
HEAD = 64  # bytes that tell a video from an image (runtime.video.container_of reads no further)
PREVIEW_SIDE = 1600  # longest side of a preview JPEG


def preview_jpeg(data: bytes) -> bytes:
    """An upright JPEG of at most PREVIEW_SIDE pixels a side, through the handler's guarded decoder
    (the same pixel limits and refusals); raises ImageError."""
    image = decode_image(data)
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def refusal(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


@dataclass(frozen=True)
class UploadLimits:
    """Bytes per upload, by media: the handler's own defaults, checked here before forwarding."""

    image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    video_bytes: int = DEFAULT_MAX_VIDEO_BYTES

    def refusal(self, head: bytes, size: int) -> JSONResponse | None:
        """A 413 when ``size`` bytes are over the limit of the media ``head`` (the first bytes) shows."""
        media, limit = ("video", self.video_bytes) if is_video(head[:HEAD]) else ("image", self.image_bytes)
        if size <= limit:
            return None
        return refusal(413, f"{media}_too_large", f"the {media} is over {limit / 2**20:g} MiB")


async def read_upload(request: Request, limits: UploadLimits) -> bytes | JSONResponse:
    """The body, or a refusal as soon as its first bytes and its size (declared or read) are over the
    limit: an oversized upload is not read to its end."""
    declared = request.headers.get("content-length", "")
    declared = int(declared) if declared.isdigit() else 0
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) >= HEAD and (refused := limits.refusal(bytes(body[:HEAD]), max(declared, len(body)))):
            return refused
    return limits.refusal(bytes(body[:HEAD]), len(body)) or bytes(body)


def records_unavailable(request: Request, message: str) -> Response:
    """503 ``records_unavailable``: JSON for the page's script and API clients, a short HTML page for a
    browser following the CSV link."""
    if "text/html" in request.headers.get("accept", ""):
        body = f"<!doctype html><title>Records unavailable</title><h1>Records unavailable</h1><p>{html.escape(message)}</p>"
        return HTMLResponse(body, status_code=503)
    return refusal(503, "records_unavailable", message)


FORWARDED_KEPT = 1000  # request ids this server forwarded, remembered with their sha256 for the labels


@dataclass
class Review:
    """What labelling needs beside the store: where labelled files go, the weights' metadata for the
    drift reference (the run folder's served archive), and the sha256 of each request this server
    forwarded (a label's file must be the one that was judged)."""

    cases: cases.CaseStore | None = None
    run_dir: Path | None = None
    model: str = MODEL_NAME
    forwarded: OrderedDict = field(default_factory=OrderedDict)

    def remember(self, request_id: str | None, body: bytes) -> None:
        if request_id:
            self.forwarded[request_id] = hashlib.sha256(body).hexdigest()
            while len(self.forwarded) > FORWARDED_KEPT:
                self.forwarded.popitem(last=False)


def create_app(client: TorchServeClient, model: str, store_url: str | None, limits: UploadLimits = UploadLimits(),
               review: Review | None = None) -> FastAPI:  # fmt: skip
    """The page's server; ``store_url`` None: recording is off, and the history says so."""
    review = review or Review(model=model)
    app = FastAPI(title="Deepfake detector", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/limits")
    def upload_limits() -> dict:
        return asdict(limits)

    async def forward(request: Request, explain: bool) -> JSONResponse:
        body = await read_upload(request, limits)
        if isinstance(body, JSONResponse):
            return body
        # TorchServe reads a body without a content type as a form; an unnamed file is raw bytes
        headers = {"Content-Type": request.headers.get("content-type") or "application/octet-stream"}
        call = client.explain if explain else client.predict
        try:
            answer = await run_in_threadpool(call, model, body, 120, headers=headers)
        except requests.RequestException as exc:
            return refusal(502, "server_unavailable", f"the model server did not answer ({type(exc).__name__})")
        try:
            payload = answer.json()
        except ValueError:  # the frontend's own refusals (e.g. its body cap) are not always JSON
            payload = None
        if answer.status_code != 200 and not (isinstance(payload, dict) and "error" in payload):
            # TorchServe's own refusals ({"code", "type", "message"}: no workers, timeouts, its body cap)
            message = payload.get("message") if isinstance(payload, dict) else answer.text[:300]
            return refusal(answer.status_code if answer.status_code >= 400 else 502, "model_server_error", message or "no answer")
        if not isinstance(payload, dict):
            return refusal(502, "model_server_error", "the model server's answer was not JSON")
        request_id = answer.headers.get("x-request-id")
        review.remember(request_id, body)
        return JSONResponse(payload, status_code=answer.status_code, headers={"X-Request-Id": request_id} if request_id else None)

    @app.post("/api/predict")
    async def predict(request: Request) -> JSONResponse:
        return await forward(request, explain=False)

    @app.post("/api/explain")
    async def explain(request: Request) -> JSONResponse:
        return await forward(request, explain=True)

    @app.post("/api/preview")
    async def preview(request: Request) -> Response:
        """The upload as a JPEG the browser can show (the page asks only when it cannot draw the file)."""
        body = await read_upload(request, limits)
        if isinstance(body, JSONResponse):
            return body
        try:
            return Response(await run_in_threadpool(preview_jpeg, body), media_type="image/jpeg")
        except ImageError as error:
            return refusal(http_status(error), error.code, error.message)

    add_history(app, store_url, limits, review)
    return app


def add_history(app: FastAPI, store_url: str | None, limits: UploadLimits, review: Review) -> None:
    """``/api/history`` and ``/api/history.csv`` from the records store; a store that is down (or
    recording off) is a 503 ``records_unavailable``, never a 500, and predictions go on."""
    engine = records_store.open_engine(store_url) if store_url else None
    try:  # a page opened before the first prediction still has an (empty) history
        if engine is not None:
            records_store.ensure_schema(engine)
    except Exception as exc:
        print(f"warning: the records store is not reachable yet ({records_store.shown(store_url)}: {exc}); the history fills once it is")

    def read(request: Request, reader: Callable, **where):
        if engine is None:
            raise RecordsDown(records_unavailable(request, "recording is off for this server (records URL 'off')"))
        try:
            return reader(engine, **where)
        except labels.LabelError:  # the reviewer's input, not the store: a 4xx with its reason
            raise
        except Exception as exc:
            raise RecordsDown(records_unavailable(request, f"the records store is not answering: {records_store.first_line(exc)}")) from None

    def filters(label, model_name, since, until, declared=None) -> dict:
        try:
            return dict(label=label or None, model=model_name or None, since=records_query.parse_time(since), until=records_query.parse_time(until),
                        declared=declared or None)  # fmt: skip
        except ValueError as exc:
            raise BadFilter(str(exc)) from None

    @app.get("/api/history")
    def history(
        request: Request,
        page: int = Query(1, ge=1),
        per_page: int = Query(10, ge=1, le=200),
        label: str | None = None,
        model_name: str | None = Query(None, alias="model"),
        since: str | None = None,
        until: str | None = None,
        declared: str | None = None,
    ):
        try:
            where = filters(label, model_name, since, until, declared)
            rows = read(request, records_query.query, limit=per_page, offset=(page - 1) * per_page, **where)
            total = read(request, records_query.count, **where)
        except BadFilter as exc:
            return refusal(400, "bad_filter", str(exc))
        except RecordsDown as down:
            return down.response
        try:
            latest = read(request, labels.latest_labels, request_ids=[row["request_id"] for row in rows])
        except RecordsDown as down:
            return down.response
        for row in rows:
            row["created_at"] = row["created_at"].isoformat()
            found = latest.get(row["request_id"])
            row["truth"], row["labelled_by"] = (found["truth"], found["labelled_by"]) if found else (None, None)
        return {"rows": rows, "total": total, "page": page, "per_page": per_page}

    @app.get("/api/history.csv")
    def history_csv(request: Request, label: str | None = None, model_name: str | None = Query(None, alias="model"),
                    since: str | None = None, until: str | None = None, declared: str | None = None):  # fmt: skip
        try:
            rows = read(request, records_query.query, limit=None, **filters(label, model_name, since, until, declared))
        except BadFilter as exc:
            return refusal(400, "bad_filter", str(exc))
        except RecordsDown as down:
            return down.response
        out = io.StringIO()
        records_query.write_csv(rows, out)
        return StreamingResponse(
            iter([out.getvalue()]), media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="predictions.csv"'},
        )  # fmt: skip

    add_review(app, read, limits, review)


def add_review(app: FastAPI, read: Callable, limits: UploadLimits, review: Review) -> None:
    """``POST /api/label`` and ``GET /api/quality``, through the history's store reader ``read``."""

    def kept_file(request: Request, request_id: str, body: bytes) -> str | None:
        """The sha256 under which the labelled file is kept; refuses a file other than the judged one."""
        if not body:
            return None
        digest = hashlib.sha256(body).hexdigest()
        judged = review.forwarded.get(request_id)
        if judged is None:  # forwarded before this server started: the store knows what was judged
            judged = next((r["sha256"] for r in read(request, records_query.query, limit=None, sha256=digest) if r["request_id"] == request_id), None)
        if judged != digest:
            raise labels.LabelError("file_mismatch", f"the file sent is not the one request {request_id} judged (sha256 {digest[:12]}...)")
        if review.cases is None:
            raise labels.LabelError("cases_off", "this page keeps no labelled cases (no folder)", status=409)
        return digest

    @app.post("/api/label")
    async def label(request: Request, request_id: str = "", truth: str = "", by: str | None = None, note: str | None = None):
        body = await read_upload(request, limits)
        if isinstance(body, JSONResponse):
            return body
        try:
            digest = await run_in_threadpool(kept_file, request, request_id, body)
            if digest and len(body) > review.cases.max_bytes:
                return refusal(413, "case_too_large", f"the file is over the labelled cases' cap ({review.cases.max_bytes / 2**20:g} MiB)")
            row = await run_in_threadpool(read, request, labels.add_label, request_id=request_id, truth=truth, by=by, note=note,
                                          require_prediction=request_id not in review.forwarded)  # fmt: skip
        except labels.LabelError as exc:
            return refusal(exc.status, exc.code, str(exc))
        except RecordsDown as down:
            return down.response
        if digest:
            await run_in_threadpool(review.cases.keep, body)
        return {**row, "created_at": row["created_at"].isoformat(), "kept": digest}

    @app.get("/api/quality")
    def live_quality(request: Request, since: str | None = "7d"):
        try:
            start = records_query.parse_time(since)
        except ValueError as exc:
            return refusal(400, "bad_filter", str(exc))
        meta, source = quality.served_metadata(review.run_dir, None, review.model)
        try:
            return read(request, quality.quality_report, since=start, meta=meta, source=source)
        except RecordsDown as down:
            return down.response


class BadFilter(ValueError):
    pass


class RecordsDown(RuntimeError):
    """The records store cannot be read (down, or recording off); carries the 503 to answer."""

    def __init__(self, response: Response):
        super().__init__(response.status_code)
        self.response = response


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the upload page for a running TorchServe (make serve).")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "build/serve", help="the server's run folder (keys, ports, records)")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--cases-dir", type=Path, help="where labelled uploads are kept (default: $DEEPFAKE_CASES_DIR, else <run dir>/labelled-cases)")
    parser.add_argument("--cases-mb", type=float, help=f"the labelled cases' cap in MiB (default: $DEEPFAKE_CASES_MB, else {cases.DEFAULT_MB:g})")
    parser.add_argument("--cases-keep-days", type=float, help=f"days a labelled case is kept (default: $DEEPFAKE_CASES_KEEP_DAYS, else {cases.DEFAULT_KEEP_DAYS:g})")
    args = parser.parse_args(argv)
    if not (args.run_dir / "server.json").exists():
        raise SystemExit(f"no server recorded in {args.run_dir}: run `make serve` first")
    server = TorchServe.attach(args.run_dir)
    store = server.records_url  # where its workers record (None: recording is off)
    review = Review(cases.CaseStore.resolve(args.run_dir, os.environ, args.cases_dir, args.cases_mb, args.cases_keep_days), args.run_dir, args.model)
    app = create_app(server.client, args.model, store, review=review)
    history = records_store.shown(store) if store else "nowhere: recording is off"
    print(f"the page: http://127.0.0.1:{args.port}/  (model {args.model} at {server.inference_url}; history from {history})", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
