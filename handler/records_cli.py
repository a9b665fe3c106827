"""The records CLI (host side): list, export or prune a server's prediction records; label them, export
the labelled cases as a training root, report live quality and drift.

    python -m handler.records_cli list --since 7d --label fake
    python -m handler.records_cli export last-week.csv --since 7d
    python -m handler.records_cli prune --older-than 30d
    python -m handler.records_cli label REQUEST_ID --truth fake --by alice --note "face swap, cheek seam"
    python -m handler.records_cli export-labelled ../shared/data/reviewed
    python -m handler.records_cli quality --since 7 --plot quality.png --max-psi 0.25 --min-auc 0.8

Kept out of the records modules (``handler/records*.py``), which ship inside the archive, because
it finds a run folder's store through the host's server launcher (``handler/server.py``). ``quality``
exits 3 when a limit is crossed and 4 when a limit asked for cannot be checked (no drift reference,
no labelled cases), so cron or CI can alert.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from handler import cases, labels, quality
from handler.records_query import count, parse_time, query, write_csv
from handler.records_settings import RecordsSettings, spool_report
from handler.records_store import RecordsError, ensure_schema, first_line, normalise_url, open_engine, prune, shown
from handler.server import run_records_settings
from runtime.artifacts import MODEL_NAME

LIMIT_CROSSED, LIMIT_UNCHECKED = 3, 4  # quality's exit codes


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


def _label(engine: Engine, args) -> None:
    try:
        row = labels.add_label(engine, args.request_id, args.truth, args.by, args.note)
    except labels.LabelError as exc:
        sys.exit(f"not labelled: {exc}")
    history = labels.label_history(engine, args.request_id)
    print(f"{args.request_id} labelled {row['truth']}" + (f" by {row['labelled_by']}" if row["labelled_by"] else "")
          + (f" ({len(history)} labels, the latest counts)" if len(history) > 1 else ""))  # fmt: skip


def _export_labelled(engine: Engine, args) -> None:
    try:
        store = cases.CaseStore.resolve(args.run_dir, os.environ, args.cases_dir)
    except ValueError as exc:
        sys.exit(str(exc))
    counts = cases.export_labelled(engine, store, args.dir)
    print(f"{counts['real']} real and {counts['fake']} fake cases written to {args.dir} (groups.csv by sha256); "
          f"skipped: {counts['unlabelled']} kept without a label, {counts['not_an_image']} videos or undecodable")  # fmt: skip


def _quality(engine: Engine, args) -> int:
    meta, source = quality.served_metadata(None if args.url else args.run_dir, args.weights, args.model)
    report = quality.quality_report(engine, parse_time(args.since), meta, source)
    crossed, unchecked = quality.check_limits(report, args.max_psi, args.min_auc)
    report["alerts"], report["unchecked"] = crossed, unchecked
    if args.plot:
        quality.plot(report, args.plot)
    print(json.dumps(report, indent=2) if args.json else quality_text(report))
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return LIMIT_CROSSED if crossed else LIMIT_UNCHECKED if unchecked else 0


def quality_text(report: dict) -> str:
    """The report for people: one line per version, the last days, the drift, the alerts."""
    lines = [f"{report['answered']} answers, {report['labelled']} labelled" + (f", since {report['since']}" if report["since"] else "")]
    for v in report["versions"]:
        lines.append(f"  {v['model']} {v['version']}: {v['labelled']} labelled ({v['labelled_fake']} fake), ROC AUC {v['roc_auc']}, "
                     f"precision {v['precision']}, recall {v['recall']} of fake at threshold {v['thresholds']}")  # fmt: skip
        lines += [f"    P(fake) {t['from']:.1f}-{t['to']:.1f}: {t['n']:5d}, mean {t['mean_fake_probability']:.3f}, labelled fake {t['fake_share']:.3f}"
                  for t in v["reliability"]]  # fmt: skip
    for d in report["days"][-14:]:
        lines.append(f"  {d['day']}: {d['n']:6d} answers, called fake {d['called_fake']:.3f}, P(fake) median {d['median']:.3f} [{d['p25']:.3f}, {d['p75']:.3f}]")
    found = report["drift"]
    lines.append(f"  drift: PSI {found['psi']:.4f} ({found['level']}) against the validation P(fake) of {found['weights']}"
                 if found["psi"] is not None else f"  drift: not measured: {found['missing']}")  # fmt: skip
    lines += [f"ALERT {line}" for line in report.get("alerts", [])] + [f"UNCHECKED {line}" for line in report.get("unchecked", [])]
    return "\n".join(lines)


def days_or_time(text: str | None) -> str | None:
    """``--since 7`` means seven days; ``7d``, ``24h`` or an ISO time as everywhere else."""
    return f"{text}d" if text and text.replace(".", "", 1).isdigit() else text


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--url", help="the store's SQLAlchemy URL (sqlite:///..., postgresql://...); default $DEEPFAKE_RECORDS_URL")
    where.add_argument("--run-dir", type=Path, default=Path("build/serve"), help="a server's run folder (its store)")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", type=days_or_time, help="ISO time or an age: 30m, 24h, 7d (a bare number: days)")
    filters.add_argument("--until", help="ISO time or an age")
    filters.add_argument("--label", help="real or fake")
    filters.add_argument("--model", help="model name")
    filters.add_argument("--refused", action="store_true", help="only refused input (status != 200)")
    filters.add_argument("--declared", help="what the upload declared: ai_generated, ai_edited, edited, camera, none")
    top = argparse.ArgumentParser(description="The prediction records: list, export, prune, label, export-labelled, quality.")
    actions = top.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common, filters], help="the latest records")
    listing.add_argument("--limit", type=int, default=50, help="rows to show")
    actions.add_parser("export", parents=[common, filters], help="records as CSV").add_argument("csv", nargs="?", default="-", help="'-': stdout")
    actions.add_parser("prune", parents=[common], help="delete old rows").add_argument("--older-than", required=True, help="an age (30d) or ISO time")
    label = actions.add_parser("label", parents=[common], help="a reviewer's truth for one prediction")
    label.add_argument("request_id", help="the answer's x-request-id (the records' request_id)")
    label.add_argument("--truth", required=True, choices=labels.TRUTHS)
    label.add_argument("--by", help="who labels")
    label.add_argument("--note", help="why, in a sentence")
    export = actions.add_parser("export-labelled", parents=[common], help="the page's labelled cases as a training root")
    export.add_argument("dir", type=Path, help="the training root to write (real/, fake/, groups.csv)")
    export.add_argument("--cases-dir", type=Path, help="the labelled cases' folder (default: $DEEPFAKE_CASES_DIR, else <run dir>/labelled-cases)")
    report = actions.add_parser("quality", parents=[common], help="live accuracy per model version, calibration and drift")
    report.add_argument("--since", type=days_or_time, help="days (7) or an age or ISO time; default: every record")
    report.add_argument("--json", action="store_true", help="the report as JSON")
    report.add_argument("--plot", type=Path, help="also draw it to this PNG")
    report.add_argument("--weights", type=Path, help="the served weights (.json, .safetensors or .mar) whose validation P(fake) drift is measured against; default: the run folder's archive")
    report.add_argument("--model", default=MODEL_NAME, help="the model whose archive holds the weights")
    report.add_argument("--max-psi", type=float, help="exit 3 when the drift's PSI is above this (0.25: a large shift)")
    report.add_argument("--min-auc", type=float, help="exit 3 when a version's live ROC AUC is below this")
    return top


def store_settings(args) -> RecordsSettings:
    """The store named by --url, else the run folder's; exits with one line when there is none."""
    settings = RecordsSettings.resolve({"DEEPFAKE_RECORDS_URL": args.url}) if args.url else run_records_settings(args.run_dir, os.environ)
    if settings.url is None:
        sys.exit("prediction records are off for this server (records URL 'off')")
    parsed = make_url(normalise_url(settings.url))
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        sys.exit(f"no records at {parsed.database} (nothing served from that run folder yet?)")
    return settings


