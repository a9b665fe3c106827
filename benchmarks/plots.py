"""The report's PNG plots, drawn from a run's summary.json with matplotlib (Agg: files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.analysis import (  # noqa: E402
    PERCENTILES,
    best_model,
    config_label,
    fastest_batch1,
    is_plain,
    load_rows,
    plain_variant,
    video_levels,
)

PLOTS = {
    "latency": "latency_vs_users.png",
    "throughput": "throughput_vs_users.png",
    "model": "model_images_per_s.png",
    "preprocess": "preprocessing.png",
}


PHOTO_PLOT = "photos.png"


VIDEO_PLOTS = {
    "video_rates": "video_rates.png",
    "video_image_latency": "video_image_latency.png",
}


def _configs(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(config_label(r), []).append(r)
    return {k: sorted(v, key=lambda r: r["users"]) for k, v in groups.items()}


def plot_latency(summary: dict, path: Path) -> bool:
    groups = _configs(load_rows(summary))
    if not groups:
        return False
    cols = min(3, len(groups))
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax, (label, runs) in zip(axes.flat, groups.items()):
        users = [r["users"] for r in runs]
        for p in PERCENTILES:
            ax.plot(users, [r["latency_ms"].get(p) for r in runs], marker="o", label=p)
        ax.set_title(label + (" (baseline)" if runs[0].get("baseline") else ""))
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(u) for u in users])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent users")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    axes[0][0].set_ylabel("latency (ms)")
    axes[0][0].legend()
    fig.suptitle(f"Request latency vs concurrency ({summary.get('device', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_throughput(summary: dict, path: Path) -> bool:
    groups = _configs(load_rows(summary))
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in groups.items():
        plain = is_plain(runs[0])
        style = (":" if plain_variant(runs[0]) == "naive" else "-.") if plain else "--" if runs[0].get("baseline") else "-"
        ax.plot([r["users"] for r in runs], [r["rps"] for r in runs], style, marker="o",
                color="black" if plain else None,
                label=label + (" (baseline)" if runs[0].get("baseline") else ""))
    users = sorted({r["users"] for r in load_rows(summary)})
    _finish_log2_plot(fig, ax, users, "concurrent users", "requests/s",
                      f"Throughput vs concurrency ({summary.get('device', '')})", path)
    return True


def plot_model(summary: dict, path: Path) -> bool:
    rows = (summary.get("model") or {}).get("results", [])
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['backend']} {r['precision']}", []).append(r)
    for label, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in runs], [r["images_per_s"] for r in runs], marker="o", label=label)
    batches = sorted({r["batch"] for r in rows})
    _finish_log2_plot(fig, ax, batches, "batch size", "images/s (model only)",
                      f"Model throughput vs batch size ({summary.get('device', '')})", path)
    return True


def _finish_log2_plot(fig, ax, ticks: list, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """Power-of-two x axis labelled at the measured points, then save and close."""
    _log2_axes(ax, ticks, xlabel, ylabel, title)
    save_figure(fig, path)


def _log2_axes(ax, ticks: list, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig, path: Path) -> None:
    """The reports' one PNG style: tight layout at 110 dpi; the figure is closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_preprocess(summary: dict, path: Path) -> bool:
    pre = (summary.get("preprocess") or {}).get("stages_ms")
    if not pre:
        return False
    labels = ["decode", "detect", "crop"]
    values = [pre[s]["mean"] for s in labels]
    p99 = [pre[s]["p99"] for s in labels]
    best, b1 = best_model(summary), fastest_batch1(summary)
    if b1:
        labels.append(f"model batch 1\n({b1['backend']})")
        values.append(b1["latency_ms"]["mean"])
        p99.append(b1["latency_ms"]["p99"])
    if best:
        labels.append(f"model per image\n({best['backend']} b{best['batch']})")
        values.append(1000 / best["images_per_s"])
        p99.append(1000 / best["images_per_s"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.bar(labels, values, color=["#4c72b0"] * 3 + ["#dd8452"] * (len(labels) - 3))
    ax.errorbar(labels, values, yerr=[[0] * len(values), [max(0.0, h - v) for h, v in zip(p99, values)]],
                fmt="none", ecolor="black", capsize=4, label="p99")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("ms per image (mean; whisker to p99)")
    ax.set_title("Preprocessing cost per image vs model cost")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _video_config(video: dict) -> str:
    s = video["settings"]
    label = f"{video['backend']} b{s['batch_size']}/d{s['max_batch_delay']} {s['workers']}w x {s['threads']}t"
    return label + (f", videos apart b1 {s.get('video_workers')}w" if s.get("separate_video_model") else "")


def plot_video_rates(summary: dict, path: Path) -> bool:
    """Videos/s and sampled frames/s against video users; images-beside levels as open markers."""
    levels = video_levels(summary)
    if not levels["videos"]:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    users = sorted({r["video_users"] for r in levels["videos"] + levels["mixed"]})
    for ax, key, ylabel in ((axes[0], "per_s", "videos/s"), (axes[1], "frames_per_s", "sampled frames/s")):
        ax.plot([r["video_users"] for r in levels["videos"]], [r["video"][key] for r in levels["videos"]],
                marker="o", label="videos alone")
        for r in levels["mixed"]:
            ax.plot([r["video_users"]], [r["video"][key]], linestyle="none", marker="s", markerfacecolor="none",
                    markersize=9, label=f"beside {_count(r['image_users'], 'image user')}")
        ax.set_ylim(bottom=0)
        _log2_axes(ax, users, "concurrent video users", ylabel, ylabel + " vs video users")
    fig.suptitle(f"Video throughput ({summary.get('device', '')}, {_video_config(summary['video'])})")
    save_figure(fig, path)
    return True


def plot_video_image_latency(summary: dict, path: Path) -> bool:
    """Image latency p50 and p99: images alone against the same image users beside video users."""
    levels = video_levels(summary)
    rows = levels["images"] + levels["mixed"]
    if not levels["images"]:
        return False
    stats = ("p50", "p99")
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, r in enumerate(rows):
        label = f"{r['image_users']} image users " + (f"beside {_count(r['video_users'], 'video user')}" if r["video_users"] else "alone")
        bars = ax.bar([i + (k - (len(rows) - 1) / 2) * width for i in range(len(stats))],
                      [r["image"]["latency_ms"].get(p, 0) for p in stats], width, label=label)
        ax.bar_label(bars, fmt="%.0f")
    ax.set_xticks(range(len(stats)), stats)
    ax.set_ylabel("image request latency (ms)")
    ax.set_title(f"Image latency alone vs beside videos\n({summary.get('device', '')}, {_video_config(summary['video'])})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_photos(summary: dict, path: Path) -> bool:
    """p50 at the fewest users and requests/s at the most, per set."""
    rows = (summary.get("photos") or {}).get("results", [])
    if not rows:
        return False
    users = sorted({r["users"] for r in rows})
    sets = list(dict.fromkeys(r["set"] for r in rows))
    by = {(r["set"], r["users"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (u, key, label) in zip(axes, ((users[0], "p50", f"p50 ms at {users[0]} user(s)"), (users[-1], "rps", f"requests/s at {users[-1]} users"))):
        values = [(by[(n, u)]["latency_ms"].get("p50", 0) if key == "p50" else by[(n, u)]["per_s"]) if (n, u) in by else 0 for n in sets]
        bars = ax.bar(sets, values, color=["#4c72b0", "#dd8452", "#55a868"][: len(sets)])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_title(label)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Full-size photos beside 256 px faces ({summary.get('device', '')})")
    save_figure(fig, path)
    return True
