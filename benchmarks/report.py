"""summary.json -> report.md, CSVs and PNG plots, in the run's folder.

Everything here is derived from the summary alone, so a recorded run can be re-rendered (or a report
rebuilt after these modules change) without measuring again:

    python -m benchmarks.report benchmarks/reports/<run>/

This module only puts the report folder together: the numbers come from ``benchmarks.analysis``,
the markdown and CSVs from ``benchmarks.tables``, the plots from ``benchmarks.plots``. Their public
names are re-exported here for the callers and tests that import them from ``benchmarks.report``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.analysis import (  # noqa: F401  (re-exported)
    GPU_TARGETS,
    PERCENTILES,
    PLAIN_VARIANTS,
    against_plain,
    best_load,
    best_model,
    box_limit,
    config_label,
    fastest_batch1,
    generators,
    best_plain,
    is_plain,
    level_winners,
    load_rows,
    photo_ratios,
    plain_variant,
    server_metrics,
    speedups,
    torchserve_rows,
    video_levels,
    where_torchserve_loses,
)
from benchmarks.plots import (  # noqa: F401  (re-exported)
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
    plt,
    save_figure,
)
from benchmarks.tables import (  # noqa: F401  (re-exported)
    PLAIN_TEXT,
    bounds_section,
    fmt,
    generator_cell,
    headline,
    limit_section,
    load_section,
    machine_section,
    photo_section,
    preprocess_sets_section,
    render_markdown,
    table,
    targets_section,
    video_section,
    winner_lines,
    write_csvs,
)


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
