"""One benchmark run: preprocessing, model-only, end-to-end load and video, then the report.

    python -m benchmarks.run --profile quick                  # `make bench`
    python -m benchmarks.run --profile full                   # `make bench-full`
    python -m benchmarks.run --profile quick --only model --set model.backends=[eager,onnx]
    python -m benchmarks.run --profile quick --only video    # videos/s, frames/s, images beside videos
    python -m benchmarks.run --profile quick --only photos   # 12 MP photos beside 256 px faces, side by side

Writes ``benchmarks/reports/<UTC time>-<device>-<profile>/`` (or --out): summary.json, report.md,
CSVs and plots. The load phase runs in its own process (Locust's gevent patches the standard library),
against a TorchServe this run starts and stops.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import compare, machine, model_bench, photo_bench, preprocess_bench, report, video_bench
from benchmarks.profile import load_profile, resolve

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("preprocess", "model", "load", "video", "photos")


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def before_stages(path: Path) -> dict:
    """What the report needs of an earlier run to put its stage table beside this one."""
    earlier = compare.read_summary(path)
    return {"label": compare.default_label(path, earlier), "created": earlier.get("created"), "preprocess": earlier.get("preprocess")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="profile name (benchmarks/profiles/) or YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile value (YAML)")
    parser.add_argument("--device", default=None, help="model benchmark device (default: cuda when present)")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES), help="phases to run")
    parser.add_argument("--out", type=Path, help="run folder (default: benchmarks/reports/<time>-<device>-<profile>)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (e.g. 'shared machine')")
    parser.add_argument("--attach", type=Path, metavar="RUN_DIR",
                        help="load-test the running server of this handler.server run folder instead of starting one")
    parser.add_argument("--processes", type=int, help="Locust worker processes for the load phase (sets load.generators)")
    parser.add_argument("--before", type=Path, metavar="RUN_DIR",
                        help="an earlier run (folder or summary.json): its preprocessing stages beside this run's in the report")
    args = parser.parse_args(argv)
    if args.processes:
        args.set.append(f"load.generators={args.processes}")

    profile = load_profile(args.profile, args.set)
    device = args.device or model_bench.default_device()
    stamp = datetime.now(timezone.utc)
    out = args.out or ROOT / "benchmarks" / "reports" / f"{stamp:%Y%m%d-%H%M}-{device.split(':')[0]}-{profile.name}"
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    summary = {
        "schema": 1,
        "created": stamp.isoformat(timespec="seconds"),
        "command": command.strip(),
        "profile_file": str(resolve(args.profile)),
        "profile": profile.to_dict(),
        "device": device_label(device),
        "machine": machine.describe(device),
        "notes": args.note,
        **({"before": before_stages(args.before)} if args.before else {}),
    }
    began = time.monotonic()
    print(f"[bench] {profile.name} profile on {summary['device']}; phases: {', '.join(args.only)}; writing {out}", flush=True)

    def save():
        summary["elapsed_s"] = round(time.monotonic() - began, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    if "preprocess" in args.only:
        summary["preprocess"] = preprocess_bench.run(profile, log=lambda m: print(m, flush=True))
        save()
    if "model" in args.only:
        summary["model"] = model_bench.run(profile, device, log=lambda m: print(m, flush=True))
        save()
    if "load" in args.only:
        load_json = out / "load.json"
        cmd = [sys.executable, "-m", "benchmarks.load", "--profile", str(resolve(args.profile)), "--out", str(load_json),
               "--server-dir", str(ROOT / "build" / "bench-server" / out.name)]
        for item in args.set:
            cmd += ["--set", item]
        if args.attach:
            cmd += ["--attach", str(args.attach)]
        result = subprocess.run(cmd, cwd=ROOT)
        if result.returncode != 0 or not load_json.exists():
            summary["load"] = {"results": [], "skipped": [{"backend": "all", "reason": f"load phase exited with {result.returncode}"}]}
        else:
            summary["load"] = json.loads(load_json.read_text())
            load_json.unlink()
        save()
    if "video" in args.only:
        summary["video"] = video_bench.run(profile, ROOT / "build" / "bench-video-server" / out.name, log=lambda m: print(m, flush=True))
        save()
    if "photos" in args.only:
        summary["photos"] = photo_bench.run(profile, ROOT / "build" / "bench-photo-server" / out.name, log=lambda m: print(m, flush=True))
        save()
    path = report.build(out)
    print(f"[bench] done in {(time.monotonic() - began) / 60:.1f} min: {path}", flush=True)
    loaded = "load" not in args.only or summary["load"].get("results")
    videos = "video" not in args.only or summary["video"].get("results")
    photos = "photos" not in args.only or summary["photos"].get("results")
    return 0 if loaded and videos and photos else 1


if __name__ == "__main__":
    sys.exit(main())
