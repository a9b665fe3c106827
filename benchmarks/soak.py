"""Soak benchmark: sustained Locust load against the served detector, watching for failures,
latency drift and memory growth of the TorchServe frontend and every worker.

    python -m benchmarks.soak                 # 10 min at 32 users (make soak)
    python -m benchmarks.soak --duration 60   # a short look

Attaches to the server `make serve` left running in --run-dir; otherwise starts one with the same
config.properties and archive (free ports, handler/server.py) and stops it afterwards. Writes
benchmarks/reports/soak-<UTC time>/: report.md, summary.json, timeline.csv, rss.csv, soak.png.

Memory growth compares the median RSS of the first and of the last --steady seconds of the measured
period (after --warmup), so one sample taken mid-batch does not decide it. Exit status 1 when a
target is missed: any failed request, a worker restart, or RSS growth >= --rss-growth-limit.
"""

# Locust patches the standard library for gevent; it must come before anything opens sockets.
import locust  # noqa: F401  isort: skip

import argparse
import contextlib
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import gevent
import numpy as np
import psutil
import requests
from locust.env import Environment

from benchmarks.stats import latency_percentiles
from runtime.artifacts import MODEL_NAME
from handler.tsclient import TorchServeClient, TorchServeError

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="measured seconds, after the warm-up")
    parser.add_argument("--warmup", type=float, default=60, help="seconds of load before measuring")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--spawn-rate", type=float, default=8, help="users started per second")
    parser.add_argument("--window", type=float, default=10, help="seconds per timeline point and RSS sample")
    parser.add_argument("--steady", type=float, default=60, help="seconds at each end whose median RSS is compared")
    parser.add_argument("--rss-growth-limit", type=float, default=0.10, help="target: growth below this fraction")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "build" / "serve", help="make serve's run folder")
    parser.add_argument("--images", type=Path, default=ROOT / "examples", help="folder of images to post")
    parser.add_argument("--config", type=Path, default=ROOT / "config.properties", help="for a server started here")
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "deepfake-detector.mar",
                        help="for a server started here")
    parser.add_argument("--timeout", type=float, default=120, help="client timeout per request, seconds")
    parser.add_argument("--out", type=Path, help="report folder (default benchmarks/reports/soak-<UTC time>)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the server

@dataclass
class Target:
    client: TorchServeClient
    model: str


@contextlib.contextmanager
def serve(args):
    """The server to soak: the one `make serve` left running in --run-dir, or a fresh one with the
    same config.properties and archive (free ports, so it never collides with another server)."""
    from handler.server import STATE_FILE, Ports, TorchServe

    if (args.run_dir / STATE_FILE).exists() and (running := TorchServe.attach(args.run_dir)).alive():
        print(f"soak: attaching to the server of {args.run_dir} at {running.inference_url}", flush=True)
        yield Target(running.client, args.model)
        return
    archive = args.archive.resolve()
    server = TorchServe(archive.parent, {args.model: archive.name}, ROOT / "build" / "soak-server", args.config,
                        Ports.free())
    print(f"soak: no server in {args.run_dir}; starting {archive.name} with {args.config} "
          f"(logs: {server.log_dir}) ...", flush=True)
    server.start(progress=True)
    try:
        yield Target(server.client, args.model)
    finally:
        server.stop()


# ----------------------------------------------------------------------------- measurements

class ProcessWatch:
    """RSS of the TorchServe frontend (JVM) and of each worker, found through the management API."""

    def __init__(self, target: Target):
        self.target = target

    def workers(self) -> dict[str, int]:
        """worker id -> pid"""
        return {str(wid): pid for wid, pid in self.target.client.worker_pids(self.target.model).items()}

    def sample(self) -> dict[str, dict]:
        """name -> {"pid", "rss_mb"}; the frontend is the workers' parent process."""
        found = {}
        for wid, pid in sorted(self.workers().items()):
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                found[f"worker-{wid}"] = {"pid": pid, "rss_mb": round(process.memory_info().rss / 2**20, 1)}
                parent = process.parent()
                if parent is not None and "frontend" not in found:
                    found["frontend"] = {"pid": parent.pid, "rss_mb": round(parent.memory_info().rss / 2**20, 1)}
        return found


class Timeline:
    """Every request's end time, latency and outcome, from Locust's request event."""

    def __init__(self):
        self.rows: list[tuple[float, float, bool]] = []
        self.errors: dict[str, int] = {}

    def on_request(self, response_time, exception, **_):
        self.rows.append((time.monotonic(), float(response_time), exception is not None))
        if exception is not None:
            key = str(exception)[:160]
            self.errors[key] = self.errors.get(key, 0) + 1

    def between(self, start: float, end: float = float("inf")) -> np.ndarray:
        """(end time, latency ms, failed) rows of the requests that ended in [start, end)."""
        rows = np.array(self.rows, dtype=np.float64).reshape(-1, 3)
        return rows[(rows[:, 0] >= start) & (rows[:, 0] < end)]

    def window(self, left: float, width: float, origin: float) -> dict:
        rows = self.between(left, left + width)
        ok = rows[rows[:, 2] == 0, 1]
        return {
            "t_s": round(left + width - origin, 1),
            "requests": int(len(rows)),
            "failures": int(rows[:, 2].sum()),
            "rps": round(len(rows) / width, 2),
            **flat_percentiles(ok),
        }


def flat_percentiles(ok_ms) -> dict:
    """``p50_ms`` and ``p99_ms`` of the answered requests, to 0.1 ms; None when none was answered."""
    return latency_percentiles(ok_ms, (50, 99), digits=1, suffix="_ms") or dict.fromkeys(("p50_ms", "p99_ms"))


def soak_user(target: Target, folder: Path, timeout: float) -> type:
    """The benchmark harness's Locust user, aimed at this server; scikit-image's astronaut when the
    folder has no images."""
    from benchmarks.locustfile import DetectorUser, load_images

    try:
        images = load_images(folder)
    except FileNotFoundError:
        from PIL import Image
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buffer, "JPEG", quality=90)
        images = [("astronaut.jpg", buffer.getvalue())]

    class SoakUser(DetectorUser):
        host = target.client.inference_url
        network_timeout = timeout

    SoakUser.configure(images, target.model, target.client.key("inference") or "")
    return SoakUser


