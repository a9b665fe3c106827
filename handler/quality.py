"""Live quality and drift from the prediction records (host side): ``records_cli quality`` and the
page's quality view.

Over the labelled records (``handler/labels.py``), per model version: how many, ROC AUC of P(fake)
against the reviewers' truth, precision and recall of "fake" at the threshold each answer was given
(its own ``label``), and a reliability table (in each P(fake) bin: the mean P(fake) against the share
the reviewers called fake). Over every answered record: per day, how many, the share called fake and
P(fake)'s quartiles; and the drift of P(fake) against the validation distribution carried by the
served weights' metadata (``runtime/drift.py``), as a population stability index. Limits turn the
report into alerts: ``check_limits``; ``plot`` draws it.
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, select

from handler.labels import labelled_predictions
from handler.records_store import predictions
from runtime import drift
from runtime.verdict import NO_FACE

NO_REFERENCE = ("the served weights' metadata has no validation P(fake) distribution ({key}); add it with "
                "`python -m training.calibrate --weights WEIGHTS --data ROOT ... --reference-only`")  # fmt: skip


def served_metadata(run_dir: Path | None, weights: Path | None, model: str) -> tuple[dict | None, str]:
    """The metadata of the weights being served, and where it came from: ``weights`` (a weights
    ``.json``/``.safetensors`` or an archive ``.mar``), else the archive the run folder's server loaded
    for ``model``; (None, why) when there is none to read."""
    if weights is None and run_dir is not None and (run_dir / "server.json").exists():
        state = json.loads((run_dir / "server.json").read_text())
        archive = state.get("models", {}).get(model)
        weights = Path(state["model_store"]) / archive if archive else None
    if weights is None:
        return None, "no weights given and no server in the run folder"
    weights = Path(weights)
    try:
        if weights.suffix == ".mar":
            with zipfile.ZipFile(weights) as archive:
                return json.loads(archive.read("model.json")), str(weights)
        return json.loads(weights.with_suffix(".json").read_text()), str(weights.with_suffix(".json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return None, f"cannot read the metadata of {weights}: {exc}"


def reliability(truth: np.ndarray, p: np.ndarray) -> list[dict]:
    """Per fixed P(fake) bin with rows: how many, the mean P(fake), the share labelled fake."""
    table = []
    bins = np.clip(np.digitize(p, drift.EDGES[1:-1]), 0, drift.BINS - 1)
    for b in range(drift.BINS):
        inside = bins == b
        if inside.any():
            table.append({"from": round(float(drift.EDGES[b]), 3), "to": round(float(drift.EDGES[b + 1]), 3), "n": int(inside.sum()),
                          "mean_fake_probability": round(float(p[inside].mean()), 4), "fake_share": round(float(truth[inside].mean()), 4)})  # fmt: skip
    return table


def roc_auc(truth: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): the chance that a labelled fake has a
    higher P(fake) than a labelled real; sklearn's value (a test compares), without sklearn on a
    serving host."""
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties averaged
    fakes, reals = int(truth.sum()), int(len(truth) - truth.sum())
    return float((ranks[truth == 1].sum() - fakes * (fakes + 1) / 2) / (fakes * reals))


def version_quality(rows: list[dict]) -> dict:
    """Accuracy figures of one model version's labelled rows."""
    truth = np.array([r["truth"] == "fake" for r in rows], dtype=int)
    p = np.array([r["fake_probability"] for r in rows], dtype=float)
    called = np.array([r["label"] == "fake" for r in rows], dtype=int)
    both, hits = 0 < truth.sum() < len(truth), int((truth & called).sum())
    return {
        "labelled": len(rows), "labelled_fake": int(truth.sum()), "labelled_real": int(len(truth) - truth.sum()),
        "roc_auc": round(roc_auc(truth, p), 4) if both else None,  # undefined with one class
        "precision": round(hits / called.sum(), 4) if called.any() else None,  # of the answers called fake
        "recall": round(hits / truth.sum(), 4) if truth.any() else None,  # of the labelled fakes
        "accuracy": round(float((truth == called).mean()), 4),
        "thresholds": sorted({round(r["threshold"], 6) for r in rows if r["threshold"] is not None}),
        "reliability": reliability(truth, p),
    }  # fmt: skip


def answered(engine: Engine, since: datetime | None) -> list[tuple]:
    """(created_at, fake_probability, label) of every answered prediction since then that judged a
    face (a ``no_face`` answer's score is a centre crop's, no verdict: it would blur the drift)."""
    c = predictions.c
    statement = select(c.created_at, c.fake_probability, c.label).where(
        c.status == 200, c.fake_probability.is_not(None), c.label != NO_FACE)
    if since is not None:
        statement = statement.where(c.created_at >= since)
    with engine.connect() as connection:
        return list(connection.execute(statement.order_by(c.created_at)))


def daily(rows: list[tuple]) -> list[dict]:
    """Per UTC day: how many answers, the share called fake, P(fake)'s quartiles."""
    days = defaultdict(list)
    for created_at, p, label in rows:
        days[created_at.date().isoformat()].append((p, label == "fake"))
    table = []
    for day, values in sorted(days.items()):
        p = np.array([v[0] for v in values])
        q1, median, q3 = np.percentile(p, [25, 50, 75])
        table.append({"day": day, "n": len(values), "called_fake": round(float(np.mean([v[1] for v in values])), 4),
                      "p25": round(float(q1), 4), "median": round(float(median), 4), "p75": round(float(q3), 4)})  # fmt: skip
    return table


