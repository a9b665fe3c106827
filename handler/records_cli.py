"""The records CLI (host side): list, export or prune a server's prediction records.

    python -m handler.records_cli list --since 7d --label fake
    python -m handler.records_cli export last-week.csv --since 7d
    python -m handler.records_cli prune --older-than 30d

Kept out of ``handler/records.py``, which ships inside the archive, because it finds a run folder's
store through the host's server launcher (``handler/server.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from handler.records import (RecordsError, RecordsSettings, ensure_schema, first_line, normalise_url, open_engine, parse_time,
                             prune, query, count, shown, spool_report, write_csv)
from handler.server import run_records_settings


def _list(engine: Engine, filters: dict, limit: int) -> None:
    total = count(engine, **filters)
    print(f"{'time (UTC)':19}  {'status':>6}  {'label':5}  {'P(fake)':>7}  {'faces':>5}  {'ms':>7}  {'declared':12}  model  sha256")
    for row in query(engine, limit=limit, **filters):
        p = "" if row["fake_probability"] is None else f"{row['fake_probability']:.3f}"
        faces = "" if row["faces"] is None else row["faces"]
        ms = "" if row["latency_ms"] is None else f"{row['latency_ms']:.1f}"
        print(f"{row['created_at']:%Y-%m-%d %H:%M:%S}  {row['status']:>6}  {row['label'] or row['error'] or '':5}  {p:>7}  "
              f"{faces:>5}  {ms:>7}  {row['declared'] or '':12}  {row['model_name']}/{row['backend']}  {(row['sha256'] or '')[:12]}")  # fmt: skip
    print(f"{min(total, limit)} of {total} records")


def _export(engine: Engine, filters: dict, target: str) -> None:
    rows = query(engine, limit=None, **filters)
    if target == "-":
        n = write_csv(rows, sys.stdout)
    else:
        with open(target, "w", newline="") as out:
            n = write_csv(rows, out)
    print(f"{n} records written to {target}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="List, export or prune the prediction records.")
    parser.add_argument("action", choices=["list", "export", "prune"])
    parser.add_argument("csv", nargs="?", default="-", help="export: the CSV file to write ('-': stdout)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="the store's SQLAlchemy URL (sqlite:///..., postgresql://...); default $DEEPFAKE_RECORDS_URL")
    where.add_argument("--run-dir", type=Path, default=Path("build/serve"), help="a server's run folder (its store)")
    parser.add_argument("--since", help="ISO time or an age: 30m, 24h, 7d")
    parser.add_argument("--until", help="ISO time or an age")
    parser.add_argument("--label", help="real or fake")
    parser.add_argument("--model", help="model name")
    parser.add_argument("--refused", action="store_true", help="only refused input (status != 200)")
    parser.add_argument("--declared", help="what the upload declared: ai_generated, ai_edited, edited, camera, none")
    parser.add_argument("--limit", type=int, default=50, help="list: rows to show (export writes all)")
    parser.add_argument("--older-than", help="prune: delete rows answered before this age (30d) or ISO time")
    args = parser.parse_args(argv)

    if args.url:
        settings = RecordsSettings.resolve({"DEEPFAKE_RECORDS_URL": args.url})
    else:  # a server's run folder
        settings = run_records_settings(args.run_dir, os.environ)
    if settings.url is None:
        sys.exit("prediction records are off for this server (records URL 'off')")
    parsed = make_url(normalise_url(settings.url))
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        sys.exit(f"no records at {parsed.database} (nothing served from that run folder yet?)")
    if args.action == "prune" and not args.older_than:
        parser.error("prune needs --older-than (e.g. 30d)")
    try:
        filters = dict(since=parse_time(args.since), until=parse_time(args.until), label=args.label, model=args.model,
                       refused=True if args.refused else None, declared=args.declared)  # fmt: skip
        older_than = parse_time(args.older_than)
    except ValueError as exc:
        parser.error(str(exc))
    engine = open_engine(settings.url)
    try:
        ensure_schema(engine)
        if args.action == "prune":
            print(f"{prune(engine, older_than)} records answered before {older_than:%Y-%m-%d %H:%M:%S} UTC deleted")
        elif args.action == "export":
            _export(engine, filters, args.csv)
        else:
            _list(engine, filters, args.limit)
    except (SQLAlchemyError, RecordsError) as exc:
        waiting = "" if args.url else f"; {spool_report(settings)['rows']} rows wait in the spool"
        sys.exit(f"records store unavailable at {shown(settings.url)}: {first_line(exc)}{waiting}")
    if not args.url and (waiting := spool_report(settings)["rows"]):
        print(f"{waiting} more rows wait in the spool {settings.spool_dir} for the store", file=sys.stderr)


if __name__ == "__main__":
    main()
