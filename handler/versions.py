"""Model versions on a running server (host side), with TorchServe's own versioning and management API.

    python -m handler.versions next --run-dir build/serve            # the version a new candidate gets
    python -m handler.versions candidate --run-dir build/serve --archive deepfake-detector.v2.0.mar
    python -m handler.versions promote --run-dir build/serve         # the newest candidate becomes the default
    python -m handler.versions rollback --run-dir build/serve        # the previous default is the default again
    python -m handler.versions list --run-dir build/serve            # version, weights sha256, which is default

``make candidate WEIGHTS=...`` packs the weights as the archive ``<model>.v<N>.0.mar`` of the next
version (``export.serving --version``: the same export and parity checks as ``make serve``), then
registers it beside the default with its own workers: ``/predictions/<model>/<N>.0`` reaches it, and
``/predictions/<model>`` still reaches the default. ``promote`` and ``rollback`` call TorchServe's
``set-default``: requests already queued finish on the version they reached, new ones go to the new
default, and no worker is stopped, so no request fails. Every answer's ``model.version`` says which
version answered (the archive's manifest), and every record keeps it, so ``records_cli quality``
compares versions on the same traffic.

The order of defaults (for ``rollback``) is kept in ``<run dir>/versions-<model>.json``; what is
registered and which version is the default are always read back from TorchServe itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import zipfile
from pathlib import Path

import requests

from handler.payload import PROBE_HEADER
from handler.server import ROOT, ServerError, TorchServe
from handler.tsclient import probe_image
from runtime.artifacts import MODEL_NAME


class VersionError(RuntimeError):
    pass


def history_path(run_dir: Path, model: str) -> Path:
    return Path(run_dir) / f"versions-{model}.json"


def read_history(run_dir: Path, model: str) -> dict:
    """{"defaults": [versions in the order they became the default], "candidates": [in registration order]}"""
    path = history_path(run_dir, model)
    return json.loads(path.read_text()) if path.exists() else {"defaults": [], "candidates": []}


def write_history(run_dir: Path, model: str, history: dict) -> None:
    path = history_path(run_dir, model)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(history, indent=2) + "\n")
    partial.replace(path)


def weights_sha256(archive: Path) -> str | None:
    """The sha256 of the eager weights an archive carries (every archive does, beside its artifact)."""
    try:
        with zipfile.ZipFile(archive) as mar:
            name = next((n for n in mar.namelist() if n.endswith("model.safetensors")), None)
            return hashlib.sha256(mar.read(name)).hexdigest() if name else None
    except (OSError, zipfile.BadZipFile):
        return None


def registered(server: TorchServe, model: str) -> list[dict]:
    """Every registered version of ``model`` as TorchServe describes it, with ``default`` marked (the
    version whose archive the model list names) and the weights' sha256."""
    described = server.management("GET", f"/models/{model}/all", timeout=30)
    if described.status_code != 200:
        raise VersionError(f"{model} is not registered on this server: HTTP {described.status_code} {described.text[:200]}")
    listed = server.management("GET", "/models", params={"limit": 1000}, timeout=30).json().get("models", [])
    default_url = next((m["modelUrl"] for m in listed if m["modelName"] == model), None)
    return [{"version": d["modelVersion"], "archive": d["modelUrl"], "default": d["modelUrl"] == default_url,
             "workers": len(d.get("workers", [])), "weights_sha256": weights_sha256(server.model_store / d["modelUrl"])}
            for d in described.json()]  # fmt: skip


def default_version(server: TorchServe, model: str) -> str:
    return next(v["version"] for v in registered(server, model) if v["default"])


def next_version(server: TorchServe, model: str) -> str:
    """One more than the highest major version registered or ever a candidate: ``2.0``, ``3.0``, ..."""
    history = read_history(server.run_dir, model)
    known = [v["version"] for v in registered(server, model)] + history["candidates"] + history["defaults"]
    majors = [int(float(v)) for v in known if v.replace(".", "", 1).isdigit()]
    return f"{max(majors, default=0) + 1}.0"


def wait_for_version(server: TorchServe, model: str, version: str, timeout: float = 600) -> None:
    """Until ``/predictions/<model>/<version>`` answers a real image (sent as a probe: no record)."""
    deadline, last = time.monotonic() + timeout, "no answer yet"
    while time.monotonic() < deadline:
        try:
            answer = server.predict(f"{model}/{version}", probe_image(), timeout=10, headers={PROBE_HEADER: "1"})
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(1.0)
    raise VersionError(f"{model} {version} gave no prediction in {timeout:.0f} s (last: {last})")