def drift_report(live: list[float], meta: dict | None, source: str) -> dict:
    """The live P(fake) histogram against the weights' validation one; ``missing`` says why there is
    no index (no reference in the metadata, no metadata, no answers)."""
    live_counts = drift.histogram(live)
    found = (meta or {}).get(drift.REFERENCE_KEY)
    report = {"statistic": "psi", "edges": [round(float(e), 3) for e in drift.EDGES], "live": live_counts, "weights": source}
    if meta is None:
        return {**report, "psi": None, "missing": f"no served weights' metadata: {source}"}
    if not found or len(found.get("counts", [])) != drift.BINS:
        return {**report, "psi": None, "missing": NO_REFERENCE.format(key=drift.REFERENCE_KEY)}
    if not live:
        return {**report, "psi": None, "reference": found["counts"], "missing": "no answered predictions in the period"}
    value = drift.psi(found["counts"], live_counts)
    level = "large" if value > drift.PSI_LARGE else "moderate" if value > drift.PSI_MODERATE else "stable"
    return {**report, "psi": round(value, 4), "level": level, "reference": found["counts"], "reference_n": found.get("n")}


def quality_report(engine: Engine, since: datetime | None = None, meta: dict | None = None, source: str = "") -> dict:
    """The whole report (the CLI's ``--json`` and the page's ``/api/quality``)."""
    by_version = defaultdict(list)
    for row in labelled_predictions(engine, since):
        if row["fake_probability"] is not None:
            by_version[(row["model_name"], row["model_version"])].append(row)
    rows = answered(engine, since)
    return {
        "since": since.isoformat() if since else None,
        "answered": len(rows),
        "labelled": sum(len(v) for v in by_version.values()),
        "versions": [{"model": name, "version": version, **version_quality(v)} for (name, version), v in sorted(by_version.items(), key=str)],
        "days": daily(rows),
        "drift": drift_report([r[1] for r in rows], meta, source),
    }


def check_limits(report: dict, max_psi: float | None = None, min_auc: float | None = None) -> tuple[list[str], list[str]]:
    """(crossed, unchecked): the limits the report crosses, and those it cannot check (no reference,
    no labelled version with both truths)."""
    crossed, unchecked = [], []
    if max_psi is not None:
        value = report["drift"]["psi"]
        if value is None:
            unchecked.append(f"drift not checked: {report['drift']['missing']}")
        elif value > max_psi:
            crossed.append(f"drift: PSI {value:.3f} over the limit {max_psi:g}")
    if min_auc is not None:
        scored = [v for v in report["versions"] if v["roc_auc"] is not None]
        if not scored:
            unchecked.append("ROC AUC not checked: no model version has labelled cases of both truths")
        for v in scored:
            if v["roc_auc"] < min_auc:
                crossed.append(f"{v['model']} {v['version']}: ROC AUC {v['roc_auc']:.3f} under the limit {min_auc:g} ({v['labelled']} labelled)")
    return crossed, unchecked


def plot(report: dict, path: str | Path) -> Path:
    """A PNG of the report: P(fake) per day (quartiles, share called fake), the live P(fake) against
    the validation distribution, and each version's reliability."""
    try:  # in the train and bench extras, not a serving host's core install
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]' (make setup installs it)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (days_ax, drift_ax, rel_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    days = report["days"]
    x = range(len(days))
    if days:
        days_ax.fill_between(x, [d["p25"] for d in days], [d["p75"] for d in days], alpha=0.3, label="P(fake) quartiles")
        days_ax.plot(x, [d["median"] for d in days], marker="o", label="median P(fake)")
        days_ax.plot(x, [d["called_fake"] for d in days], marker="s", linestyle="--", label="share called fake")
        days_ax.set_xticks(list(x), [d["day"][5:] for d in days], rotation=45)
    days_ax.set(title="answers per day", ylim=(0, 1))
    days_ax.legend(fontsize=8)

    report_drift, centres = report["drift"], (drift.EDGES[:-1] + drift.EDGES[1:]) / 2
    width = 0.4 / drift.BINS
    live = np.array(report_drift["live"], dtype=float)
    drift_ax.bar(centres + width / 2, live / max(live.sum(), 1), width, label="live")
    if report_drift.get("reference"):
        reference = np.array(report_drift["reference"], dtype=float)
        drift_ax.bar(centres - width / 2, reference / max(reference.sum(), 1), width, label="validation")
    psi = report_drift["psi"]
    drift_ax.set(title=f"P(fake) distribution, PSI {psi:.3f}" if psi is not None else "P(fake) distribution (no reference)",
                 xlabel="P(fake)", ylabel="share")  # fmt: skip
    drift_ax.legend(fontsize=8)

    rel_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    for version in report["versions"]:
        table = version["reliability"]
        rel_ax.plot([t["mean_fake_probability"] for t in table], [t["fake_share"] for t in table], marker="o",
                    label=f"{version['model']} {version['version']} (n={version['labelled']}, AUC {version['roc_auc']})")  # fmt: skip
    rel_ax.set(title="reliability (labelled)", xlabel="mean P(fake)", ylabel="share labelled fake", xlim=(0, 1), ylim=(0, 1))
    rel_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
