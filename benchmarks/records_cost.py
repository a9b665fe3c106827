"""What the prediction records cost in throughput and latency: the same archive served twice by one
TorchServe, once with ``records_url: off`` and once recording (journalled into the spool before each
answer, then delivered) to the server's SQLite store (or a PostgreSQL URL), measured in alternating
windows so that drift on a shared host hits both alike; and, in-process, the CPU per recorded request
and the wall time the journal adds to each batch.

    python -m benchmarks.records_cost --users 8 --window 20 --rounds 3
    python -m benchmarks.records_cost --backend onnx --artifact build/export/model.onnx --workers 2

Writes ``benchmarks/reports/<time>-records/`` (summary.json, report.md and its plot); a recorded run's
report is rebuilt from its summary.json alone, measuring nothing:

    python -m benchmarks.records_cost --render benchmarks/reports/<time>-records
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.plots import plt, save_figure  # importing benchmarks.plots selects the Agg backend
from benchmarks.stats import latency_percentiles
from export.archive import ServingConfig, build_archive, repack
from handler import records, records_query, records_store
from handler.server import ROOT, TorchServe

MODES = ("off", "on")
PLOT = "throughput_by_round.png"


def measure(server: TorchServe, model: str, images: list[bytes], users: int, seconds: float) -> dict:
    """``users`` closed-loop clients for ``seconds``: requests/s, latency percentiles, failures."""
    latencies, failures, lock = [], [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def user(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            started = time.perf_counter()
            ok = server.predict(model, images[i % len(images)], timeout=60, headers={"Content-Type": "image/jpeg"}).status_code == 200
            with lock:
                latencies.append((time.perf_counter() - started) * 1000) if ok else None
                failures[0] += 0 if ok else 1
            i += 1

    started = time.monotonic()
    threads = [threading.Thread(target=user, args=(n,)) for n in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ms = np.array(latencies or [np.nan])
    return {"requests": len(latencies), "failures": failures[0], "seconds": round(elapsed, 2),
            "rps": round(len(latencies) / elapsed, 2), **latency_percentiles(ms, (50, 99), digits=1, suffix="_ms")}  # fmt: skip


def recording_cpu(url: str, spool_dir: Path, rows: int = 8_000, batch: int = 4, batches_per_s: float = 100) -> dict:
    """What the records take per request, in this process: the CPU of building and journalling each
    row (the worker's path before its answers leave) and of the writer thread's inserts, with nothing
    else running in the process; and the wall time of each batch's journal call, the latency the
    journal adds to that batch's answers. Batches come ``batches_per_s`` a second (100 x 4 rows: ten
    times the rate a 2-core host serves), so the writer delivers alongside as it does in a worker.
    Between them, the same rows handed to an in-memory list (the recorder before the journal) are
    timed too, so the host's own latency tail shows beside the journal's in one run."""
    answer = {"label": "fake", "fake_probability": 0.8, "threshold": 0.55, "image_size": [256, 256], "faces": [{}]}
    model = {"name": "bench", "version": "1.0", "backend": "onnx", "precision": "fp32"}
    recorder = records.Recorder(url, spool_dir)
    recorder.record([records.prediction_row(answer, 200, model)])  # schema and spool created outside the timing
    recorder.flush()
    make = lambda start: [records.prediction_row(answer, 200, model, f"r{i}", "0" * 64, 1000, 10.0) for i in range(start, start + batch)]  # noqa: E731
    hot, memory_cpu, walls, memory_walls, in_memory, lock = 0.0, 0.0, [], [], [], threading.Lock()
    cpu, next_batch = time.process_time(), time.perf_counter()
    for start in range(0, rows, batch):
        time.sleep(max(0.0, next_batch - time.perf_counter()))
        t, wall = time.thread_time(), time.perf_counter()
        recorder.record(make(start))
        walls.append(time.perf_counter() - wall)
        hot += time.thread_time() - t
        time.sleep(max(0.0, next_batch + 0.5 / batches_per_s - time.perf_counter()))
        t, wall = time.thread_time(), time.perf_counter()
        with lock:
            in_memory.extend(make(start))
        memory_walls.append(time.perf_counter() - wall)
        memory_cpu += time.thread_time() - t
        next_batch += 1 / batches_per_s
    recorder.flush(300)
    total = time.process_time() - cpu - memory_cpu  # the in-memory hand-offs are not the records' cost
    counts = recorder.counts()
    recorder.close()
    percentiles = lambda seconds: latency_percentiles(np.array(seconds) * 1e6, digits=1)  # noqa: E731  (microseconds)
    return {"rows": rows, "hot_path_us_per_row": round(hot / rows * 1e6, 1), "total_cpu_us_per_row": round(total / rows * 1e6, 1),
            "written": counts["written"] - 1, "lost": counts["dropped_spool_full"] + counts["dropped_spool_error"],
            "batch": batch, "batches_per_s": batches_per_s, "journal_wall_us": percentiles(walls),
            "in_memory_wall_us": percentiles(memory_walls)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/default.safetensors")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--artifact", type=Path, help="the backend's artifact (not needed for eager)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batch-delay", type=int, default=10, help="ms")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--window", type=float, default=20, help="seconds per measured window")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before each window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per mode, alternating")
    parser.add_argument("--records-url", help="record here instead of the server's SQLite (e.g. postgresql://...)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports")
    parser.add_argument("--render", type=Path, metavar="DIR", help="only rebuild DIR's report.md and plot from its summary.json")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return
    args.argv = sys.argv[1:] if argv is None else argv  # for the report

    images = [p.read_bytes() for p in sorted((ROOT / "examples").glob("*/*.jpg"))]
    store = Path(tempfile.mkdtemp(prefix="records-bench-"))
    try:
        run(args, images, store)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def run(args, images: list[bytes], store: Path) -> None:
    serving = ServingConfig(batch_size=args.batch_size, max_batch_delay=args.batch_delay, min_workers=args.workers,
                            max_workers=args.workers, handler={"threads": 1})  # fmt: skip
    base = build_archive(args.weights, args.backend, args.artifact, export_path=store, model_name="records-base", serving=serving)
    names = {"off": "records-off", "on": "records-on"}
    repack(base, store / "records-off.mar", handler={"records_url": "off"})
    repack(base, store / "records-on.mar", handler={"records_url": args.records_url} if args.records_url else {})

    cpu = recording_cpu(args.records_url or f"sqlite:///{store / 'cpu.sqlite3'}", store / "cpu-spool")
    print(f"recording CPU per request: {cpu}", flush=True)

    results = {mode: [] for mode in MODES}
    server = TorchServe(store, {name: f"{name}.mar" for name in names.values()}, run_dir=store / "run")
    with server:
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                measure(server, names[mode], images, args.users, args.warmup)
                result = measure(server, names[mode], images, args.users, args.window)
                results[mode].append(result)
                print(f"round {round_ + 1} records {mode:3}: {result}", flush=True)
        written = records_query.count(records_store.open_engine(args.records_url or server.records_url), model="records-on")
        metrics = server.metrics()

    mean = {mode: float(np.mean([r["rps"] for r in results[mode]])) for mode in MODES}
    cost = 1 - mean["on"] / mean["off"]
    lost = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("DeepfakeRecordsDropped{"))
    summary = {
        "command": " ".join(["python -m benchmarks.records_cost", *args.argv]),
        "backend": args.backend, "workers": args.workers, "batch": [args.batch_size, args.batch_delay],
        "users": args.users, "window_s": args.window, "warmup_s": args.warmup, "rounds": args.rounds,
        "store": "postgresql" if args.records_url else "sqlite", "rps_mean": mean, "cost": round(cost, 4),
        "records_written": written, "records_lost": lost, "windows": results, "host": platform.node(),
        "recording_cpu": cpu, "cores": os.cpu_count(),
        # CPU the records add per request, against the CPU a request takes at the measured rate
        "cpu_share": round(cpu["total_cpu_us_per_row"] * 1e-6 * mean["off"] / os.cpu_count(), 5),
    }  # fmt: skip
    out = args.out / (time.strftime("%Y%m%d-%H%M") + "-records")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"cost {cost * 100:+.1f} % ({mean['off']:.1f} -> {mean['on']:.1f} req/s); report: {render(out)}")


def render(out: Path) -> Path:
    """``out``/report.md and its plot from ``out``/summary.json; returns the report's path."""
    summary = json.loads((out / "summary.json").read_text())
    results, mean, cpu, cost = summary["windows"], summary["rps_mean"], summary["recording_cpu"], summary["cost"]
    batch_size, batch_delay = summary["batch"]
    median_p50 = {mode: float(np.median([w["p50_ms"] for w in results[mode]])) for mode in MODES}
    lines = [
        "# Prediction records: throughput with records on vs off", "",
        f"`{summary['command']}`", "",
        f"One TorchServe, the same {summary['backend']} archive twice ({summary['workers']} workers x 1 thread, batch "
        f"{batch_size} within {batch_delay} ms): `records_url: off` against recording to "
        f"{summary['store']}. {summary['users']} closed-loop users, {summary['window_s']:.0f} s windows after "
        f"{summary['warmup_s']:.0f} s of warm-up, the modes alternating so that load from other work on the host falls on both.", "",
        "| round | off: req/s | on: req/s | off: p50 ms | on: p50 ms | off: p99 ms | on: p99 ms |", "|---|---|---|---|---|---|---|",
        *(f"| {i + 1} | {off['rps']} | {on['rps']} | {off['p50_ms']} | {on['p50_ms']} | {off['p99_ms']} | {on['p99_ms']} |"
          for i, (off, on) in enumerate(zip(results["off"], results["on"]))),
        "", f"Mean: **{mean['off']:.1f} req/s off, {mean['on']:.1f} on: cost {cost * 100:+.1f} %** (target < 5 %); "
        f"median of the windows' p50: {median_p50['off']:.1f} ms off, {median_p50['on']:.1f} ms on. "
        f"Records written by the recording model: {summary['records_written']}; counted lost: {summary['records_lost']:.0f}.", "",
        f"![requests/s per round, records off and on]({PLOT})", "",
        f"CPU per recorded request, measured in one process ({cpu['rows']} rows, batches of 4, {summary['store']}): "
        f"{cpu['hot_path_us_per_row']} µs on the worker's hot path (build the row and hand it over: queued in memory "
        "before the journal, journalled since), "
        f"{cpu['total_cpu_us_per_row']} µs in all with the writer thread's inserts. At {mean['off']:.1f} req/s on "
        f"{summary['cores']} cores that is **{summary['cpu_share'] * 100:.2f} %** of the CPU the requests take: the "
        "upper bound of what recording can cost in throughput when the CPU is the limit.",
        *([] if "journal_wall_us" not in cpu else ["", journal_sentence(cpu)]),
        *(f"\nNote: {note}" for note in summary.get("notes", [])),
    ]  # fmt: skip
    plot_rounds(summary, out / PLOT)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def journal_sentence(cpu: dict) -> str:
    """What the journal adds to a batch's latency, and beside it (when measured) the same rows handed
    to an in-memory list in the same loop: the host's own tail."""
    wall, memory = cpu["journal_wall_us"], cpu.get("in_memory_wall_us")
    text = (f"Journalling before the answer (each batch's rows committed to the local spool before its answers leave "
            f"the worker): the journal call took **p50 {wall['p50']} µs, p90 {wall['p90']} µs, p99 {wall['p99']} µs** per "
            f"batch of {cpu['batch']} rows ({cpu.get('batches_per_s', 'back-to-back')} batches/s, wall time, the writer "
            "delivering alongside): the latency it adds to that batch's answers.")
    if memory:
        text += (f" The same rows handed to an in-memory list instead (the recorder before the journal), timed between "
                 f"them in the same loop: p50 {memory['p50']} µs, p90 {memory['p90']} µs, p99 {memory['p99']} µs.")
    return text


def plot_rounds(summary: dict, path: Path) -> None:
    """Requests/s of each round, off and on side by side, with each mode's mean as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rounds = range(1, len(summary["windows"]["off"]) + 1)
    for k, (mode, color) in enumerate(zip(MODES, ("#4c72b0", "#dd8452"))):
        rps = [w["rps"] for w in summary["windows"][mode]]
        bars = ax.bar([r + (k - 0.5) * 0.4 for r in rounds], rps, 0.4, color=color, label=f"records {mode}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.axhline(summary["rps_mean"][mode], color=color, linestyle="--", linewidth=1, label=f"mean {mode}")
    ax.set_xticks(list(rounds), [str(r) for r in rounds])
    ax.set_xlabel("round (the order of the modes alternates each round)")
    ax.set_ylabel("requests/s")
    ax.set_title(f"Records off vs on ({summary['store']}, {summary['backend']}, {summary['users']} users): "
                 f"mean cost {summary['cost'] * 100:+.1f} %")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylim(0, 1.25 * max(w["rps"] for mode in MODES for w in summary["windows"][mode]))  # room for the legend
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
