"""The prediction records' past schemas, frozen: what each earlier version of
handler/records_store.py created, so the upgrade test can write a store of that version and open it with today's code.

When a change bumps ``records_store.SCHEMA_VERSION``, copy the tables as they were before the change into
a new entry here (keyed by the version they are); never edit an entry once frozen.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, MetaData, String, Table


def version_1() -> MetaData:
    """Version 1 (handler/records.py up to issue 23; its tables are in handler/records_store.py now): request ids indexed but not unique."""
    metadata = MetaData()
    Table(
        "predictions",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("created_at", DateTime(timezone=True), nullable=False, index=True),
        Column("request_id", String(64), index=True),
        Column("sha256", String(64)),
        Column("byte_count", Integer),
        Column("image_width", Integer),
        Column("image_height", Integer),
        Column("media", String(8)),
        Column("faces", Integer),
        Column("label", String(16), index=True),
        Column("fake_probability", Float),
        Column("threshold", Float),
        Column("model_name", String(128), index=True),
        Column("model_version", String(32)),
        Column("backend", String(32)),
        Column("precision", String(16)),
        Column("latency_ms", Float),
        Column("status", Integer, nullable=False),
        Column("error", String(64)),
        Column("explain", Boolean, nullable=False, default=False),
    )
    Table(
        "schema_version",
        metadata,
        Column("version", Integer, primary_key=True),
        Column("applied_at", DateTime(timezone=True), nullable=False),
    )
    return metadata


def version_2() -> MetaData:
    """Version 2 (issue 23): request ids unique, so a replayed row is skipped, not doubled."""
    metadata = version_1()
    predictions = metadata.tables["predictions"]
    next(i for i in predictions.indexes if i.name == "ix_predictions_request_id").unique = True
    return metadata


def version_3() -> MetaData:
    """Version 3 (issue 22): the indexed ``declared`` column (the answer's provenance.declared)."""
    metadata = version_2()
    predictions = metadata.tables["predictions"]
    predictions.append_column(Column("declared", String(16), index=True))
    return metadata


PAST = {1: version_1, 2: version_2, 3: version_3}  # version -> the tables that version created
