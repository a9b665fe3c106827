"""The report's markdown (sections and tables) and CSVs, from a run's summary.json and the numbers
``benchmarks.analysis`` derives from it."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks.analysis import (
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
    is_plain,
    level_winners,
    load_rows,
    photo_ratios,
    plain_variant,
    served_label,
    server_metrics,
    speedups,
    where_torchserve_loses,
)
from benchmarks.plots import PHOTO_PLOT, PLOTS, VIDEO_PLOTS
from benchmarks.serverstats import SATURATED_PERCENT

PLAIN_TEXT = {
    "naive": ("The naive plain server is `benchmarks/plain_server.py` as most people would first run it: FastAPI under "
              "one uvicorn process, the eager PyTorch model with torch's default threads (every core), the same face "
              "preprocessing, one image per request. It ran after TorchServe had stopped."),
    "tuned": ("The tuned plain peer is the same app as a good engineer would run it: `uvicorn --workers <usable cores>`, "
              "each process serving the artifact of the served archive (what `make serve` serves) with one intra-op "
              "thread, like one TorchServe worker; the same preprocessing, one image per request. It ran after "
              "TorchServe had stopped."),
}


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(values: list) -> str:
    """The last value over the first, as ``1.23x``; "–" when either is missing."""
    first, last = values[0], values[-1]
    return f"{last / first:.2f}x" if first and last else "–"


def stage_table(summaries: list[dict], labels: list[str]) -> str:
    """Preprocessing per stage (mean ms per image, one thread), each image set and decode path of
    each run side by side: the before/after of a change to decode, detection or crop."""
    index: dict[tuple, list] = {}
    for i, s in enumerate(summaries):
        pre = s.get("preprocess") or {}
        # runs before the image sets were measured have one set, the examples through decode_image
        sets = pre.get("sets") or ({"examples": {"paths": {"decode_image": pre["stages_ms"]}}} if "stages_ms" in pre else {})
        for name, found in sets.items():
            for path, stages in found.get("paths", {}).items():
                for stage, ms in stages.items():
                    index.setdefault((name, path, stage), [None] * len(summaries))[i] = ms.get("mean")
    order = {"decode": 0, "detect": 1, "crop": 2, "total": 3}
    rows = [[name, path, stage, *(fmt(v) for v in means), ratio(means)]
            for (name, path, stage), means in sorted(index.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9)))]
    return table(["set", "decode path", "stage", *(f"ms {l}" for l in labels), f"{labels[-1]} / {labels[0]}"], rows)


def generator_cell(row: dict) -> str:
    g = generators(row)
    return "/".join(fmt(cpu, 0) for cpu in g["cpu_percent"]) + (f" ({len(g['saturated'])} saturated)" if g["saturated"] else "")


def _server_keys(rows: list[dict]) -> list[str]:
    """Server-side columns worth a table: the frontend split first, then the handler's timings."""
    keys = sorted({k for r in rows for k in server_metrics(r)})
    first = [k for k in ("queue_ms", "total_ms") if k in keys]
    timings = [k for k in keys if k not in first and ("Time" in k or k.endswith("_ms"))]
    sizes = [k for k in keys if "Batch" in k or k.endswith("_mean")]
    errors = [k for k in keys if "Error" in k or k.startswith("Requests4") or k.startswith("Requests5")]
    return first + timings + sizes + errors


def machine_section(summary: dict) -> str:
    m = summary.get("machine", {})
    gpus = m.get("gpus") or []
    gpu = "; ".join(f"{g['name']} ({g['memory_mib'] / 1024:.0f} GiB, driver {g['driver']})" for g in gpus) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    rows = [
        ["device measured", summary.get("device", "?")],
        ["CPU", f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} logical cores"],
        ["memory", f"{m.get('memory_gib', '?')} GiB"],
        ["GPU", gpu],
        ["OS", m.get("os", "?")],
        ["load average at start", ", ".join(str(v) for v in m.get("load_average_at_start") or []) or "–"],
        ["versions", versions],
    ]
    return table(["", ""], rows)