# ----------------------------------------------------------------------------- run

def run(args, argv: list[str]) -> int:
    out = args.out or ROOT / "benchmarks" / "reports" / f"soak-{datetime.now(timezone.utc):%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)
    rss_rows: list[dict] = []
    timeline = Timeline()
    with serve(args) as target:
        watch = ProcessWatch(target)

        def sample(phase: str, t: float) -> None:
            try:
                found = watch.sample()
            except (requests.RequestException, TorchServeError) as exc:  # a dead server shows as failures; keep the run going
                print(f"soak: no RSS sample at {t:.0f} s: {exc}", flush=True)
                return
            for name, proc in found.items():
                rss_rows.append({"phase": phase, "t_s": round(t, 1), "process": name, **proc})

        user = soak_user(target, args.images, args.timeout)
        # stop_timeout lets the requests in flight at the end finish instead of counting as failures
        env = Environment(user_classes=[user], stop_timeout=args.timeout)
        env.events.request.add_listener(timeline.on_request)
        runner = env.create_local_runner()

        print(f"soak: {args.users} users, {args.warmup:.0f} s warm-up + {args.duration:.0f} s measured, "
              f"{len(user.images)} image(s) -> {out}", flush=True)
        load_start = time.monotonic()
        sample("before", -args.warmup)
        runner.start(args.users, spawn_rate=args.spawn_rate)
        gevent.sleep(args.warmup)
        start = time.monotonic()
        sample("run", 0.0)
        end = start + args.duration
        windows = []
        while (now := time.monotonic()) < end:
            gevent.sleep(min(args.window, end - now))
            t = time.monotonic() - start
            windows.append(timeline.window(time.monotonic() - args.window, args.window, start))
            sample("run", t)
            memory = ", ".join(f"{r['process']} {r['rss_mb']:.0f} MB" for r in rss_rows if r["t_s"] == round(t, 1))
            print(f"[{t:4.0f}/{args.duration:.0f} s] {windows[-1]['rps']:5.1f} req/s  p99 {windows[-1]['p99_ms']} ms  "
                  f"failures {int(timeline.between(start)[:, 2].sum())}  | {memory}", flush=True)
        runner.quit()  # waits for requests in flight (stop_timeout)
        warmup = timeline.between(load_start, start)

    summary = summarise(args, argv, timeline.between(start), end - start, warmup, timeline.errors, rss_rows)
    write_report(out, args, summary, windows, rss_rows)
    verdict = "PASS" if summary["passed"] else "FAIL (" + "; ".join(summary["missed"]) + ")"
    print(f"soak: {verdict}; report in {out}", flush=True)
    return 0 if summary["passed"] else 1


def rss_growth(args, rss_rows: list[dict]) -> list[dict]:
    """Per process: median RSS over the first and the last --steady seconds, and the pids seen."""
    measured = [r for r in rss_rows if r["phase"] == "run"]
    processes = []
    for name in sorted({r["process"] for r in measured}):
        rows = [r for r in measured if r["process"] == name]
        first = [r["rss_mb"] for r in rows if r["t_s"] <= args.steady]
        last = [r["rss_mb"] for r in rows if r["t_s"] >= args.duration - args.steady]
        start_mb = float(np.median(first)) if first else None
        end_mb = float(np.median(last)) if last else None
        processes.append({
            "process": name,
            "pids": sorted({r["pid"] for r in rows}),
            "rss_start_mb": start_mb and round(start_mb, 1),
            "rss_end_mb": end_mb and round(end_mb, 1),
            "rss_max_mb": max(r["rss_mb"] for r in rows),
            # a process missing at either end (it died) has no growth; that misses the target
            "growth": round(end_mb / start_mb - 1, 4) if start_mb and end_mb else None,
        })
    return processes


