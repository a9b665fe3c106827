"""summary.json -> report.md, CSVs and PNG plots, in the run's folder.

Everything here is derived from the summary alone, so a recorded run can be re-rendered (or a report
rebuilt after these modules change) without measuring again:

    python -m benchmarks.report benchmarks/reports/<run>/

This module only puts the report folder together: the numbers come from ``benchmarks.analysis``,
the markdown and CSVs from ``benchmarks.tables``, the plots from ``benchmarks.plots``; import from
those. The few names tests still take from ``benchmarks.report`` are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.analysis import best_load, speedups  # noqa: F401  (re-exported: the tests use them from here)
from benchmarks.plots import (
    PHOTO_PLOT,
    PLOTS,
    VIDEO_PLOTS,
    plot_latency,
    plot_model,
    plot_photos,
    plot_preprocess,
    plot_throughput,
    plot_video_image_latency,
    plot_video_rates,
)
from benchmarks.tables import render_markdown, write_csvs
from benchmarks.tables import fmt, headline, video_section  # noqa: F401  (re-exported: the tests use them from here)


def build(run_dir: str | Path) -> Path:
    """Render report.md, CSVs and plots from ``run_dir/summary.json``; returns the report's path."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    plots = {
        "latency": plot_latency(summary, run_dir / PLOTS["latency"]),
        "throughput": plot_throughput(summary, run_dir / PLOTS["throughput"]),
        "model": plot_model(summary, run_dir / PLOTS["model"]),
        "preprocess": plot_preprocess(summary, run_dir / PLOTS["preprocess"]),
        "video_rates": plot_video_rates(summary, run_dir / VIDEO_PLOTS["video_rates"]),
        "video_image_latency": plot_video_image_latency(summary, run_dir / VIDEO_PLOTS["video_image_latency"]),
        "photos": plot_photos(summary, run_dir / PHOTO_PLOT),
    }
    summary["_csvs"] = write_csvs(summary, run_dir)
    report = run_dir / "report.md"
    report.write_text(render_markdown(summary, plots))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a folder holding summary.json")
    args = parser.parse_args(argv)
    print(build(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