def headline(summary: dict) -> list[str]:
    lines = []
    best = best_model(summary)
    if best:
        lines.append(f"- Model only: best {best['images_per_s']:,.1f} images/s ({best['backend']} {best['precision']}, "
                     f"batch {best['batch']}); fastest batch-1 p50 "
                     f"{fastest_batch1(summary)['latency_ms']['p50']:.2f} ms ({fastest_batch1(summary)['backend']}).")
    pre = summary.get("preprocess") or {}
    if pre.get("stages_ms"):
        before = ((summary.get("before") or {}).get("preprocess") or {}).get("stages_ms")
        was = (f" (before: {before['total']['mean']:.1f} ms in `{summary['before'].get('label', 'before')}`; stage table "
               "under Preprocessing)") if before else ""
        lines.append(f"- Preprocessing (decode + face detection + crop): {pre['stages_ms']['total']['mean']:.1f} ms per image, "
                     f"{pre['images_per_s_one_core']:.1f} images/s on one core{was}.")
    top = best_load(summary)
    if top:
        lines.append(f"- End to end: best {top['rps']:.1f} requests/s ({config_label(top)}, {top['users']} users, "
                     f"p99 {top['latency_ms'].get('p99', float('nan')):.0f} ms, {top['failures']} failures).")
    lines += winner_lines(summary)
    others = [r["host"]["other_cpu_percent"] for r in load_rows(summary) if "other_cpu_percent" in r.get("host", {})]
    if others and sum(others) / len(others) >= 20:
        lines.append(f"- The host was shared: processes other than TorchServe and Locust used {sum(others) / len(others):.0f} % "
                     "CPU on average during the load phase (100 % = one core), so every number here is lower than this "
                     "machine gives when quiet.")
    for variant in PLAIN_VARIANTS:
        plain = against_plain(summary, variant)
        if not plain:
            continue
        top = max(plain, key=lambda c: c["users"])
        peer = "the tuned plain peer" if variant == "tuned" else "the naive plain server"
        lines.append(f"- Against {peer} ({top['plain_config']}; same model, preprocessing and images) in the same run, "
                     f"at {top['users']} users: **{top['rps_ratio']:.2f}x** requests/s ({top['config']}: {top['rps']:.1f} vs "
                     f"{top['plain_rps']:.1f}), p99 {fmt(top['p99_ms'], 0)} vs {fmt(top['plain_p99_ms'], 0)} ms.")
    losses = where_torchserve_loses(summary)
    if losses:
        lines.append("- Where TorchServe loses: " + "; ".join(
            f"{c['users']} user{'s' if c['users'] != 1 else ''} against the {c['variant']} plain server "
            f"({c['rps']:.1f} vs {c['plain_rps']:.1f} requests/s, p99 {fmt(c['p99_ms'], 0)} vs {fmt(c['plain_p99_ms'], 0)} ms)"
            for c in losses) + ".")
    limit = box_limit(summary)
    if limit:
        lines.append(f"- The box's limit for this model: {limit['core_ms']:.1f} core-ms per request (preprocessing "
                     f"{limit['preprocess_ms']:.1f} + model {limit['model_ms']:.1f}) x {limit['cores']} cores = "
                     f"{limit['limit_rps']:.0f} requests/s; the best configuration reached **{100 * limit['fraction']:.0f} %** "
                     f"({limit['best_rps']:.1f} requests/s).")
    ratios = photo_ratios(summary)
    for name, r in (ratios or {}).get("sets", {}).items():
        lines.append(f"- Full-size photos ({name}) against 256 px faces, same server, same run: p50 at {ratios['low_users']} "
                     f"user **{r['p50_ratio']:.2f}x** ({r['p50_ms']:.0f} vs {r['p50_256px_ms']:.0f} ms; target <= 2x), "
                     f"requests/s at {ratios['high_users']} users {r['rps_ratio']:.2f}x ({r['rps']:.1f} vs {r['rps_256px']:.1f}).")
    ups = [s for s in speedups(summary) if s["rps_ratio"]]
    if ups:
        best_up = max(ups, key=lambda s: s["rps_ratio"])
        lines.append(f"- Against the naive baseline (eager, batch 1, one image per request) in the same run: up to "
                     f"{best_up['rps_ratio']:.2f}x requests/s ({best_up['config']} at {best_up['users']} users).")
    return lines


