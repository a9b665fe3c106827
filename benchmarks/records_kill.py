"""How many prediction records a worker killed with SIGKILL takes with it.

One TorchServe, one archive recording to a fresh store (SQLite in a temp folder, or
``--records-url``), closed-loop clients sending distinct images; each round kills one worker with
SIGKILL mid-load, keeps the load on until TorchServe has replaced the worker, then stops and waits for
the store to settle. A 200 answer whose image has no row is a record lost to the kill; a row without
a 200 answer is a verdict recorded whose answer the kill cut off. Request ids recorded twice are
counted too.

    python -m benchmarks.records_kill --kills 3 --users 4
    python -m benchmarks.records_kill --records-url postgresql://deepfake@127.0.0.1:5432/records

Writes ``benchmarks/reports/<time>-records-kill/`` (summary.json, report.md, a plot per round);
``--render DIR`` rebuilds the report from its summary.json alone.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.plots import plt, save_figure  # importing benchmarks.plots selects the Agg backend
from export.archive import ServingConfig, build_archive
from handler import records_query, records_store
from handler.server import ROOT, TorchServe

MODEL = "records-kill"
PLOT = "rows_lost_by_round.png"


class Load:
    """``users`` closed-loop clients sending distinct images until stopped; keeps each answer's status."""

    def __init__(self, server: TorchServe, images: list[bytes], users: int, tag: str):
        self.server, self.answers, self.stop = server, [], threading.Event()
        counter = itertools.count()
        self._next = lambda: images[(n := next(counter)) % len(images)] + f"{tag}-{n}".encode()  # JPEG ignores trailing bytes
        self._threads = [threading.Thread(target=self._user) for _ in range(users)]

    def _user(self) -> None:
        while not self.stop.is_set():
            body = self._next()
            try:
                status = self.server.predict(MODEL, body, timeout=120, headers={"Content-Type": "image/jpeg"}).status_code
            except Exception as exc:  # a dropped connection is an answer that never came
                status = type(exc).__name__
            self.answers.append((hashlib.sha256(body).hexdigest(), status, time.monotonic()))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()


