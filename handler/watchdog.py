"""Keeps the models of one run folder answering: real predictions on an interval, recovery through
the management API when they stop.

Why: TorchServe 0.12's ``/ping`` and its worker states say Healthy / READY while a model answers
nothing (one gRPC StreamPredictions2 call with a sequence id, on a model without sequence batching,
kills the frontend's worker thread, and every later request waits forever). So this trusts only
real answers: every ``INTERVAL_S`` it sends each model a real image (``tsclient.probe_image``) with a
``DEADLINE_S`` deadline, and only an HTTP 200 verdict counts. After ``RECOVER_AFTER`` misses in a row
it recovers the model, whatever the cause: its workers scaled to 0 and back to the declared count;
if the model still does not answer, its archive unregistered and registered again. A silent model
is thus acted on within ``DETECT_WITHIN_S`` (30 s) and answers again within ``HEAL_WITHIN_S`` (60 s).

Counters: ``<run-dir>/watchdog.json`` (read by ``python -m handler.server status`` / ``make status``)
and the same as Prometheus text in ``<run-dir>/watchdog.prom``; log: ``<run-dir>/logs/watchdog.log``.
``make serve`` starts it (``TorchServe.start_watchdog``), ``make stop`` stops it, and it exits by
itself when the frontend is gone (restarting TorchServe is not its job).

    python -m handler.watchdog --run-dir build/serve
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from handler.server import WATCHDOG_METRICS, TorchServe
from handler.payload import PROBE_HEADER
from handler.tsclient import TorchServeClient, TorchServeError, probe_image

INTERVAL_S = 5.0  # between probes: a silent model costs at most this much before it is noticed
DEADLINE_S = 10.0  # a probe is a tiny image: on a healthy server it answers in well under a second
RECOVER_AFTER = 2  # misses in a row: one slow answer under a burst does not restart workers
DETECT_WITHIN_S = INTERVAL_S + RECOVER_AFTER * DEADLINE_S + (RECOVER_AFTER - 1) * INTERVAL_S
HEAL_WITHIN_S = 60.0  # detection plus starting a worker on a busy 2-core machine
RECOVERY_TIMEOUT_S = 300.0  # one management call (a synchronous scale-up or registration)

log = logging.getLogger("watchdog")


def verdict_or_reason(client: TorchServeClient, model: str, image: bytes, deadline: float = DEADLINE_S) -> str | None:
    """None when ``model`` answered ``image`` with a verdict within ``deadline``, else why not."""
    try:
        reply = client.predict(model, image, timeout=deadline, headers={PROBE_HEADER: "1"})
        if reply.status_code == 200 and "label" in reply.json():
            return None
        return f"HTTP {reply.status_code}: {reply.text[:200]}"
    except (requests.RequestException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


@dataclass
class Watched:
    """One model and what the watchdog has seen of it."""

    name: str
    archive: str
    min_workers: int
    max_workers: int
    probes: int = 0
    failures: int = 0  # probes without a verdict in time
    consecutive_failures: int = 0
    last_success: float | None = None  # unix time of the last real verdict
    last_failure: str | None = None
    recoveries: int = 0  # recoveries after which the model answered again
    failed_recoveries: int = 0
    last_recovery: dict | None = None


class Watchdog:
    def __init__(self, server: TorchServe):
        self.server = server
        self.client = server.client
        self.image = probe_image()
        self.models = {}
        for name, archive in server.models.items():
            # the server was just started as its archives declare (`--ncs`): remember their counts
            described = self.client.describe(name)
            self.models[name] = Watched(name, archive, described["minWorkers"], described["maxWorkers"])

    def run(self) -> None:
        log.info("watching %s of %s: a probe every %.0f s, deadline %.0f s, recovery after %d misses",
                 ", ".join(self.models), self.server.run_dir, INTERVAL_S, DEADLINE_S, RECOVER_AFTER)  # fmt: skip
        while self.server.alive():
            for model in self.models.values():
                self.check(model)
            self.write_state()
            time.sleep(INTERVAL_S)
        log.info("the frontend (pid %s) is gone: nothing left to watch", self.server.pid)

    def check(self, model: Watched) -> None:
        model.probes += 1
        reason = verdict_or_reason(self.client, model.name, self.image)
        if reason is None:
            if model.consecutive_failures:
                log.info("%s answers again", model.name)
            model.last_success, model.consecutive_failures = time.time(), 0
            return
        model.failures += 1
        model.consecutive_failures += 1
        model.last_failure = reason
        log.warning("%s: no verdict (%s), %d in a row", model.name, reason, model.consecutive_failures)
        if model.consecutive_failures >= RECOVER_AFTER:
            self.recover(model)

    def recover(self, model: Watched) -> None:
        """Workers to 0 and back to the declared count; if it still does not answer, register anew."""
        started = time.monotonic()
        for method in ("rescale", "re-register"):
            log.warning("%s: recovering (%s)", model.name, method)
            try:
                if method == "rescale":
                    self.client.scale(model.name, 0, timeout=RECOVERY_TIMEOUT_S)
                    self.client.scale(model.name, model.min_workers, model.max_workers, timeout=RECOVERY_TIMEOUT_S)
                else:
                    try:
                        self.client.unregister(model.name, timeout=RECOVERY_TIMEOUT_S)
                    except TorchServeError as exc:  # e.g. it is not registered at all any more
                        log.warning("%s: %s", model.name, exc)
                    self.client.register(model.archive, model.name, model.min_workers, timeout=RECOVERY_TIMEOUT_S)
                reason = verdict_or_reason(self.client, model.name, self.image)
            except (TorchServeError, requests.RequestException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            seconds = round(time.monotonic() - started, 1)
            model.last_recovery = {"time": time.time(), "method": method, "seconds": seconds, "ok": reason is None, "error": reason}
            if reason is None:
                model.recoveries += 1
                model.last_success, model.consecutive_failures = time.time(), 0
                log.warning("%s: recovered by %s in %.1f s", model.name, method, seconds)
                return
            log.error("%s: %s did not bring it back: %s", model.name, method, reason)
        model.failed_recoveries += 1  # tried again after the next missed probe

    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "updated": time.time(),
            "interval_s": INTERVAL_S,
            "deadline_s": DEADLINE_S,
            "recover_after": RECOVER_AFTER,
            "stale_after_s": DETECT_WITHIN_S,  # no verdict for longer: the model is not answering
            "heal_within_s": HEAL_WITHIN_S,
            "models": {name: asdict(model) for name, model in self.models.items()},
        }
        _replace(self.server.watchdog_state, json.dumps(state, indent=2) + "\n")
        _replace(self.server.run_dir / WATCHDOG_METRICS, prometheus(self.models.values()))


METRICS = [  # (name, type, help, Watched field)
    ("deepfake_watchdog_probes_total", "counter", "real predictions sent by the watchdog", "probes"),
    ("deepfake_watchdog_failed_probes_total", "counter", "probes without a verdict within the deadline", "failures"),
    ("deepfake_watchdog_consecutive_failures", "gauge", "failed probes in a row", "consecutive_failures"),
    ("deepfake_watchdog_recoveries_total", "counter", "recoveries after which the model answered", "recoveries"),
    ("deepfake_watchdog_failed_recoveries_total", "counter", "recoveries that did not bring the model back", "failed_recoveries"),
    ("deepfake_watchdog_last_success_timestamp_seconds", "gauge", "unix time of the last real verdict", "last_success"),
]


def prometheus(models) -> str:
    """The counters in Prometheus' text format (for node_exporter's textfile collector, or a scrape)."""
    lines = []
    for name, kind, help_text, field in METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for model in models:
            value = getattr(model, field)
            lines.append(f'{name}{{model="{model.name}"}} {"NaN" if value is None else value}')
    return "\n".join(lines) + "\n"


def _replace(path: Path, text: str) -> None:
    """Write whole or not at all: readers never see half a file, and a kill at any moment is safe."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Probe the models of a run folder with real predictions; recover silent ones.")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    Watchdog(TorchServe.attach(args.run_dir)).run()


if __name__ == "__main__":
    main()