def winner_lines(summary: dict) -> list[str]:
    """The headline's winner at each user level: the run's best TorchServe configuration against the
    best plain server at that level (``analysis.level_winners``)."""
    levels = level_winners(summary)
    if not levels:
        return []
    which = "the served configuration, what `make serve` serves" if served_label(summary) else "TorchServe's best configuration"
    lines = [f"- Winner at each load level, same run: {which} ({levels[0]['config']}) against "
             "the best plain server at that level (naive or tuned); ratio = TorchServe / plain requests/s:"]
    for c in levels:
        plain = f"the {c['plain_variant']} plain server"
        winner = "TorchServe" if c["winner"] == "torchserve" else plain
        lines.append(f"  - {c['users']} user{'s' if c['users'] != 1 else ''}: **{winner}** wins; TorchServe answers "
                     f"**{c['rps_ratio']:.2f}x** the requests/s of {plain} ({c['rps']:.1f} vs {c['plain_rps']:.1f}), "
                     f"p99 {fmt(c['p99_ms'], 0)} vs {fmt(c['plain_p99_ms'], 0)} ms.")
    return lines


def bounds_section(summary: dict) -> list[str]:
    """Where the time goes, from measured numbers only."""
    lines = []
    pre = summary.get("preprocess") or {}
    model = summary.get("model") or {}
    top = best_load(summary)
    if pre.get("stages_ms"):
        stages = pre["stages_ms"]
        lines.append(f"- Preprocessing costs {stages['total']['mean']:.1f} ms per image (decode {stages['decode']['mean']:.1f}, "
                     f"detection {stages['detect']['mean']:.1f}, crop {stages['crop']['mean']:.1f}); on its own it caps one "
                     f"worker core at {pre['images_per_s_one_core']:.0f} images/s.")
    best = best_model(summary)
    if best:
        lines.append(f"- The model alone reaches {best['images_per_s']:,.0f} images/s ({best['backend']}, batch {best['batch']}), "
                     f"{100 * (best.get('peak_fraction') or 0):.0f} % of the measured {best['precision']} matmul peak "
                     f"({model.get('flops_per_image', 0) / 1e9:.2f} GFLOP per image).")
    if top:
        server = server_metrics(top)
        parts = [f"{top['rps']:.1f} requests/s at {top['users']} users ({config_label(top)})"]
        if "total_ms" in server:
            parts.append(f"server time {server['total_ms']:.1f} ms per request, of which {server.get('queue_ms', 0):.1f} ms queueing")
        host = top.get("host", {})
        if host:
            parts.append(f"workers {host.get('workers_cpu_percent', 0):.0f} % CPU, frontend {host.get('frontend_cpu_percent', 0):.0f} %, "
                         f"{generators(top)['count']} load generator(s) {generator_cell(top)} %, other processes {host.get('other_cpu_percent', 0):.0f} % "
                         f"(100 % = one core)")
        lines.append("- End to end: " + "; ".join(parts) + ".")
        stages = {k: server.get(f"Deepfake{k}Time") for k in ("Preprocess", "Inference", "Postprocess")}
        handler_ms = server.get("DeepfakeHandlerTime") or server.get("HandlerTime")
        if handler_ms and all(v is not None for v in stages.values()):
            batch = server.get("DeepfakeBatchSize")
            lines.append(
                f"- Inside the handler at that level (per batch{f' of {batch:.1f} requests on average' if batch else ''}): "
                f"preprocessing {stages['Preprocess']:.1f} ms, inference {stages['Inference']:.1f} ms, postprocessing "
                f"{stages['Postprocess']:.1f} ms of {handler_ms:.1f} ms; preprocessing is "
                f"{100 * stages['Preprocess'] / handler_ms:.0f} % of the handler's time.")
        crowded = [r for r in load_rows(summary) if generators(r)["saturated"]]
        if crowded:
            lines.append(f"- Saturated load generator (>= {SATURATED_PERCENT:.0f} % of its one core) at: "
                         + "; ".join(f"{config_label(r)} {r['users']} users ({generator_cell(r)})" for r in crowded)
                         + ": those rates are lower bounds of what the server can do; add generators (`--processes N`).")
        for gpu in top.get("gpu") or []:
            lines.append(f"- GPU {gpu['index']} was {gpu['util_percent']:.0f} % busy at that level ({gpu['memory_mib']:,.0f} MiB "
                         "used)" + ("; well below full, so the GPU is not what bounds it." if gpu["util_percent"] < 70 else "."))
        if handler_ms and "total_ms" in server:
            overhead = server["total_ms"] - server.get("queue_ms", 0) - handler_ms
            lines.append(f"- Frontend, worker IPC and batch assembly add about {max(0.0, overhead):.1f} ms per request "
                         "(server time minus queueing minus handler time).")
        if best:
            lines.append(f"- End to end reaches {100 * top['rps'] / best['images_per_s']:.0f} % of the model-only best "
                         f"({top['rps']:.1f} requests/s vs {best['images_per_s']:,.1f} images/s); the rest goes to "
                         "preprocessing, queueing, HTTP and Python in the frontend and worker.")
    return lines


