"""Reading the prediction records: filtered, newest-first queries, counts and CSV (the page, the
records CLI, the benchmarks). Ships inside the model archive beside the store it reads
(``handler/records_store.py``).
"""

from __future__ import annotations

import csv
import re
from datetime import datetime, timedelta, timezone
from typing import IO, Iterable

from sqlalchemy import Engine, func, select

from handler.records_store import COLUMNS, predictions, utc_now


def parse_time(text: str | None) -> datetime | None:
    """ISO 8601 (UTC when no zone is given), or an age like ``30m``, ``24h``, ``7d`` before now."""
    if not text:
        return None
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if age:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        return utc_now() - timedelta(**{unit: float(age.group(1))})
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _filtered(statement, since=None, until=None, label=None, model=None, refused=None, declared=None, sha256=None):
    column = predictions.c
    if sha256:
        statement = statement.where(column.sha256 == sha256)
    if since is not None:
        statement = statement.where(column.created_at >= since)
    if until is not None:
        statement = statement.where(column.created_at < until)
    if label:
        statement = statement.where(column.label == label)
    if model:
        statement = statement.where(column.model_name == model)
    if refused is not None:
        statement = statement.where(column.status != 200 if refused else column.status == 200)
    if declared:
        statement = statement.where(column.declared == declared)
    return statement


def query(engine: Engine, limit: int | None = 50, offset: int = 0, **filters) -> list[dict]:
    """Newest first. Filters: since, until (datetimes), label, model, refused (bool), declared, sha256."""
    statement = _filtered(select(predictions), **filters).order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
    if limit is not None:
        statement = statement.limit(limit).offset(offset)
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(statement)]
    for row in rows:  # SQLite hands back naive datetimes; every stored time is UTC
        if row["created_at"].tzinfo is None:
            row["created_at"] = row["created_at"].replace(tzinfo=timezone.utc)
    return rows


def count(engine: Engine, **filters) -> int:
    with engine.connect() as connection:
        return connection.execute(_filtered(select(func.count()).select_from(predictions), **filters)).scalar_one()


def write_csv(rows: Iterable[dict], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=["id", *COLUMNS], extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow({**row, "created_at": row["created_at"].isoformat()})
        n += 1
    return n
