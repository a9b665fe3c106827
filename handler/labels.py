"""Reviewers' labels (host side): "this is real" / "this is fake" for a recorded prediction.

Kept in the records store's ``labels`` table (``handler/records_store.py``, schema version 4) beside the
prediction they correct, by its request id. A label is never overwritten: labelling a request again
adds a row, the latest one counts, the earlier ones stay as its history (who, when, the note).
Written by the records CLI (``python -m handler.records_cli label``) and the page (``POST /api/label``);
read by ``quality`` (``handler/quality.py``), the page's history and ``export-labelled``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine, func, insert, select

from handler.records_store import labels, predictions

TRUTHS = ("real", "fake")
MAX_NOTE = 1000  # characters; the column's size
MAX_BY = 128


class LabelError(ValueError):
    """A label that cannot be kept: ``code`` and ``status`` for the page's 4xx, the message for people."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


def add_label(engine: Engine, request_id: str, truth: str, by: str | None = None, note: str | None = None,
              require_prediction: bool = True) -> dict:
    """Keep one label; returns the stored row. ``require_prediction``: refuse a request id the store
    has no prediction for (the page passes False for a request it forwarded itself, whose row may still
    be on its way through the spool)."""
    truth = (truth or "").strip().lower()
    if truth not in TRUTHS:
        raise LabelError("bad_truth", f"the truth must be one of {', '.join(TRUTHS)}, not {truth!r}")
    request_id = (request_id or "").strip()
    if not request_id or len(request_id) > 64:
        raise LabelError("bad_request_id", "a request id is 1 to 64 characters (the x-request-id of the answer)")
    if note and len(note) > MAX_NOTE or by and len(by) > MAX_BY:
        raise LabelError("too_long", f"a note is at most {MAX_NOTE} characters, a name {MAX_BY}")
    row = {"created_at": datetime.now(timezone.utc), "request_id": request_id, "truth": truth,
           "labelled_by": (by or "").strip() or None, "note": (note or "").strip() or None}  # fmt: skip
    with engine.begin() as connection:
        if require_prediction and connection.execute(select(predictions.c.id).where(predictions.c.request_id == request_id)).first() is None:
            raise LabelError("unknown_request", f"no prediction with request id {request_id} in the records", status=404)
        row["id"] = connection.execute(insert(labels).values(**row)).inserted_primary_key[0]
    return row


def _latest():
    """The id of each request's latest label."""
    return select(func.max(labels.c.id).label("id")).group_by(labels.c.request_id).subquery()


def latest_labels(engine: Engine, request_ids: list[str]) -> dict[str, dict]:
    """{request id: its latest label} for those of ``request_ids`` that have one."""
    if not request_ids:
        return {}
    latest = _latest()
    statement = select(labels).join(latest, labels.c.id == latest.c.id).where(labels.c.request_id.in_(request_ids))
    with engine.connect() as connection:
        return {row.request_id: _utc(dict(row._mapping)) for row in connection.execute(statement)}


def label_history(engine: Engine, request_id: str) -> list[dict]:
    """Every label of one request, oldest first (the last one counts)."""
    statement = select(labels).where(labels.c.request_id == request_id).order_by(labels.c.id)
    with engine.connect() as connection:
        return [_utc(dict(row._mapping)) for row in connection.execute(statement)]


def labelled_predictions(engine: Engine, since: datetime | None = None) -> list[dict]:
    """The answered predictions (status 200) with a label: each row's columns plus ``truth``,
    ``labelled_by`` and ``labelled_at`` from its latest label; ``since`` on the prediction's time."""
    latest = _latest()
    statement = (
        select(predictions, labels.c.truth, labels.c.labelled_by, labels.c.created_at.label("labelled_at"))
        .join(labels, labels.c.request_id == predictions.c.request_id)
        .join(latest, labels.c.id == latest.c.id)
        .where(predictions.c.status == 200)
        .order_by(predictions.c.id)
    )
    if since is not None:
        statement = statement.where(predictions.c.created_at >= since)
    with engine.connect() as connection:
        return [_utc(dict(row._mapping), "created_at", "labelled_at") for row in connection.execute(statement)]


def _utc(row: dict, *keys: str) -> dict:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    for key in keys or ("created_at",):
        if row.get(key) is not None and row[key].tzinfo is None:
            row[key] = row[key].replace(tzinfo=timezone.utc)
    return row