def targets_section(summary: dict) -> list[str]:
    if not str(summary.get("device", "")).startswith("cuda"):
        return ["The H100 targets of issue #5 (≥ 20,000 images/s at batch 256, < 1 ms at batch 1, ≥ 2,000 requests/s "
                "with p99 < 50 ms at 64 users) apply to a GPU run; this run was on the CPU."]
    rows = []
    b256 = best_model(summary, 256)
    b1 = fastest_batch1(summary)
    e64 = best_load(summary, 64)
    checks = [
        ("model images/s, batch 256", b256 and b256["images_per_s"], GPU_TARGETS["model_images_per_s_batch256"], True),
        ("model p50 ms, batch 1", b1 and b1["latency_ms"]["p50"], GPU_TARGETS["model_latency_ms_batch1"], False),
        ("end-to-end requests/s, 64 users", e64 and e64["rps"], GPU_TARGETS["e2e_rps_64_users"], True),
        ("end-to-end p99 ms, 64 users", e64 and e64["latency_ms"].get("p99"), GPU_TARGETS["e2e_p99_ms_64_users"], False),
    ]
    for name, value, target, higher in checks:
        if value is None or value is False:
            rows.append([name, "not measured", fmt(float(target)), "–"])
            continue
        met = value >= target if higher else value < target
        rows.append([name, fmt(float(value), 2), fmt(float(target)), "met" if met else f"{value / target:.2f}x of target"])
    return [table(["target", "measured", "aim", "distance"], rows)]