def summarise(args, argv, data: np.ndarray, seconds: float, warmup: np.ndarray, errors: dict, rss_rows) -> dict:
    ok = data[data[:, 2] == 0, 1]
    processes = rss_growth(args, rss_rows)
    failures, warmup_failures = int(data[:, 2].sum()), int(warmup[:, 2].sum())
    restarted = [p["process"] for p in processes if len(p["pids"]) > 1]
    unmeasured = [p["process"] for p in processes if p["growth"] is None]
    worst = max((p["growth"] for p in processes if p["growth"] is not None), default=None)
    missed = []
    if failures or warmup_failures:
        missed.append(f"{failures} failures, {warmup_failures} in warm-up")
    if restarted:
        missed.append(f"restarted: {', '.join(restarted)}")
    if unmeasured or not processes:
        missed.append(f"RSS not measured at both ends: {', '.join(unmeasured) or 'no process'}")
    if worst is not None and worst >= args.rss_growth_limit:
        missed.append(f"RSS growth {worst:+.1%}")
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.soak " + " ".join(argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "requests": int(len(data)),
        "failures": failures,
        "warmup_requests": int(len(warmup)),
        "warmup_failures": warmup_failures,
        "errors": errors,
        "rps": round(len(data) / seconds, 2),
        **flat_percentiles(ok),
        "max_ms": round(float(ok.max()), 1) if len(ok) else None,
        "processes": processes,
        "worst_rss_growth": worst,
        "missed": missed,
        "passed": not missed,
    }


def write_report(out: Path, args, summary: dict, windows: list[dict], rss_rows: list[dict]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, rows in (("timeline.csv", windows), ("rss.csv", rss_rows)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    plot(out / "soak.png", windows, rss_rows)
    from benchmarks.machine import versions

    machine = ", ".join(f"{k} {v}" for k, v in versions().items())
    status = "PASS" if summary["passed"] else "FAIL: " + "; ".join(summary["missed"])
    lines = [
        f"# Soak: {args.users} users for {args.duration:.0f} s — {status}",
        "",
        f"- {summary['created']}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; {machine}",
        f"- Command: `{summary['command']}`",
        f"- Targets: 0 failures, no worker restart, RSS growth < {args.rss_growth_limit:.0%} (median of the first "
        f"vs the last {args.steady:.0f} s, after {args.warmup:.0f} s warm-up)",
        "",
        "| requests | failures | warm-up requests (failures) | req/s | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary['requests']} | {summary['failures']} | {summary['warmup_requests']} "
        f"({summary['warmup_failures']}) | {summary['rps']} | {summary['p50_ms']} | {summary['p99_ms']} | "
        f"{summary['max_ms']} |",
        "",
        "| process | pid(s) | RSS start MB | RSS end MB | growth | max MB |",
        "|---|---|---:|---:|---:|---:|",
        *[f"| {p['process']} | {', '.join(map(str, p['pids']))} | {p['rss_start_mb']} | {p['rss_end_mb']} | "
          f"{'n/a' if p['growth'] is None else format(p['growth'], '+.1%')} | {p['rss_max_mb']} |"
          for p in summary["processes"]],
    ]
    if summary["errors"]:
        lines += ["", "Errors:", *[f"- {n} × {e}" for e, n in summary["errors"].items()]]
    lines += ["", "![p50/p99 latency, throughput and RSS over time](soak.png)", "",
              "Files: timeline.csv (per window: requests, failures, req/s, p50/p99), rss.csv (every RSS sample), "
              "summary.json.", ""]
    (out / "report.md").write_text("\n".join(lines))


def plot(path: Path, windows: list[dict], rss_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, rate, mem) = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True)
    t = [w["t_s"] for w in windows]
    for key in ("p99_ms", "p50_ms"):
        lat.plot(t, [np.nan if w[key] is None else w[key] for w in windows], marker=".", label=key[:3])
    lat.set_ylabel("latency (ms)")
    lat.set_ylim(bottom=0)
    lat.set_title("Soak: latency, throughput and memory per window")
    rate.plot(t, [w["rps"] for w in windows], marker=".", label="req/s")
    failed = [w for w in windows if w["failures"]]
    if failed:
        rate.bar([w["t_s"] for w in failed], [w["failures"] for w in failed], color="red", label="failures")
    rate.set_ylabel("per second")
    rate.set_ylim(bottom=0)
    for name in sorted({r["process"] for r in rss_rows}):
        rows = [r for r in rss_rows if r["process"] == name and r["phase"] == "run"]
        mem.plot([r["t_s"] for r in rows], [r["rss_mb"] for r in rows], marker=".", label=name)
    mem.set_ylabel("RSS (MB)")
    mem.set_ylim(bottom=0)
    mem.set_xlabel("seconds after warm-up")
    for ax in (lat, rate, mem):
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
