"""Load test through TorchServe: Locust users against every (backend archive x batch setting),
swept over concurrency levels, each level measured in fixed windows after a warm-up until the
requests/s of consecutive windows agree (or the window budget is spent).

Batch settings are applied by re-packing the archive's ``model-config.yaml`` (batchSize,
maxBatchDelay, workers) into a copy in the run's own model store; registering that copy through the
management API then gives exactly the setting asked for, whatever TorchServe's precedence between
API parameters and the archive's config.

Locust runs in this process through its Python API (gevent), so this module is best run as its own
process: ``python -m benchmarks.load`` (``benchmarks.run`` does that).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before anything imports ssl/socket; Locust would do it on import anyway

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from locust.env import Environment  # noqa: E402

from benchmarks.generators import REPORT_INTERVAL_S, Generators  # noqa: E402
from benchmarks.locustfile import DetectorUser, load_images  # noqa: E402
from benchmarks.profile import LoadSettings, Profile, load_profile  # noqa: E402
from benchmarks.stats import POINTS_WITH_P95, latency_percentiles  # noqa: E402
from benchmarks.serverstats import GpuSampler, HostSampler, generator_summary, model_values, parse_prometheus, server_split  # noqa: E402
from export.archive import archive_backend, extract_served_model, repack, serving_settings  # noqa: E402
from handler.tsclient import TorchServeClient, TorchServeError  # noqa: E402
from handler.tsconfig import Ports  # noqa: E402
from runtime.artifacts import MODEL_NAME  # noqa: E402

MODEL = MODEL_NAME
ROOT = Path(__file__).resolve().parents[1]


def archive_for(store: Path, backend: str) -> Path | None:
    """model_store/deepfake-detector-<backend>.mar (from `make export`), else the served archive
    model_store/deepfake-detector.mar when it holds that backend."""
    named, served = store / f"{MODEL}-{backend}.mar", store / f"{MODEL}.mar"
    if named.exists():
        return named
    return served if served.exists() and archive_backend(served) == backend else None


def first_prediction(client: TorchServeClient, name: str, image: bytes, timeout: float = 120) -> None:
    """A real answer, not /ping: proves the workers load and run the model."""
    r = client.predict(name, image, timeout)
    if r.status_code != 200:
        raise RuntimeError(f"first prediction on {name} failed: HTTP {r.status_code} {r.text[:300]}")


def latency_stats(samples_ms: list[float]) -> dict:
    if not samples_ms:
        return {}
    a = np.asarray(samples_ms)
    return {"mean": float(a.mean()), **latency_percentiles(a, POINTS_WITH_P95), "max": float(a.max())}


class Progress:
    """Prints where the sweep is and how long it will take at least / at most."""

    def __init__(self, settings: LoadSettings, levels_total: int, log):
        self.s, self.total, self.done, self.log = settings, levels_total, 0, log
        self.began = time.monotonic()

    def left(self) -> str:
        remaining = self.total - self.done
        low = remaining * (self.s.warmup_s + self.s.min_windows * self.s.window_s)
        high = remaining * (self.s.warmup_s + self.s.max_windows * self.s.window_s)
        return f"{remaining} levels left, {low / 60:.1f}-{high / 60:.1f} min"

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.began
        self.log(f"[load {elapsed / 60:5.1f} min] {message}")


def measure_level(client: TorchServeClient, server_pid: int | None, name: str, users: int, s: LoadSettings,
                  progress: Progress) -> dict:
    """One concurrency level: warm-up, then windows until stable; percentiles over the counted windows.
    TorchServe's metrics are read when ``client`` has a metrics URL (the plain server has none);
    ``server_pid`` is the process whose CPU and memory (with its children's) the host sampler reports.
    ``s.generators`` > 0: the users run in that many Locust worker processes (benchmarks/generators.py)."""
    env = Environment(user_classes=[DetectorUser], host=client.inference_url)
    if s.generators:
        with Generators(env, s.generators, DetectorUser.folder, name, DetectorUser.token) as fleet:
            return _measure(env, fleet.runner, fleet.records, client, server_pid, name, users, s, progress, fleet)
    records: list[tuple[float, float, bool, str]] = []  # finish time, ms, failed, message

    def on_request(response_time, exception=None, **_):
        records.append((time.time(), float(response_time), exception is not None, str(exception or "")[:200]))

    env.events.request.add_listener(on_request)
    return _measure(env, env.create_local_runner(), records, client, server_pid, name, users, s, progress)


def _measure(env: Environment, runner, records: list, client: TorchServeClient, server_pid: int | None, name: str,
             users: int, s: LoadSettings, progress: Progress, fleet: Generators | None = None) -> dict:
    metrics = bool(client.metrics_url)
    host, gpu = HostSampler(server_pid), GpuSampler()
    gauges: list[dict] = []
    sampling = {"on": False}

    def sampler():
        while True:
            gevent.sleep(s.sample_interval_s)
            if sampling["on"]:
                host.sample()
                gpu.sample()
                if metrics:
                    with contextlib.suppress(requests.RequestException):
                        gauges.append(model_values(scrape(client), name))

    runner.start(users, spawn_rate=users)
    sampler_greenlet = gevent.spawn(sampler)
    try:
        gevent.sleep(s.warmup_s)
        windows: list[dict] = []
        while len(windows) < s.max_windows:
            start_scrape = scrape(client) if metrics else None
            host.reset()
            gpu.reset()
            gauges.clear()
            sampling["on"] = True
            start = time.time()
            gevent.sleep(s.window_s)
            end = time.time()
            sampling["on"] = False
            if fleet:  # the window's last answers are still on their way from the workers
                gevent.sleep(REPORT_INTERVAL_S + 0.5)
            done = [r for r in records if start <= r[0] < end]
            latencies = [r[1] for r in done if not r[2]]
            window = {
                "rps": len(latencies) / (end - start),  # answered requests only: fast errors must not count as speed
                "latencies": latencies,
                "failures": [r[3] for r in done if r[2]],
                "metrics": server_split(start_scrape, scrape(client), gauges, name) if metrics else {},
                "host": host.summary(),
                "gpu": gpu.summary(),
                # the load generators' CPU (100 = one core): Locust's users in this process, or each worker
                "generators": fleet.cpu_between(start, time.time()) if fleet else [host.summary().get("client_cpu_percent", 0.0)],
            }
            windows.append(window)
            recent = windows[-s.min_windows:]
            rates = [w["rps"] for w in recent]
            spread = float((max(rates) - min(rates)) / max(np.mean(rates), 1e-9))
            stable = bool(len(recent) >= s.min_windows and spread <= s.tolerance)
            p99 = latency_stats(window["latencies"]).get("p99", float("nan"))
            progress(f"{name} users={users}: window {len(windows)}/{s.max_windows} {window['rps']:.1f} req/s, "
                     f"p99 {p99:.0f} ms, failures {len(window['failures'])}"
                     + (" (stable)" if stable else "") + f"; {progress.left()}")
            if stable:
                break
    finally:
        if fleet is None:  # a fleet quits its own master runner, and with it the workers
            runner.quit()
        sampler_greenlet.kill()
    counted = windows[-s.min_windows:]
    latencies = [ms for w in counted for ms in w["latencies"]]
    failures = [m for w in counted for m in w["failures"]]
    return {
        "users": users,
        "rps": float(np.mean([w["rps"] for w in counted])),
        "latency_ms": latency_stats(latencies),
        "requests": len(latencies) + len(failures),
        "failures": len(failures),
        "failure_examples": sorted(set(failures))[:3],
        "windows": len(windows),
        "window_rps": [w["rps"] for w in windows],
        "stable": stable,
        "rps_spread": spread,
        "metrics": _mean_dicts([w["metrics"] for w in counted]),  # TorchServe's own, per request / batch
        "host": _mean_dicts([w["host"] for w in counted]),
        "gpu": counted[-1]["gpu"],
        "generators": generator_summary([float(np.mean(cpu)) for cpu in zip(*(w["generators"] for w in counted))]),
    }


def scrape(client: TorchServeClient):
    return parse_prometheus(client.metrics(timeout=10))


def _mean_dicts(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def sweep_progress(profile: Profile, log=print) -> Progress:
    s = profile.load
    return Progress(s, (len(s.plan()) + s.plain * len(s.plain_variants)) * len(s.users), log)


def run(profile: Profile, client: TorchServeClient, frontend_pid: int | None, store: Path, progress: Progress,
        log=print) -> dict:
    """The ``load`` section of summary.json (TorchServe rows). ``store`` is the server's model store;
    variant archives are written there and removed afterwards."""
    s = profile.load
    images = load_images(profile.images)
    plan = s.plan()
    deadline = time.monotonic() + s.max_minutes * 60
    rows, skipped = [], []
    baseline = s.baseline_config()
    for config in plan:
        backend, setting, layout = config.backend, config.batching, config.layout
        label = f"{setting.label} {layout.label}"
        source = archive_for(Path(profile.model_store), backend)
        if source is None:
            skipped.append({"backend": backend, "setting": label,
                            "reason": f"no archive for {backend} in {profile.model_store} (run `make export`)"})
            progress.done += len(s.users)
            log(f"[load] {backend} {label}: skipped, no archive")
            continue
        name = f"bench-{backend}-b{setting.batch_size}-d{setting.max_batch_delay}-w{layout.workers}-t{layout.threads}"
        variant = repack(source, store / f"{name}.mar", batchSize=setting.batch_size, maxBatchDelay=setting.max_batch_delay,
                         minWorkers=layout.workers, maxWorkers=layout.workers, handler={"threads": layout.threads})
        progress(f"registering {name} from {source.name}")
        try:
            # the management API then gives exactly this setting, whatever the archive says
            client.register(variant.name, name, layout.workers, setting.batch_size, setting.max_batch_delay)
            described = client.describe(name)
            first_prediction(client, name, images[0][1])
        except (RuntimeError, requests.RequestException) as exc:  # TorchServeError included
            skipped.append({"backend": backend, "setting": label, "reason": str(exc)[:300]})
            progress.done += len(s.users)
            log(f"[load] {name}: skipped, {exc}")
            with contextlib.suppress(TorchServeError, requests.RequestException):
                client.unregister(name)
            variant.unlink(missing_ok=True)
            continue
        DetectorUser.configure(images, name, client.key("inference") or "", profile.images)
        try:
            for users in s.users:
                if time.monotonic() > deadline:
                    skipped.append({"backend": backend, "setting": label, "users": users,
                                    "reason": f"profile time budget of {s.max_minutes} min spent"})
                    progress.done += 1
                    continue
                level = measure_level(client, frontend_pid, name, users, s, progress)
                progress.done += 1
                rows.append({
                    "server": "torchserve", "backend": backend, "batch_size": setting.batch_size,
                    "max_batch_delay": setting.max_batch_delay, "workers": layout.workers, "threads": layout.threads,
                    "baseline": config == baseline,
                    "served_batch_size": described.get("batchSize"), "served_max_batch_delay": described.get("maxBatchDelay"),
                    "served_workers": len(described.get("workers", [])),
                    **level,
                })
        finally:
            with contextlib.suppress(TorchServeError, requests.RequestException):
                client.unregister(name)
            variant.unlink(missing_ok=True)
    served = Path(profile.model_store) / f"{MODEL}.mar"  # what `make serve` serves: the headline's configuration
    return {
        "images": len(images), "image_folder": str(profile.images), "settings": profile.to_dict()["load"],
        "baseline": {"backend": baseline.backend, "batch_size": baseline.batching.batch_size,
                     "max_batch_delay": baseline.batching.max_batch_delay, "workers": baseline.layout.workers,
                     "threads": baseline.layout.threads},
        "results": rows, "skipped": skipped,
        **({"served": serving_settings(served)} if served.exists() else {}),
    }


def plain_variants(profile: Profile, server_dir: Path) -> list[dict]:
    """The plain servers to measure (``load.plain_variants``): ``naive``, the eager weights in one
    uvicorn process with torch's default threads; ``tuned``, the artifact of the served archive
    (``model_store/deepfake-detector.mar``: what `make serve` serves) in one uvicorn worker per
    usable core, one intra-op thread each. A variant that cannot run says why."""
    from export.serving import usable_cores

    weights = Path(profile.weights).resolve()
    variants = []
    for name in profile.load.plain_variants:
        if name == "naive":
            variants.append({"variant": "naive", "backend": "eager", "artifact": weights, "weights": weights,
                             "workers": 1, "threads": 0})
        elif name == "tuned":
            served = Path(profile.model_store) / f"{MODEL}.mar"
            if not served.exists():
                variants.append({"variant": "tuned", "skip": f"no served archive {served} (run `make archive`)"})
                continue
            backend, artifact = extract_served_model(served, server_dir / "plain-tuned")
            variants.append({"variant": "tuned", "backend": backend, "artifact": artifact,
                             "weights": artifact.with_name("model.safetensors"), "workers": usable_cores(), "threads": 1})
        else:
            raise ValueError(f"unknown plain variant {name!r}; known: naive, tuned")
    return variants


def run_plain(profile: Profile, result: dict, server_dir: Path, progress: Progress) -> None:
    """Measure benchmarks/plain_server.py in each of its variants at the same user levels, with the
    same images, after TorchServe has stopped; its rows (``"server": "plain"``, ``variant``) join
    ``result["results"]``."""
    server_dir.mkdir(parents=True, exist_ok=True)
    for variant in plain_variants(profile, server_dir):
        if "skip" in variant:
            result["skipped"].append({"backend": f"plain {variant['variant']}", "setting": "", "reason": variant["skip"]})
            progress.done += len(profile.load.users)
            continue
        _run_plain_variant(profile, variant, result, server_dir, progress)


def _run_plain_variant(profile: Profile, variant: dict, result: dict, server_dir: Path, progress: Progress) -> None:
    s = profile.load
    images = load_images(profile.images)
    port = Ports.free().inference
    env = {**os.environ, "PLAIN_WEIGHTS": str(variant["weights"]), "PLAIN_BACKEND": variant["backend"],
           "PLAIN_ARTIFACT": str(variant["artifact"]), "PLAIN_THREADS": str(variant["threads"])}
    command = [sys.executable, "-m", "uvicorn", "benchmarks.plain_server:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--workers", str(variant["workers"])]
    label = f"{variant['variant']}: {variant['backend']}, {variant['workers']} process(es) x {variant['threads'] or 'default'} thread(s)"
    progress(f"starting the plain server ({label}) on port {port}")
    with open(server_dir / f"plain_server_{variant['variant']}.log", "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = TorchServeClient(f"http://127.0.0.1:{port}")  # inference only: no metrics endpoint
    try:
        deadline = time.monotonic() + 300  # a loaded host takes a while to start N processes
        answered = 0
        while answered < 2 * variant["workers"]:  # up when it answers real images (each worker, likely)
            try:
                first_prediction(client, MODEL, images[answered % len(images)][1], timeout=30)
                answered += 1
            except (RuntimeError, requests.RequestException) as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    result["skipped"].append({"backend": f"plain {variant['variant']}", "setting": "",
                                              "reason": f"the plain server did not answer: {exc}"})
                    progress.done += len(s.users)
                    return
                time.sleep(0.5)
        DetectorUser.configure(images, MODEL, "", profile.images)
        for users in s.users:
            level = measure_level(client, process.pid, MODEL, users, s, progress)
            progress.done += 1
            result["results"].append({
                "server": "plain", "variant": variant["variant"], "backend": variant["backend"], "batch_size": 1,
                "max_batch_delay": 0, "workers": variant["workers"], "threads": variant["threads"] or os.cpu_count(),
                "baseline": False, **level,
            })
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def serve_and_run(profile: Profile, server_dir: Path, log=print) -> dict:
    """Start an empty TorchServe of our own (token auth on, as in production), run the sweep, stop it."""
    from handler.server import TorchServe

    store = server_dir / "store"
    store.mkdir(parents=True, exist_ok=True)
    top_users = max(profile.load.users)
    server = TorchServe(
        store, {}, run_dir=server_dir,
        # our own sampler measures CPU/RSS/GPU; TorchServe's collector would add load (and imports nvgpu on GPUs)
        properties={"disable_system_metrics": "true", "job_queue_size": max(100, 4 * top_users)},
    )
    log(f"[load] starting TorchServe (logs: {server.log_dir})")
    server.start()
    progress = sweep_progress(profile, log)
    try:
        result = run(profile, server.client, server.pid, store, progress, log)
    finally:
        server.stop()
        log("[load] TorchServe stopped")
    if profile.load.plain:
        run_plain(profile, result, server_dir, progress)
    return result


def attach_and_run(profile: Profile, run_dir: Path, log=print) -> dict:
    """Measure a server that is already running (``make serve``'s, or a test's) and leave it running;
    variant archives go into its model store and are removed afterwards."""
    from handler.server import TorchServe

    server = TorchServe.attach(run_dir)
    if not server.alive():
        raise RuntimeError(f"no running TorchServe recorded in {run_dir}")
    progress = sweep_progress(profile, log)
    result = run(profile, server.client, server.pid, server.model_store, progress, log)
    if profile.load.plain:
        run_plain(profile, result, run_dir / "plain", progress)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="profile name or YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile value")
    parser.add_argument("--server-dir", type=Path, default=Path("build/bench-server"), help="TorchServe's TMPDIR, logs and store")
    parser.add_argument("--attach", type=Path, metavar="RUN_DIR", help="use the running server of this handler.server run folder")
    parser.add_argument("--out", type=Path, required=True, help="write the load section as JSON here")
    parser.add_argument("--processes", type=int, help="Locust worker processes generating the load (load.generators)")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile, args.set + ([f"load.generators={args.processes}"] if args.processes else []))
    if args.attach:
        result = attach_and_run(profile, args.attach)
    else:
        shutil.rmtree(args.server_dir / "store", ignore_errors=True)
        result = serve_and_run(profile, args.server_dir.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
