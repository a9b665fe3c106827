"""Numbers derived from a run's summary.json: the load rows by server and configuration, the best
rows, ratios against the plain servers and the naive baseline, the box's limit, the photo ratios.

No formatting and no files here: ``benchmarks.tables`` writes them as markdown and CSV,
``benchmarks.plots`` draws them, ``benchmarks.report`` puts a run's report together.
"""

from __future__ import annotations

from benchmarks.serverstats import generator_summary

PERCENTILES = ("p50", "p90", "p95", "p99")


# Issue #5's aims for an H100; the report states the distance when it ran on a GPU.
GPU_TARGETS = {
    "model_images_per_s_batch256": 20_000,
    "model_latency_ms_batch1": 1.0,
    "e2e_rps_64_users": 2_000,
    "e2e_p99_ms_64_users": 50.0,
}


PLAIN_VARIANTS = ("tuned", "naive")  # the tuned peer first: the headline's comparison


def plain_variant(row: dict) -> str:
    """``naive`` or ``tuned`` (summaries from before the tuned peer had one plain row: naive)."""
    return row.get("variant", "naive")


def config_label(row: dict) -> str:
    if is_plain(row):
        if plain_variant(row) == "naive":
            return "plain FastAPI naive (eager, 1 process, default threads)"
        return f"plain FastAPI tuned ({row['backend']}, {row['workers']} processes x {row['threads']} thread)"
    label = f"{row['backend']} b{row['batch_size']}/d{row['max_batch_delay']}"
    if "threads" in row:  # reports before the worker x thread sweep had one layout
        label += f" {row['workers']}w x {row['threads']}t"
    return label


def is_plain(row: dict) -> bool:
    return row.get("server") == "plain"


def server_metrics(row: dict) -> dict:
    """TorchServe's metrics split of a load row (``server`` held them before rows named their server)."""
    old = row.get("server")
    return row.get("metrics") or (old if isinstance(old, dict) else {})


def load_rows(summary: dict) -> list[dict]:
    return (summary.get("load") or {}).get("results", [])


def torchserve_rows(summary: dict) -> list[dict]:
    return [r for r in load_rows(summary) if not is_plain(r)]


def against_plain(summary: dict, variant: str = "naive") -> list[dict]:
    """At each user level: the best TorchServe configuration (no failures) against the plain server
    ``variant`` measured in the same run with the same model and images."""
    plain = {r["users"]: r for r in load_rows(summary) if is_plain(r) and plain_variant(r) == variant}
    out = []
    for users, p in sorted(plain.items()):
        best = best_load(summary, users)
        if not best or not p["rps"]:
            continue
        p99, plain_p99 = best["latency_ms"].get("p99"), p["latency_ms"].get("p99")
        out.append({
            "variant": variant, "users": users, "config": config_label(best), "plain_config": config_label(p),
            "rps": best["rps"], "plain_rps": p["rps"], "rps_ratio": best["rps"] / p["rps"], "p99_ms": p99,
            "plain_p99_ms": plain_p99, "p99_ratio": plain_p99 / p99 if p99 and plain_p99 else None,
            "plain_failures": p["failures"],
        })
    return out


def where_torchserve_loses(summary: dict) -> list[dict]:
    """User levels where a plain server beat the best TorchServe configuration on requests/s or p99."""
    return [c for variant in PLAIN_VARIANTS for c in against_plain(summary, variant)
            if c["rps_ratio"] < 1 or (c["p99_ratio"] is not None and c["p99_ratio"] < 1)]


def best_plain(summary: dict, users: int) -> dict | None:
    """The plain server (naive or tuned) with the most requests/s at ``users`` (without failures,
    when any has none)."""
    rows = [r for r in load_rows(summary) if is_plain(r) and r["users"] == users]
    rows = [r for r in rows if r["failures"] == 0] or rows
    return max(rows, key=lambda r: r["rps"], default=None)


def served_label(summary: dict) -> str | None:
    """The configuration `make serve` serves (the served archive's settings, recorded by the load
    phase), when the sweep measured it; else None."""
    served = (summary.get("load") or {}).get("served")
    if not served:
        return None
    label = config_label(served)
    return label if any(config_label(r) == label for r in torchserve_rows(summary)) else None


def level_winners(summary: dict) -> list[dict]:
    """At each user level with a plain row: the served configuration (``served_label``; the run's
    best, ``best_load`` over every level, when the sweep did not measure it) at that level against
    the best plain server there (``best_plain``), same run. ``winner`` is ``torchserve`` when it
    answers at least as many requests/s, else ``plain``; the p99 ratio is plain p99 / TorchServe p99
    (above 1: TorchServe's p99 is lower)."""
    top = best_load(summary)
    if not top:
        return []
    label = served_label(summary) or config_label(top)
    served = {r["users"]: r for r in torchserve_rows(summary) if config_label(r) == label}
    out = []
    for users in sorted({r["users"] for r in load_rows(summary) if is_plain(r)}):
        row, plain = served.get(users), best_plain(summary, users)
        if not row or not plain or not plain["rps"]:
            continue
        p99, plain_p99 = row["latency_ms"].get("p99"), plain["latency_ms"].get("p99")
        ratio = row["rps"] / plain["rps"]
        out.append({
            "users": users, "config": label, "plain_config": config_label(plain), "plain_variant": plain_variant(plain),
            "winner": "torchserve" if ratio >= 1 else "plain", "rps": row["rps"], "plain_rps": plain["rps"],
            "rps_ratio": ratio, "p99_ms": p99, "plain_p99_ms": plain_p99,
            "p99_ratio": plain_p99 / p99 if p99 and plain_p99 else None,
        })
    return out