def main(argv: list[str] | None = None) -> None:
    top = parser()
    args = top.parse_args(argv)
    settings = store_settings(args)
    try:
        filters = dict(since=parse_time(args.since), until=parse_time(args.until), label=args.label, model=args.model,
                       refused=True if args.refused else None, declared=args.declared) if args.action in ("list", "export") else {}  # fmt: skip
        older_than = parse_time(args.older_than) if args.action == "prune" else None
        parse_time(getattr(args, "since", None))
    except ValueError as exc:
        top.error(str(exc))
    engine = open_engine(settings.url)
    status = 0
    try:
        ensure_schema(engine)
        if args.action == "prune":
            print(f"{prune(engine, older_than)} records answered before {older_than:%Y-%m-%d %H:%M:%S} UTC deleted")
        elif args.action in ("list", "export"):
            _list(engine, filters, args.limit) if args.action == "list" else _export(engine, filters, args.csv)
        else:
            status = {"label": _label, "export-labelled": _export_labelled, "quality": _quality}[args.action](engine, args) or 0
    except (SQLAlchemyError, RecordsError) as exc:
        waiting = "" if args.url else f"; {spool_report(settings)['rows']} rows wait in the spool"
        sys.exit(f"records store unavailable at {shown(settings.url)}: {first_line(exc)}{waiting}")
    if not args.url and (waiting := spool_report(settings)["rows"]):
        print(f"{waiting} more rows wait in the spool {settings.spool_dir} for the store", file=sys.stderr)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