def kill_one_worker(server: TorchServe, timeout: float = 300) -> float:
    """SIGKILL one worker; return the seconds until TorchServe has all its workers again."""
    before = server.client.worker_pids(MODEL)
    victim = sorted(before.values())[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < timeout:
        now = set(server.client.worker_pids(MODEL).values())
        if len(now) == len(before) and victim not in now:
            return time.monotonic() - killed
        time.sleep(0.2)
    raise RuntimeError(f"worker {victim} was not replaced within {timeout:.0f} s")


def settled_rows(engine, digests: set[str], quiet_s: float = 3.0, timeout: float = 120) -> list[dict]:
    """This round's rows once their number has not changed for ``quiet_s`` (the writer has caught up)."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in records_query.query(engine, limit=None, model=MODEL) if r["sha256"] in digests]
        if last is None or len(rows) != len(last):
            last, since = rows, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return rows
        time.sleep(0.5)
    return last or []


def one_round(server: TorchServe, engine, images: list[bytes], args, n: int) -> dict:
    with Load(server, images, args.users, f"kill-{n}") as load:
        time.sleep(args.before)
        rate = len(load.answers) / args.before
        replaced_s = kill_one_worker(server)
        time.sleep(args.after)
    statuses = {digest: status for digest, status, _ in load.answers}
    answered = {d for d, s in statuses.items() if s == 200}
    rows = settled_rows(engine, set(statuses))
    recorded = Counter(r["sha256"] for r in rows)
    ids = Counter(r["request_id"] for r in rows)
    result = {
        "sent": len(statuses), "answered_200": len(answered), "failed": Counter(str(s) for s in statuses.values() if s != 200),
        "rows": len(rows), "lost": len(answered - set(recorded)), "extra": len(set(recorded) - answered),
        "duplicate_request_ids": sum(c - 1 for c in ids.values() if c > 1), "rate_before_kill": round(rate, 2),
        "worker_replaced_s": round(replaced_s, 1),
    }  # fmt: skip
    print(f"round {n + 1}: {result}", flush=True)
    return result


def code_version() -> str:
    found = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/default.safetensors")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--artifact", type=Path, help="the backend's artifact (not needed for eager)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3, help="rounds, one SIGKILL each")
    parser.add_argument("--before", type=float, default=8, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=5, help="seconds of load after the worker is back")
    parser.add_argument("--records-url", help="record here instead of a fresh SQLite file")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports")
    parser.add_argument("--render", type=Path, metavar="DIR", help="only rebuild DIR's report.md and plot from its summary.json")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return
    images = [p.read_bytes() for p in sorted((ROOT / "examples").glob("*/*.jpg"))]
    code = code_version()  # before the archive is built from the working tree
    store = Path(tempfile.mkdtemp(prefix="records-kill-"))
    try:
        url = args.records_url or f"sqlite:///{store / 'records.sqlite3'}"
        serving = ServingConfig(batch_size=4, max_batch_delay=10, min_workers=args.workers, max_workers=args.workers,
                                handler={"threads": 1, "records_url": url})  # fmt: skip
        build_archive(args.weights, args.backend, args.artifact, export_path=store, model_name=MODEL, serving=serving)
        with TorchServe(store, {MODEL: f"{MODEL}.mar"}, run_dir=store / "run") as server:
            engine = records_store.open_engine(url)
            rounds = [one_round(server, engine, images, args, n) for n in range(args.kills)]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    summary = {
        "command": " ".join(["python -m benchmarks.records_kill", *(sys.argv[1:] if argv is None else argv)]),
        "code": code, "backend": args.backend, "workers": args.workers, "users": args.users,
        "before_s": args.before, "after_s": args.after, "store": "postgresql" if args.records_url else "sqlite",
        "host": platform.node(), "cores": os.cpu_count(), "rounds": rounds,
    }  # fmt: skip
    out = args.out / (time.strftime("%Y%m%d-%H%M") + "-records-kill")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"report: {render(out)}")


def render(out: Path) -> Path:
    summary = json.loads((out / "summary.json").read_text())
    rounds = summary["rounds"]
    lost = [r["lost"] for r in rounds]
    lines = [
        "# Prediction records lost to a worker killed with SIGKILL", "",
        f"`{summary['command']}` (code {summary['code']})", "",
        f"One TorchServe, {summary['backend']}, {summary['workers']} workers x 1 thread, batches of 4 within 10 ms, "
        f"recording to {summary['store']}; {summary['users']} closed-loop users sending distinct images. Each round: "
        f"{summary['before_s']:.0f} s of load, SIGKILL to one worker, load until TorchServe has replaced it and "
        f"{summary['after_s']:.0f} s more, then the store is read once its row count has been still for 3 s.", "",
        "| round | sent | 200 answers | other answers | rows | **200 answers without a row** | rows without a 200 | request ids twice | req/s before the kill | worker back after s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {i + 1} | {r['sent']} | {r['answered_200']} | {dict(r['failed']) or '-'} | {r['rows']} | **{r['lost']}** | "
          f"{r['extra']} | {r['duplicate_request_ids']} | {r['rate_before_kill']} | {r['worker_replaced_s']} |" for i, r in enumerate(rounds)),
        "", f"Rows lost per kill: {', '.join(map(str, lost))} (mean {sum(lost) / len(lost):.1f}).", "",
        f"![200 answers without a row, per round]({PLOT})",
        *(f"\nNote: {note}" for note in summary.get("notes", [])),
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar([str(i + 1) for i in range(len(rounds))], lost, color="#c44e52")
    ax.bar_label(bars, fontsize=8)
    ax.set_xlabel("round (one worker killed with SIGKILL)")
    ax.set_ylabel("200 answers without a row")
    ax.set_title(f"Records lost to a worker kill (code {summary['code']})")
    ax.set_ylim(0, max(lost + [1]) * 1.25)
    save_figure(fig, out / PLOT)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


if __name__ == "__main__":
    main()