def speedups(summary: dict) -> list[dict]:
    """Every load row against the naive baseline at the same number of users, measured in the same
    run: requests/s ratio (higher is better) and p99 ratio (baseline / row, higher is better)."""
    rows = torchserve_rows(summary)
    base = {r["users"]: r for r in rows if r.get("baseline")}
    out = []
    for r in rows:
        b = base.get(r["users"])
        if not b or r.get("baseline"):
            continue
        p99, base_p99 = r["latency_ms"].get("p99"), b["latency_ms"].get("p99")
        out.append({
            "config": config_label(r), "users": r["users"],
            "rps": r["rps"], "baseline_rps": b["rps"], "rps_ratio": r["rps"] / b["rps"] if b["rps"] else None,
            "p99_ms": p99, "baseline_p99_ms": base_p99,
            "p99_ratio": base_p99 / p99 if p99 and base_p99 else None,
        })
    return out


def best_model(summary: dict, batch: int | None = None) -> dict | None:
    rows = (summary.get("model") or {}).get("results", [])
    if batch is not None:
        rows = [r for r in rows if r["batch"] == batch]
    return max(rows, key=lambda r: r["images_per_s"], default=None)


def fastest_batch1(summary: dict) -> dict | None:
    rows = [r for r in (summary.get("model") or {}).get("results", []) if r["batch"] == 1]
    return min(rows, key=lambda r: r["latency_ms"]["p50"], default=None)


def best_load(summary: dict, users: int | None = None) -> dict | None:
    """The TorchServe configuration with the most requests/s (without failures, when any has none)."""
    rows = [r for r in torchserve_rows(summary) if users is None or r["users"] == users]
    rows = [r for r in rows if r["failures"] == 0] or rows
    return max(rows, key=lambda r: r["rps"], default=None)


def box_limit(summary: dict) -> dict | None:
    """The box's end-to-end limit for the served model, from stage timings alone: core-ms per request
    = preprocessing of one image on one thread + the model per image at the best configuration's
    batch size (model benchmark, same backend); the limit is the host's cores divided by that. The
    fraction reached is the best TorchServe rate over it. TorchServe's frontend and the load
    generator also take CPU on this box: their measured core-ms per request give a second limit."""
    pre = (summary.get("preprocess") or {}).get("stages_ms")
    top = best_load(summary)
    cores = (summary.get("machine") or {}).get("cpu_count")
    if not pre or not top or not cores:
        return None
    rows = [r for r in (summary.get("model") or {}).get("results", []) if r["backend"] == top["backend"]]
    model = min(rows, key=lambda r: (abs(r["batch"] - top["batch_size"]), r["batch"]), default=None)
    if model is None:
        return None
    core_ms = pre["total"]["mean"] + 1000 / model["images_per_s"]
    host = top.get("host", {})
    around = sum(host.get(k, 0.0) for k in ("frontend_cpu_percent", "client_cpu_percent")) * 10 / top["rps"]  # % of a core -> ms per request
    limit = cores * 1000 / core_ms
    return {
        "cores": cores, "preprocess_ms": pre["total"]["mean"], "model_ms": 1000 / model["images_per_s"],
        "model_batch": model["batch"], "backend": top["backend"], "core_ms": core_ms, "limit_rps": limit,
        "best_rps": top["rps"], "config": config_label(top), "users": top["users"], "fraction": top["rps"] / limit,
        "frontend_and_client_ms": around, "limit_with_frontend_rps": cores * 1000 / (core_ms + around),
        "fraction_with_frontend": top["rps"] / (cores * 1000 / (core_ms + around)),
    }


def photo_ratios(summary: dict) -> dict | None:
    """12 MP against 256 px from the photo phase (same run, same server): p50 at one user and
    requests/s at the most users, per full-size set."""
    rows = (summary.get("photos") or {}).get("results", [])
    by = {(r["set"], r["users"]): r for r in rows}
    users = sorted({r["users"] for r in rows})
    if not users or ("256px", users[0]) not in by:
        return None
    low, high = users[0], users[-1]
    out = {"low_users": low, "high_users": high, "sets": {}}
    for name in sorted({r["set"] for r in rows} - {"256px"}):
        if (name, low) not in by or (name, high) not in by or ("256px", high) not in by:
            continue
        out["sets"][name] = {
            "p50_ms": by[(name, low)]["latency_ms"]["p50"], "p50_256px_ms": by[("256px", low)]["latency_ms"]["p50"],
            "p50_ratio": by[(name, low)]["latency_ms"]["p50"] / by[("256px", low)]["latency_ms"]["p50"],
            "rps": by[(name, high)]["per_s"], "rps_256px": by[("256px", high)]["per_s"],
            "rps_ratio": by[(name, high)]["per_s"] / by[("256px", high)]["per_s"],
        }
    return out


def generators(row: dict) -> dict:
    """The level's load generators (``serverstats.generator_summary``); older summaries ran one, in-process."""
    return row.get("generators") or generator_summary([row.get("host", {}).get("client_cpu_percent", 0.0)])


def video_levels(summary: dict) -> dict[str, list[dict]]:
    """The video phase's levels by kind: videos alone, images alone, and images beside videos."""
    rows = (summary.get("video") or {}).get("results", [])
    return {
        "videos": sorted((r for r in rows if r["video_users"] and not r["image_users"]), key=lambda r: r["video_users"]),
        "images": [r for r in rows if r["image_users"] and not r["video_users"]],
        "mixed": [r for r in rows if r["image_users"] and r["video_users"]],
    }