def add_candidate(server: TorchServe, archive: str, model: str = MODEL_NAME, workers: int = 1, timeout: float = 600) -> str:
    """Register an archive of the model store as another version of ``model``, beside the default,
    with its own workers; returns its version once it answers."""
    history = read_history(server.run_dir, model)
    if not history["defaults"]:
        history["defaults"] = [default_version(server, model)]
    before = {v["version"] for v in registered(server, model)}
    params = {"url": archive, "model_name": model, "initial_workers": workers, "synchronous": "true"}
    answer = server.management("POST", "/models", params=params, timeout=timeout)
    if answer.status_code != 200:
        raise VersionError(f"registering {archive} failed: HTTP {answer.status_code} {answer.text[:300]}")
    version = next(v["version"] for v in registered(server, model) if v["archive"] == archive)
    if version in before:
        raise VersionError(f"{archive} has version {version}, which was already registered")
    wait_for_version(server, model, version, timeout)
    history["candidates"].append(version)
    write_history(server.run_dir, model, history)
    return version


def set_default(server: TorchServe, model: str, version: str) -> None:
    answer = server.management("PUT", f"/models/{model}/{version}/set-default", timeout=60)
    if answer.status_code != 200:
        raise VersionError(f"making {model} {version} the default failed: HTTP {answer.status_code} {answer.text[:300]}")


def promote(server: TorchServe, model: str = MODEL_NAME) -> str:
    """The newest candidate still registered becomes the default; returns it."""
    history = read_history(server.run_dir, model)
    versions = {v["version"]: v for v in registered(server, model)}
    current = next(v for v, d in versions.items() if d["default"])
    waiting = [v for v in history["candidates"] if v in versions and v != current]
    if not waiting:
        raise VersionError(f"no candidate to promote: {model} {current} is the default and no newer version is registered")
    set_default(server, model, waiting[-1])
    history["defaults"] = [*(history["defaults"] or [current]), waiting[-1]]
    write_history(server.run_dir, model, history)
    return waiting[-1]


def rollback(server: TorchServe, model: str = MODEL_NAME) -> str:
    """The default before the current one is the default again; returns it."""
    history = read_history(server.run_dir, model)
    versions = {v["version"] for v in registered(server, model)}
    current = default_version(server, model)
    earlier = [v for v in history["defaults"][:-1] if v in versions and v != current]
    if not earlier:
        raise VersionError(f"nothing to roll back to: {model} {current} is the first default still registered")
    set_default(server, model, earlier[-1])
    history["defaults"] = [*history["defaults"][: history["defaults"].index(earlier[-1])], earlier[-1]]
    write_history(server.run_dir, model, history)
    return earlier[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Model versions of a running server: candidate, promote, rollback, list.")
    parser.add_argument("action", choices=["next", "candidate", "promote", "rollback", "list"])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "build/serve")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--archive", help="candidate: the archive's file name in the server's model store")
    parser.add_argument("--workers", type=int, default=1, help="candidate: its workers")
    args = parser.parse_args(argv)
    if not (args.run_dir / "server.json").exists():
        sys.exit(f"no server recorded in {args.run_dir}: run `make serve` first")
    server = TorchServe.attach(args.run_dir)
    try:
        if args.action == "next":
            print(next_version(server, args.model))
        elif args.action == "candidate":
            if not args.archive:
                parser.error("candidate needs --archive")
            version = add_candidate(server, args.archive, args.model, args.workers)
            print(f"{args.model} {version} registered beside the default: /predictions/{args.model}/{version}; `make promote` makes it the default")
        elif args.action in ("promote", "rollback"):
            version = (promote if args.action == "promote" else rollback)(server, args.model)
            print(f"{args.model} {version} is the default")
        else:
            print(f"{'version':8}  {'default':7}  {'workers':7}  archive / weights sha256")
            for v in registered(server, args.model):
                print(f"{v['version']:8}  {'yes' if v['default'] else '':7}  {v['workers']:7}  {v['archive']}  {v['weights_sha256'] or '?'}")
    except (VersionError, ServerError, requests.RequestException) as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