def render_markdown(summary: dict, plots: dict[str, bool]) -> str:
    md = [f"# Benchmark report: {summary.get('profile', {}).get('name', '?')} profile on {summary.get('device', '?')}", ""]
    md += [f"Created {summary.get('created', '?')} with:", "", "```", summary.get("command", "?"), "```", ""]
    for note in summary.get("notes", []):
        md += [f"> {note}", ""]
    md += ["## Machine", "", machine_section(summary), ""]
    md += ["## Headline", ""] + (headline(summary) or ["Nothing was measured."]) + [""]
    md += ["## What bounds throughput", ""] + (bounds_section(summary) or ["–"]) + [""]
    md += ["## GPU targets", ""] + targets_section(summary) + [""]

    model = summary.get("model") or {}
    if model.get("results"):
        md += ["## Model only (no HTTP)", "",
               f"Device {model['device']}, torch threads: {model['threads']}, input {model['input_size']}x{model['input_size']}, "
               f"{model['flops_per_image'] / 1e9:.2f} GFLOP per image (torch.utils.flop_counter: convolutions and matmuls). "
               "Measured peak (best large matmul): " + ", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in model["peak_flops"].items())
               + ". Every timed call is followed by a device synchronisation; warm-up calls are not counted.", ""]
        md.append(table(
            ["backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "TFLOP/s", "% of peak", "runtime"],
            [[r["backend"], r["precision"], r["batch"], r["latency_ms"]["p50"], r["latency_ms"]["p90"], r["latency_ms"]["p99"],
              r["images_per_s"], f"{r['tflops']:.3f}", None if r["peak_fraction"] is None else 100 * r["peak_fraction"],
              r.get("note") or "–"]
             for r in model["results"]]))
        md.append("")
        if plots.get("model"):
            md += [f"![model throughput]({PLOTS['model']})", ""]
    pre = summary.get("preprocess") or {}
    if pre.get("stages_ms"):
        md += ["## Preprocessing per image", "",
               f"{pre['images']} images x {pre['repeats']} passes, mean {pre['mean_megapixels']:.2f} MP, "
               f"{pre['faces_per_image']:.2f} faces per image, one image at a time on one thread.", ""]
        md.append(table(["stage", "mean ms", "p50 ms", "p90 ms", "p99 ms"],
                        [[s, v["mean"], v["p50"], v["p90"], v["p99"]] for s, v in pre["stages_ms"].items()]))
        md.append("")
        md += preprocess_sets_section(pre)
        md += before_after_section(summary)
        if plots.get("preprocess"):
            md += [f"![preprocessing]({PLOTS['preprocess']})", ""]
    elif pre.get("skipped"):
        md += ["## Preprocessing per image", "", f"Skipped: {pre['skipped']}", ""]

    md += load_section(summary, plots)
    md += limit_section(summary)
    md += photo_section(summary, plots)
    md += video_section(summary, plots)
    skipped = [*(model.get("skipped") or []), *((summary.get("load") or {}).get("skipped") or [])]
    if skipped:
        md += ["## Not measured", ""]
        md += [f"- {s.get('backend', '?')} {s.get('precision', s.get('setting', ''))}"
               + (f" batch {s['batch']}" if "batch" in s else "") + (f" {s['users']} users" if "users" in s else "")
               + f": {s['reason']}" for s in skipped]
        md.append("")
    files = ["`summary.json` (everything above, machine-readable)", *(f"`{c}`" for c in summary.get("_csvs", []))]
    md += ["## Files", "", ", ".join(files) + (", and the plots." if any(plots.values()) else "."), ""]
    return "\n".join(md)


def load_section(summary: dict, plots: dict[str, bool]) -> list[str]:
    """TorchServe and the plain servers end to end: tables, ratios, server split, host resources, plots."""
    md: list[str] = []
    rows = load_rows(summary)
    if rows:
        load = summary["load"]
        st = load.get("settings", {})
        md += ["## End to end through TorchServe and the plain server (Locust)", "",
               f"{load['images']} images from `{load['image_folder']}` posted round-robin as raw bytes, one per request, by "
               "closed-loop Locust users on loopback; `NwxMt` = N TorchServe workers, each with M intra-op threads "
               "(torch/onnxruntime and the face detector). Each level: "
               f"{st.get('warmup_s')} s warm-up, then {st.get('window_s')} s windows until {st.get('min_windows')} consecutive "
               f"windows agree within {100 * st.get('tolerance', 0):.0f} % on requests/s (at most {st.get('max_windows')}); "
               "latency percentiles over the requests of those windows. Baseline: "
               f"{load['baseline']['backend']}, batchSize {load['baseline']['batch_size']}, maxBatchDelay "
               f"{load['baseline']['max_batch_delay']} ms.", ""]
        md.append(table(
            ["config", "users", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "failures", "windows", "stable"],
            [[config_label(r) + (" *baseline*" if r.get("baseline") else ""), r["users"], r["rps"],
              *(r["latency_ms"].get(p) for p in PERCENTILES), r["failures"], r["windows"], "yes" if r["stable"] else "no"]
             for r in rows]))
        md.append("")
        ups = speedups(summary)
        if ups:
            md += ["### Speed-up over the naive baseline (same run, same users)", ""]
            md.append(table(["config", "users", "req/s", "baseline req/s", "req/s ratio", "p99 ms", "baseline p99 ms", "p99 ratio"],
                            [[u["config"], u["users"], u["rps"], u["baseline_rps"], u["rps_ratio"] and f"{u['rps_ratio']:.2f}x",
                              u["p99_ms"], u["baseline_p99_ms"], u["p99_ratio"] and f"{u['p99_ratio']:.2f}x"] for u in ups]))
            md += ["", "p99 ratio = baseline p99 / config p99 (above 1: the config is faster).", ""]
        for variant in PLAIN_VARIANTS:
            plain = against_plain(summary, variant)
            if not plain:
                continue
            md += [f"### TorchServe against the {variant} plain server (same run, same model, same users)", "",
                   PLAIN_TEXT[variant], ""]
            md.append(table(["users", "best TorchServe config", "req/s", "plain req/s", "req/s ratio", "p99 ms", "plain p99 ms", "p99 ratio"],
                            [[u["users"], u["config"], u["rps"], u["plain_rps"], f"{u['rps_ratio']:.2f}x", u["p99_ms"],
                              u["plain_p99_ms"], u["p99_ratio"] and f"{u['p99_ratio']:.2f}x"] for u in plain]))
            md += ["", "The throughput plot below draws the plain servers as black lines (dotted: naive, dash-dot: tuned).", ""]
        keys = _server_keys(rows)
        if keys:
            md += ["### Server-side split (TorchServe metrics, mean per window)", "",
                   "`queue_ms` and `total_ms` are exact per-request means from the frontend's counters; the handler's times "
                   "are per batch (gauges sampled through the window).", ""]
            md.append(table(["config", "users", *keys],
                            [[config_label(r), r["users"], *(server_metrics(r).get(k) for k in keys)]
                             for r in rows if not is_plain(r)]))
            md.append("")
        md += ["### Host resources (mean CPU %, 100 = one core; peak RSS MiB)", "",
               "For the plain server, \"frontend\" is its one uvicorn process (it has no workers).", ""]
        md.append(table(
            ["config", "users", "workers CPU", "frontend CPU", "Locust processes", "Locust CPU each", "other CPU", "workers RSS",
             "frontend RSS", "GPU util %", "GPU MiB"],
            [[config_label(r), r["users"], *(r.get("host", {}).get(k) for k in ("workers_cpu_percent", "frontend_cpu_percent")),
              generators(r)["count"], generator_cell(r),
              *(r.get("host", {}).get(k) for k in ("other_cpu_percent", "workers_rss_mib", "frontend_rss_mib")),
              "/".join(fmt(g["util_percent"], 0) for g in r.get("gpu", [])) or "–",
              "/".join(fmt(g["memory_mib"], 0) for g in r.get("gpu", [])) or "–"] for r in rows]))
        md.append("")
        for key in ("throughput", "latency"):
            if plots.get(key):
                md += [f"![{key}]({PLOTS[key]})", ""]
        failed = [r for r in rows if r["failures"]]
        for r in failed:
            md.append(f"- failures at {config_label(r)}, {r['users']} users: " + "; ".join(r.get("failure_examples", [])))
        if failed:
            md.append("")

    return md


def preprocess_sets_section(pre: dict) -> list[str]:
    """Each image set and decode path stage by stage, the detector batched, other detector sizes."""
    md = []
    sets = pre.get("sets") or {}
    rows = [[name, path, f"{data['mean_megapixels']:.2f}", *(v["mean"] for v in stages.values()), stages["total"]["p99"]]
            for name, data in sets.items() for path, stages in data["paths"].items()]
    if rows:
        md += ["Every set and decode path (mean ms per image, one thread; `crop` includes the tensor and, for "
               "`decode_photo`, any finer decode the crop needed):", ""]
        md.append(table(["set", "decode path", "MP", "decode", "detect", "crop", "total", "total p99"], rows))
        md.append("")
    batches = (sets.get("256px") or {}).get("detector_batches")
    if batches:
        md += [f"Face detection, 256 px images: one image per call {batches['single_ms']['p50']:.2f} ms per image, "
               f"{batches['batch']} images per call {batches['batched_ms']['p50']:.2f} ms per image (medians of "
               "interleaved passes).", ""]
    for side, stats in (pre.get("detector_sides_ms") or {}).items():
        md += [f"Detector alone at max_side {side} (weights must be trained with it): {stats['p50']:.2f} ms per image "
               f"(p50), against the served max_side {pre.get('max_side')}.", ""]
    return md


def before_after_section(summary: dict) -> list[str]:
    """The stage table of this run beside an earlier one (``benchmarks.run --before``)."""
    before = summary.get("before") or {}
    if not before.get("preprocess"):
        return []
    label = before.get("label", "before")
    return [f"Before and after, mean ms per image on one thread: `{label}` (created {before.get('created', '?')}) "
            "against this run.", "", stage_table([before, summary], [label, "this run"]), ""]


def limit_section(summary: dict) -> list[str]:
    limit = box_limit(summary)
    if not limit:
        return []
    return ["## The box's end-to-end limit", "",
            f"From the stage timings of this run: preprocessing {limit['preprocess_ms']:.2f} ms per image on one thread, "
            f"the {limit['backend']} model {limit['model_ms']:.2f} ms per image at batch {limit['model_batch']} on one "
            f"thread: **{limit['core_ms']:.2f} core-ms per request**, so {limit['cores']} cores can answer at most "
            f"**{limit['limit_rps']:.0f} requests/s**. The best configuration ({limit['config']}, {limit['users']} users) "
            f"reached {limit['best_rps']:.1f}: **{100 * limit['fraction']:.0f} %** of it. TorchServe's frontend and "
            f"Locust ran on the same cores, {limit['frontend_and_client_ms']:.2f} core-ms per request as measured; "
            f"counting them the limit is {limit['limit_with_frontend_rps']:.0f} requests/s "
            f"({100 * limit['fraction_with_frontend']:.0f} % reached).", ""]


def photo_section(summary: dict, plots: dict[str, bool] | None = None) -> list[str]:
    photos = summary.get("photos") or {}
    if not photos.get("results"):
        return []
    s = photos["settings"]
    md = ["## Full-size photos (benchmarks/photo_bench.py)", "",
          f"Sets made by the harness from the examples: 256 px faces, and the same faces upscaled into 12 MP phone JPEGs "
          f"(faces 500-1500 px across); {photos['backend']}, batchSize {s['batch_size']}, maxBatchDelay {s['max_batch_delay']} "
          f"ms, {s['workers']} workers x {s['threads']} thread. Closed-loop client threads; every set measured "
          f"{s['rounds']} times per user level in turn ({s['warmup_s']:g} s warm-up, {s['seconds']:g} s window): rates "
          "are means, latencies medians over the rounds.", ""]
    md.append(table(["set", "users", "req/s", "p50 ms", "p90 ms", "p99 ms", "failures"],
                    [[r["set"], r["users"], r["per_s"], r["latency_ms"].get("p50"), r["latency_ms"].get("p90"),
                      r["latency_ms"].get("p99"), r["failures"]] for r in photos["results"]]))
    md.append("")
    ratios = photo_ratios(summary)
    for name, r in (ratios or {}).get("sets", {}).items():
        md += [f"- {name}: p50 at {ratios['low_users']} user {r['p50_ratio']:.2f}x the 256 px p50 (target <= 2x); "
               f"requests/s at {ratios['high_users']} users {r['rps_ratio']:.2f}x.", ""]
    for name, why in (photos.get("skipped") or {}).items():
        md += [f"- {name} not measured: {why}.", ""]
    v = photos.get("verdicts")
    if v:
        md += ["Verdicts, full decode against the reduced decode, each 12 MP photo (the served weights): "
               f"max |ΔP(fake)| {v['max_abs_dp']:.4f} over all, {fmt(v['max_abs_dp_same_box'], 4)} over the "
               f"{v['same_box']} of {len(v['photos'])} photos where the detector returned the same box; boxes moved by at "
               f"most {100 * v['max_box_moved_share']:.2f} % of the image size. The full decode's own change when the "
               f"photo shifts by one pixel of the detector's input ({v['photos'][0]['shift_px']} px): max |ΔP| "
               f"{v['max_abs_dp_full_shifted']:.4f}.", ""]
    if (plots or {}).get("photos"):
        md += [f"![full-size photos]({PHOTO_PLOT})", ""]
    return md


def video_section(summary: dict, plots: dict[str, bool] | None = None) -> list[str]:
    """Videos/s and frames/s end to end, and image latency with and without videos beside them."""
    video = summary.get("video") or {}
    if not video.get("results"):
        return []
    s, clip = video["settings"], video.get("clip") or {}
    md = ["## Video (benchmarks/video_bench.py)", "",
          f"A {video['clip_bytes'] / 1e6:.2f} MB H.264 MP4 of the example faces, {s['clip_seconds']:g} s at {s['fps']} fps "
          f"({(clip.get('video') or {}).get('size')} px), {clip.get('frames_sampled')} frames sampled per video; "
          f"{video['backend']}, batchSize {s['batch_size']}, maxBatchDelay {s['max_batch_delay']} ms, {s['workers']} workers x "
          f"{s['threads']} thread"
          + (f"; videos to a second registration of the archive, batch size 1, {s.get('video_workers')} worker(s)"
             if s.get("separate_video_model") else "")
          + f". Closed-loop client threads, {s['warmup_s']:g} s warm-up, then a {s['seconds']:g} s window.", ""]
    rows = []
    for r in video["results"]:
        v, i = r.get("video") or {}, r.get("image") or {}
        rows.append([r["video_users"], r["image_users"], v.get("per_s"), v.get("frames_per_s"), (v.get("latency_ms") or {}).get("p50"),
                     (v.get("latency_ms") or {}).get("p99"), i.get("per_s"), (i.get("latency_ms") or {}).get("p50"),
                     (i.get("latency_ms") or {}).get("p99"), v.get("failures", 0) + i.get("failures", 0)])
    md.append(table(["video users", "image users", "videos/s", "frames/s", "video p50 ms", "video p99 ms",
                     "images/s", "image p50 ms", "image p99 ms", "failures"], rows))
    md.append("")
    for key, alt in (("video_rates", "videos/s and frames/s vs video users"), ("video_image_latency", "image latency beside videos")):
        if (plots or {}).get(key):
            md += [f"![{alt}]({VIDEO_PLOTS[key]})", ""]
    return md


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_csvs(summary: dict, out: Path) -> list[str]:
    written = []
    model = [
        {"backend": r["backend"], "precision": r["precision"], "batch": r["batch"], "iters": r["iters"],
         **{f"latency_{k}_ms": v for k, v in r["latency_ms"].items()},
         "images_per_s": r["images_per_s"], "tflops": r["tflops"], "peak_fraction": r["peak_fraction"]}
        for r in (summary.get("model") or {}).get("results", [])
    ]
    load = [
        {"server": "plain" if is_plain(r) else "torchserve", "variant": plain_variant(r) if is_plain(r) else "",
         "backend": r["backend"], "batch_size": r["batch_size"],
         "max_batch_delay": r["max_batch_delay"], "workers": r["workers"], "threads": r.get("threads", ""),
         "baseline": r.get("baseline", False), "users": r["users"], "rps": r["rps"],
         **{f"latency_{k}_ms": v for k, v in r["latency_ms"].items()},
         "requests": r["requests"], "failures": r["failures"], "windows": r["windows"], "stable": r["stable"],
         **{f"server_{k}": v for k, v in server_metrics(r).items()},
         **{f"host_{k}": v for k, v in r.get("host", {}).items()},
         **{f"gpu{g['index']}_{k}": v for g in r.get("gpu", []) for k, v in g.items() if k != "index"}}
        for r in load_rows(summary)
    ]
    pre = (summary.get("preprocess") or {}).get("stages_ms", {})
    preprocess = [{"stage": stage, **{f"{k}_ms": v for k, v in stats.items()}} for stage, stats in pre.items()]
    for name, rows in (("model.csv", model), ("load.csv", load), ("preprocess.csv", preprocess),
                       ("speedups.csv", speedups(summary))):
        if rows:
            _write_csv(out / name, rows)
            written.append(name)
    return written
