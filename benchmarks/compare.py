"""Put two or more benchmark runs side by side (CPU vs GPU, before vs after a change): the
preprocessing stages, the model and the end-to-end load.

    python -m benchmarks.compare benchmarks/reports/<run A> benchmarks/reports/<run B> [--labels cpu gpu] [--out DIR]

Writes compare.md and compare.png into --out (default: benchmarks/reports/compare-<UTC time>/).
Ratios are against the first run.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.analysis import config_label  # noqa: E402
from benchmarks.tables import fmt, ratio, stage_table, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def read_summary(path: str | Path) -> dict:
    path = Path(path)
    return json.loads((path / "summary.json" if path.is_dir() else path).read_text())


def default_label(path: str | Path, summary: dict) -> str:
    path = Path(path)
    return (path if path.is_dir() else path.parent).name or summary.get("device", "run")


def model_table(summaries: list[dict], labels: list[str]) -> str:
    index: dict[tuple, list] = {}
    for i, s in enumerate(summaries):
        for r in (s.get("model") or {}).get("results", []):
            index.setdefault((r["backend"], r["precision"], r["batch"]), [None] * len(summaries))[i] = r
    rows = []
    for (backend, precision, batch), found in sorted(index.items()):
        ips = [r and r["images_per_s"] for r in found]
        p50 = [r and r["latency_ms"]["p50"] for r in found]
        rows.append([backend, precision, batch, *ips, *p50, ratio(ips)])
    return table(["backend", "precision", "batch", *(f"images/s {l}" for l in labels), *(f"p50 ms {l}" for l in labels),
                  f"images/s {labels[-1]} / {labels[0]}"], rows)


def load_table(summaries: list[dict], labels: list[str]) -> str:
    index: dict[tuple, list] = {}
    for i, s in enumerate(summaries):
        for r in (s.get("load") or {}).get("results", []):
            key = (r["backend"], r["batch_size"], r["max_batch_delay"], r["users"])
            index.setdefault(key, [None] * len(summaries))[i] = r
    rows = []
    for key, found in sorted(index.items()):
        any_row = next(r for r in found if r)
        rps = [r and r["rps"] for r in found]
        p99 = [r and r["latency_ms"].get("p99") for r in found]
        failures = [r and r["failures"] for r in found]
        rows.append([config_label(any_row), key[3], *rps, *p99, *failures, ratio(rps)])
    return table(["config", "users", *(f"req/s {l}" for l in labels), *(f"p99 ms {l}" for l in labels),
                  *(f"failures {l}" for l in labels), f"req/s {labels[-1]} / {labels[0]}"], rows)


def runs_table(summaries: list[dict], labels: list[str]) -> str:
    rows = []
    for label, s in zip(labels, summaries):
        m = s.get("machine", {})
        gpus = ", ".join(g["name"] for g in m.get("gpus") or []) or "none"
        pre = (s.get("preprocess") or {}).get("stages_ms", {}).get("total", {}).get("mean")
        rows.append([label, s.get("device", "?"), f"{m.get('cpu', '?')} x{m.get('cpu_count', '?')}", gpus,
                     s.get("profile", {}).get("name", "?"), s.get("created", "?"), fmt(pre)])
    return table(["run", "device", "CPU", "GPU", "profile", "created", "preprocess ms/image"], rows)


def plot(summaries: list[dict], labels: list[str], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    backends = sorted({r["backend"] for s in summaries for r in (s.get("model") or {}).get("results", [])})
    width = 0.8 / max(1, len(summaries))
    for i, (label, s) in enumerate(zip(labels, summaries)):
        rows = (s.get("model") or {}).get("results", [])
        best = [max((r["images_per_s"] for r in rows if r["backend"] == b), default=0) for b in backends]
        left.bar([x + i * width for x in range(len(backends))], best, width, label=label)
        load = (s.get("load") or {}).get("results", [])
        users = sorted({r["users"] for r in load})
        if users:
            right.plot(users, [max(r["rps"] for r in load if r["users"] == u) for u in users], marker="o", label=label)
    left.set_xticks([x + width * (len(summaries) - 1) / 2 for x in range(len(backends))], backends)
    left.set_yscale("log")
    left.set_ylabel("best images/s (model only, any batch)")
    left.set_title("Model throughput per backend")
    left.legend()
    left.grid(True, axis="y", alpha=0.3)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("concurrent users")
    right.set_ylabel("best requests/s (any backend and batching)")
    right.set_title("End-to-end throughput")
    right.grid(True, which="both", alpha=0.3)
    if right.lines:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(paths: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    summaries = [read_summary(p) for p in paths]
    labels = labels or [default_label(p, s) for p, s in zip(paths, summaries)]
    if len(labels) != len(summaries):
        raise ValueError("give one label per run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(summaries, labels, out / "compare.png")
    md = ["# Benchmark comparison", "", f"Ratios: {labels[-1]} against {labels[0]}.", "",
          "## Runs", "", runs_table(summaries, labels), "",
          "## Preprocessing per stage", "", "Mean ms per image on one thread (`preprocess` phase).", "",
          stage_table(summaries, labels), "",
          "## Model only", "", model_table(summaries, labels), "",
          "## End to end", "", load_table(summaries, labels), "",
          "![comparison](compare.png)", ""]
    (out / "compare.md").write_text("\n".join(md))
    return out / "compare.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (or summary.json files), two or more")
    parser.add_argument("--labels", nargs="+", help="one short name per run")
    parser.add_argument("--out", type=Path, help="output folder")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("compare needs at least two runs")
    out = args.out or ROOT / "benchmarks" / "reports" / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M}"
    print(compare(args.runs, out, args.labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
