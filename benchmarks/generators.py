"""Load from several Locust processes: a master runner in the measuring process, N ``locust --worker``
processes on this machine (one core each at most: Locust runs on one), for a deployment that one
generator cannot saturate.

Each worker sends, with every report to the master, the finish time and latency of each answer and
its own CPU use (``benchmarks/locustfile.py``), so the master cuts the same windows and percentiles
as a single process does and sees which generator ran out of CPU. Workers on other machines join the
same way (``locust -f benchmarks/locustfile.py --worker --master-host HOST``); their clocks must agree
(NTP), since windows are cut by wall-clock time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import gevent
from locust.env import Environment

from handler.tsconfig import Ports

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"
REPORT_INTERVAL_S = 1.0  # the workers' report period (locustfile.py sets it); a window's answers arrive this late


class Generators:
    """``with Generators(env, 2, images, model, token) as fleet: fleet.runner.start(users, users)``;
    ``fleet.records``: (finish time, ms, failed, message) of every answer, as workers report them."""

    def __init__(self, env: Environment, count: int, images: str | Path, model: str, token: str = "", log_dir: Path | None = None):
        self.env, self.count = env, count
        self.images, self.model, self.token = str(Path(images).resolve()), model, token
        self.log_dir = log_dir
        self.records: list[tuple[float, float, bool, str]] = []
        self.cpu: list[tuple[float, str, float]] = []  # (received at, worker id, CPU % since its last report)
        self.processes: list[subprocess.Popen] = []

    def _on_report(self, client_id: str, data: dict, **_) -> None:
        self.records.extend(tuple(r) for r in data.get("detector_records", ()))
        if "detector_cpu_percent" in data:
            self.cpu.append((time.time(), client_id, float(data["detector_cpu_percent"])))

    def __enter__(self) -> "Generators":
        port = Ports.free().inference
        self.runner = self.env.create_master_runner("127.0.0.1", port)
        self.env.events.worker_report.add_listener(self._on_report)
        env = {**os.environ, "BENCH_IMAGES": self.images, "BENCH_MODEL": self.model, "BENCH_TOKEN": self.token,
               "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
                   "--master-port", str(port), "--loglevel", "WARNING"]
        for index in range(self.count):
            out = open(self.log_dir / f"locust-worker-{index}.log", "w") if self.log_dir else subprocess.DEVNULL
            self.processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while self.runner.worker_count < self.count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.__exit__()
                raise RuntimeError(f"{self.runner.worker_count} of {self.count} Locust workers connected")
            gevent.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self.runner.quit()  # tells the workers to stop and exit
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def cpu_between(self, start: float, end: float) -> list[float]:
        """Mean CPU % (100 = one core) of each generator from the reports received in [start, end]."""
        per_worker: dict[str, list[float]] = {}
        for received, worker, percent in self.cpu:
            if start <= received <= end:
                per_worker.setdefault(worker, []).append(percent)
        return [sum(v) / len(v) for _, v in sorted(per_worker.items())]

