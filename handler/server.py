"""Start and stop a real TorchServe, one per run folder: its own TMPDIR, logs, ports and keys.

Used by ``make serve`` / ``make stop``, the integration tests and the benchmarks::

    from handler.server import TorchServe

    with TorchServe("model_store", {"deepfake-detector": "deepfake-detector.mar"}) as server:
        response = server.predict("deepfake-detector", image_bytes)   # token passed for you
        server.client                                                  # handler.tsclient.TorchServeClient

By default each server gets free loopback ports; ``ports=Ports.from_config(path)`` uses the ones a
config file names (``handler/tsconfig.py`` renders the config); HTTP goes through ``server.client``
(``handler/tsclient.py``). ``start()`` returns only when every model answered a real prediction with 200:
TorchServe's ``/ping`` reports Healthy even while workers crash-loop. ``stop()`` stops exactly that
server (its own pid file under its own TMPDIR) and waits for its workers to exit.

``start_watchdog()`` adds ``handler/watchdog.py``'s supervisor, a process owned by the same run
folder (``make serve`` starts it); ``stop()`` stops it first. ``status`` reports the last real
prediction the watchdog saw, never ``/ping``.

CLI: ``python -m handler.server start|stop|status --run-dir build/serve ...`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import psutil
import requests

from handler.payload import PROBE_HEADER
from handler.records_settings import RecordsSettings, spool_report
from handler.records_store import RecordsError, shown
from handler.tsclient import TorchServeClient, TorchServeError, probe_image, read_keys
from handler.tsconfig import Ports, read_properties, render_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config.properties"
STATE_FILE = "server.json"
WATCHDOG_STATE = "watchdog.json"  # written by handler/watchdog.py, read by `status`
WATCHDOG_METRICS = "watchdog.prom"  # the same counters as Prometheus text
CRASH_LOOP_LIMIT = 3  # worker deaths while loading before start() gives up (TorchServe retries forever)


class ServerError(RuntimeError):
    """TorchServe did not start, or a model never answered; the message carries the log tail."""


class TorchServe:
    """One TorchServe frontend and its workers, owned by this object.

    model_store: folder of .mar files. models: {name: archive file name in the store} loaded at start.
    run_dir: TMPDIR, logs, rendered config, key file, state; a fresh temp folder when None.
    ports: Ports, or None for free ones. token_auth: TorchServe's token authorisation (on by default).
    properties: extra config.properties keys for this server (e.g. ``{"job_queue_size": 1000}``).
    """

    def __init__(
        self,
        model_store: str | Path,
        models: Mapping[str, str],
        run_dir: str | Path | None = None,
        config: str | Path = DEFAULT_CONFIG,
        ports: Ports | None = None,
        token_auth: bool = True,
        properties: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.model_store = Path(model_store).resolve()
        self.models = dict(models)
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="torchserve-")).resolve()
        self.config = Path(config)
        self.ports = ports or Ports.free()
        self.token_auth = token_auth
        self.properties = dict(properties or {})
        self.env = dict(env or {})
        self.pid: int | None = None
        self.watchdog_pid: int | None = None
        self.startup_seconds: float | None = None  # launch to first successful prediction
        self._client: TorchServeClient | None = None

    # --- paths and URLs ---------------------------------------------------------------------------

    @property
    def tmp_dir(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.properties"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def watchdog_state(self) -> Path:
        return self.run_dir / WATCHDOG_STATE

    @property
    def records_settings(self) -> RecordsSettings:
        """Where this server's workers record predictions and spool them (handler/records_settings.py): per
        key the environment (DEEPFAKE_RECORDS_*), else config.properties (deepfake_records_*), else
        SQLite and its spool in the run folder."""
        configured = {**read_properties(self.config), **{k: str(v) for k, v in self.properties.items()}}
        return RecordsSettings.resolve(self._base_env(), configured, self.run_dir)

    @property
    def records_url(self) -> str | None:
        """The store's URL; None when recording is off."""
        return self.records_settings.url

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    # --- the HTTP client (handler/tsclient.py) with this server's keys -----------------------------

    @property
    def client(self) -> TorchServeClient:
        """A client for this server; built once its key file exists (a restart writes new keys)."""
        if self._client is None:
            keys = read_keys(self.key_file) if self.token_auth else {}
            self._client = TorchServeClient(self.inference_url, self.management_url, self.metrics_url, keys)
        return self._client

    def key(self, api: str = "inference") -> str | None:
        """The token for ``inference`` or ``management`` (None with auth off)."""
        return self.client.key(api)

    def headers(self, api: str = "inference") -> dict[str, str]:
        return self.client.headers(api)

    def predict(self, model: str, data: bytes | None = None, timeout: float = 120, **kwargs) -> requests.Response:
        """POST to /predictions/<model>; ``data`` is sent raw, or pass files=/json= as in requests."""
        return self.client.predict(model, data, timeout, **kwargs)

    def explain(self, model: str, data: bytes | None = None, timeout: float = 120, **kwargs) -> requests.Response:
        return self.client.explain(model, data, timeout, **kwargs)

    def management(self, method: str, path: str, timeout: float = 60, **kwargs) -> requests.Response:
        return self.client.management(method, path, timeout, **kwargs)

    def metrics(self, timeout: float = 30) -> str:
        return self.client.metrics(timeout)

    def register(self, archive: str, name: str | None = None, workers: int = 1, timeout: float = 600) -> None:
        """Register an archive of the model store on the running server and wait for a prediction."""
        name = name or Path(archive).stem
        try:
            self.client.register(archive, name, workers, timeout=timeout)
        except TorchServeError as exc:
            raise ServerError(f"{exc}\n{self.log_tail()}") from None
        self.models[name] = archive
        self.wait_for_prediction(name, timeout)

    def unregister(self, name: str) -> None:
        self.client.unregister(name)
        self.models.pop(name, None)

    # --- lifecycle --------------------------------------------------------------------------------

    @staticmethod
    def executable() -> str:
        """The ``torchserve`` script of this interpreter's environment, else the one on PATH
        (e.g. wheels unpacked into a --target folder on a GPU host)."""
        beside = Path(sys.executable).with_name("torchserve")
        found = str(beside) if beside.exists() else shutil.which("torchserve")
        if not found:
            raise ServerError("torchserve is not installed beside this Python nor on PATH")
        return found

    def start(self, timeout: float = 600, progress: bool = False) -> "TorchServe":
        """Launch TorchServe and return once every model answered a real prediction."""
        if not shutil.which("java", path=self._env().get("PATH")):
            raise ServerError("TorchServe needs Java 11+ on PATH (or JAVA_HOME set)")
        # a fresh log folder: start() reads it to detect crash loops; the last run's logs are kept once
        if self.log_dir.exists():
            shutil.rmtree(self.run_dir / "logs.previous", ignore_errors=True)
            self.log_dir.rename(self.run_dir / "logs.previous")
        for folder in (self.tmp_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.config, self.model_store, self.ports, self.token_auth, self.properties))
        self.key_file.unlink(missing_ok=True)
        self._client = None
        command = [
            self.executable(),
            "--start",
            "--ncs",  # no config snapshots: every start is exactly this config
            "--model-store", str(self.model_store),
            "--ts-config", str(self.config_path),
        ]  # fmt: skip
        if self.models:
            command += ["--models", *(f"{name}={archive}" for name, archive in self.models.items())]
        started = time.monotonic()
        with open(self.log_dir / "launcher.log", "w") as launcher_log:
            result = subprocess.run(command, cwd=self.run_dir, env=self._env(), stdout=launcher_log, stderr=subprocess.STDOUT, timeout=120)
        if result.returncode != 0:
            raise ServerError(f"torchserve --start failed ({result.returncode})\n{self.log_tail()}")
        self.pid = self._read_pid(deadline=started + 60)
        self._write_state()
        try:
            self.wait_for_api(timeout - (time.monotonic() - started))
            for name in self.models:
                self.wait_for_prediction(name, timeout - (time.monotonic() - started), progress=progress)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def wait_for_api(self, timeout: float = 120) -> None:
        """Until the management API answers with this server's key (it listens after --start returns)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"TorchServe exited during start-up\n{self.log_tail()}")
            try:
                if not self.token_auth or self.key_file.exists():
                    self._client = None  # re-read the keys: a restart writes new ones
                    if self.management("GET", "/models", timeout=10).status_code == 200:
                        return
            except (requests.ConnectionError, requests.Timeout, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.5)
        raise ServerError(f"the management API did not answer in {timeout:.0f}s\n{self.log_tail()}")

    def wait_for_prediction(self, model: str, timeout: float = 600, progress: bool = False) -> None:
        """Poll until ``model`` answers a real image with 200 (workers up and the handler working)."""
        deadline = time.monotonic() + timeout
        image, last, reported = probe_image(), "no answer yet", 0.0
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"TorchServe exited while loading {model}\n{self.log_tail()}")
            if self._load_failures(model) >= CRASH_LOOP_LIMIT:
                raise ServerError(f"{model}: workers keep dying while loading (crash loop)\n{self.log_tail()}")
            try:
                # a health check, not a prediction anyone asked for: the probe header keeps it out of the records
                response = self.predict(model, image, timeout=10, headers={PROBE_HEADER: "1"})
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
            if progress and time.monotonic() - reported > 10:
                print(f"  waiting for {model} ({last}) ...", flush=True)
                reported = time.monotonic()
            time.sleep(1.0)
        raise ServerError(f"{model} gave no successful prediction in {timeout:.0f}s (last: {last})\n{self.log_tail()}")

    def _load_failures(self, model: str) -> int:
        log = self.log_dir / "ts_log.log"
        if not log.exists():
            return 0
        return log.read_text(errors="replace").count(f"Load model failed: {model},")

    def alive(self) -> bool:
        """Whether this server's frontend process is running."""
        if self.pid is None:
            return False
        try:
            process = psutil.Process(self.pid)
            # the frontend runs in our run folder; anything else is a recycled pid, not ours to stop
            return process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == self.run_dir
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def stop(self, timeout: float = 60) -> None:
        """Stop this server (and only it) and wait until its watchdog, frontend and workers have exited."""
        self.stop_watchdog()  # first: it would "recover" a server that is going away
        if self.pid is None:
            self.pid = self._read_pid(deadline=time.monotonic())
        processes = []
        if self.alive():
            try:
                frontend = psutil.Process(self.pid)
                processes = [frontend, *frontend.children(recursive=True)]
            except psutil.NoSuchProcess:
                processes = []
        if processes:
            # torchserve --stop reads the pid file under our own TMPDIR, so it cannot hit another server
            subprocess.run(
                [self.executable(), "--stop"],
                cwd=self.run_dir, env=self._env(), capture_output=True, timeout=60,
            )  # fmt: skip
            _, survivors = psutil.wait_procs(processes, timeout=timeout)
            for process in survivors:
                try:
                    process.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(survivors, timeout=10)
        self.pid = None
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    # --- the watchdog (handler/watchdog.py) -------------------------------------------------------

    def start_watchdog(self) -> int:
        """Start ``python -m handler.watchdog`` for this run folder in its own session (it outlives
        ``make serve``); logs to logs/watchdog.log, counters in watchdog.json and watchdog.prom."""
        self.stop_watchdog()
        self.watchdog_state.unlink(missing_ok=True)
        with open(self.log_dir / "watchdog.log", "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "handler.watchdog", "--run-dir", str(self.run_dir)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.watchdog_pid = process.pid
        self._write_state()
        return process.pid

    def watchdog_process(self) -> psutil.Process | None:
        """This run folder's running watchdog, if any (a recycled pid running something else is not)."""
        if self.watchdog_pid is None:
            return None
        try:
            process = psutil.Process(self.watchdog_pid)
            ours = "handler.watchdog" in process.cmdline() and str(self.run_dir) in process.cmdline()
            return process if ours and process.status() != psutil.STATUS_ZOMBIE else None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def stop_watchdog(self, timeout: float = 30) -> None:
        process = self.watchdog_process()
        if process is not None:
            process.terminate()  # its state file is replaced atomically, so a kill at any point is safe
            _, survivors = psutil.wait_procs([process], timeout=timeout)
            for survivor in survivors:
                survivor.kill()
        if self.watchdog_pid is not None:
            self.watchdog_pid = None
            if (self.run_dir / STATE_FILE).exists():
                self._write_state()

    def status(self) -> dict:
        """Whether each model gave a real verdict recently, as the watchdog saw it (not /ping, which
        says Healthy while a model answers nothing). ``healthy``: the frontend runs, the watchdog
        runs and every model answered within the watchdog's detection window."""
        report = {"alive": self.alive(), "pid": self.pid, "inference": self.inference_url,
                  "watchdog": {"running": self.watchdog_process() is not None, "pid": self.watchdog_pid}}  # fmt: skip
        state = json.loads(self.watchdog_state.read_text()) if self.watchdog_state.exists() else {}
        now, models = time.time(), {}
        for name in self.models:
            seen = state.get("models", {}).get(name, {})
            last = seen.get("last_success")
            models[name] = {
                "last_real_prediction": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)) if last else None,
                "seconds_ago": round(now - last, 1) if last else None,
                "answering": bool(last) and now - last <= state.get("stale_after_s", 0),
                **{k: seen.get(k, 0) for k in ("consecutive_failures", "failures", "recoveries", "failed_recoveries")},
                "last_recovery": seen.get("last_recovery"),
            }
        report["models"] = models
        report["records"] = self.records_status()
        report["healthy"] = report["alive"] and report["watchdog"]["running"] and all(m["answering"] for m in models.values())
        return report

    def records_status(self) -> dict:
        """The store (password hidden) and what waits in the spool for it; not part of ``healthy``:
        predictions go on while the store is down, and the rows wait."""
        try:
            settings = self.records_settings
        except RecordsError as exc:
            return {"error": str(exc)}
        if settings.url is None:
            return {"store": "off"}
        return {"store": shown(settings.url), **spool_report(settings)}

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- state ------------------------------------------------------------------------------------

    @classmethod
    def attach(cls, run_dir: str | Path) -> "TorchServe":
        """The server a previous ``start`` left running in ``run_dir`` (for ``make stop`` and tools)."""
        run_dir = Path(run_dir).resolve()
        state = json.loads((run_dir / STATE_FILE).read_text())
        server = cls(state["model_store"], state["models"], run_dir, state["config"], Ports(**state["ports"]), state["token_auth"])
        server.pid = state["pid"]
        server.watchdog_pid = state.get("watchdog_pid")
        server.properties.update(state.get("records", {}))  # the records settings it started with
        return server

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("launcher.log", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no logs in {self.log_dir})"

    def _base_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(self.records_settings.environ())  # the workers inherit the frontend's environment
        # TEMP sets the JVM's java.io.tmpdir, where the worker sockets live: servers must not share it
        tmp = str(self.tmp_dir)
        env.update(TMPDIR=tmp, TEMP=tmp, LOG_LOCATION=str(self.log_dir), METRICS_LOCATION=str(self.log_dir))
        # workers import the archive's code, never this checkout; other entries (e.g. TorchServe
        # wheels unpacked with pip --target on a GPU host) stay
        checkout = Path(__file__).resolve().parents[1]
        kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != checkout]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            env.pop("PYTHONPATH", None)
        if env.get("JAVA_HOME"):  # TorchServe runs $JAVA_HOME/bin/java when JAVA_HOME is set
            env["PATH"] = os.pathsep.join([str(Path(env["JAVA_HOME"]) / "bin"), env.get("PATH", "")])
        return env

    def _read_pid(self, deadline: float) -> int | None:
        pid_file = self.tmp_dir / ".model_server.pid"
        while True:
            if pid_file.exists() and pid_file.read_text().strip():
                return int(pid_file.read_text().strip())
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def _write_state(self) -> None:
        state = {
            "pid": self.pid,
            "model_store": str(self.model_store),
            "models": self.models,
            "config": str(self.config),
            "ports": asdict(self.ports),
            "token_auth": self.token_auth,
            "watchdog_pid": self.watchdog_pid,
            "records": self.records_settings.properties(),
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def run_records_settings(run_dir: Path, environ: Mapping[str, str]) -> RecordsSettings:
    """A server's records settings from its run folder (``python -m handler.records_cli``): what the server
    resolved at its start (its state file), else the environment and its config.properties."""
    run_dir = Path(run_dir)
    if (run_dir / STATE_FILE).exists():
        return TorchServe.attach(run_dir).records_settings
    config = run_dir / "config.properties"
    return RecordsSettings.resolve(environ, read_properties(config) if config.exists() else {}, run_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start/stop a TorchServe owned by a run folder.")
    parser.add_argument("action", choices=["start", "stop", "status", "key"], help="key: print the inference key")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "build/serve")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--models", nargs="*", default=["deepfake-detector=deepfake-detector.mar"], help="name=file.mar ...")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of the config's")
    parser.add_argument("--no-token-auth", action="store_true", help="turn TorchServe's token auth off (not for production)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    if args.action == "stop":
        if not (args.run_dir / STATE_FILE).exists():
            print(f"no server recorded in {args.run_dir}")
            return
        server = TorchServe.attach(args.run_dir)
        pid, was_alive = server.pid, server.alive()
        server.stop()
        print(f"stopped TorchServe (pid {pid}) of {args.run_dir}" if was_alive else f"the server of {args.run_dir} had already exited")
        return
    if args.action == "key":
        if not (args.run_dir / STATE_FILE).exists():
            sys.exit(f"no server recorded in {args.run_dir}")
        print(TorchServe.attach(args.run_dir).key("inference") or "")
        return
    if args.action == "status":
        if not (args.run_dir / STATE_FILE).exists():
            sys.exit(f"no server recorded in {args.run_dir}")
        report = TorchServe.attach(args.run_dir).status()
        print(json.dumps(report, indent=2))
        sys.exit(0 if report["healthy"] else 1)

    if (args.run_dir / STATE_FILE).exists() and TorchServe.attach(args.run_dir).alive():
        sys.exit(f"a server from {args.run_dir} is still running; run `make stop` first")
    models = dict(spec.split("=", 1) for spec in args.models)
    ports = Ports.free() if args.free_ports else Ports.from_config(args.config)
    server = TorchServe(args.model_store, models, args.run_dir, args.config, ports, token_auth=not args.no_token_auth)
    print(f"starting TorchServe on {server.inference_url} (logs: {server.log_dir}) ...", flush=True)
    try:
        server.start(timeout=args.timeout, progress=True)
    except ServerError as exc:
        sys.exit(f"TorchServe did not come up:\n{exc}")
    name = next(iter(models))
    print(f"ready in {server.startup_seconds:.1f}s: {name} answered a real prediction")
    server.start_watchdog()
    print(f"watchdog started (pid {server.watchdog_pid}): real predictions on an interval, a silent model is "
          f"rescaled or re-registered; `make status` shows the last real verdict (log: {server.log_dir / 'watchdog.log'})")
    python = os.path.relpath(sys.executable)
    example = next(iter(sorted((ROOT / "examples").glob("*/*.jpg"))), None)
    image = os.path.relpath(example) if example else "face.jpg"
    auth = ""
    if server.token_auth:
        print(f"token auth is on: keys are in {server.key_file}; send 'Authorization: Bearer <inference key>'")
        print(f"  KEY=$({python} -m handler.server key --run-dir {os.path.relpath(args.run_dir)})")
        auth = '-H "Authorization: Bearer $KEY" '
    print("try (TorchServe reads a body without Content-Type as a form, so send one):")
    print(f"  curl {auth}-H 'Content-Type: image/jpeg' --data-binary @{image} {server.inference_url}/predictions/{name}")
    print(f"  curl {auth}-F image=@{image} {server.inference_url}/explanations/{name}")
    print(f"  {python} -m handler.client {image}            # or a folder: --csv out.csv, --explain heat.png")
    print("stop it with: make stop")


if __name__ == "__main__":
    main()
