"""Capacity plan from a benchmark report: how many replicas, workers per replica and which batch
settings serve a target rate within a target p99, with the arithmetic printed.

    python -m deploy.plan --summary benchmarks/reports/<run>/summary.json --rps 300 --p99-ms 250 \
        [--headroom 0.3] [--burst 2] [--values-out build/plan.yaml]

One replica is taken to be the machine the benchmark measured (its cores or its GPU): the plan picks
the measured TorchServe setting with the most requests/s among those that met the p99 with no failed
request, plans each replica at ``1 - headroom`` of that rate, and sizes CPU and memory from what
the server used at that point. ``--values-out`` writes these numbers as values for ``deploy.k8s``
and ``deploy.layout``. docs/SCALING.md explains the model and its limits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

MEMORY_STEP_MIB = 256
MEMORY_MARGIN = 1.25  # resident memory grows with in-flight bodies; 25 % over the measured peak average


class PlanError(ValueError):
    """No measured setting can serve the target (the message says what came closest)."""


@dataclass(frozen=True)
class Plan:
    point: dict  # the chosen load result of summary.json
    replicas: int
    max_replicas: int
    cpu: int  # cores per replica: the measured machine's
    memory_mib: int
    concurrency: int
    cpu_target_percent: int
    lines: list[str]  # the arithmetic, for people

    def values(self, device: str) -> dict:
        p = self.point
        return {
            "device": "gpu" if device == "cuda" else "cpu",
            "replicas": self.replicas, "max_replicas": self.max_replicas,
            "workers": p["workers"], "threads": p["threads"],
            "batch_size": p["batch_size"], "max_batch_delay_ms": p["max_batch_delay"],
            "concurrency": self.concurrency,
            "cpu_request": str(self.cpu), "cpu_limit": str(self.cpu), "memory": f"{self.memory_mib}Mi",
            "cpu_target_percent": self.cpu_target_percent,
        }


def setting(p: dict) -> str:
    return f"{p['backend']}, batch {p['batch_size']} within {p['max_batch_delay']} ms, {p['workers']} workers x {p['threads']} threads"


def plan(summary: dict, rps: float, p99_ms: float, headroom: float = 0.3, burst: float = 2.0) -> Plan:
    if rps <= 0 or p99_ms <= 0 or not 0 <= headroom < 1 or burst < 1:
        raise ValueError("need rps > 0, p99 > 0, 0 <= headroom < 1 and burst >= 1")
    measured = [r for r in summary["load"]["results"] if r["server"] == "torchserve" and r.get("latency_ms")]
    clean = [r for r in measured if r["failures"] == 0 and r.get("stable", True)]
    fitting = [r for r in clean if r["latency_ms"]["p99"] <= p99_ms]
    machine = summary["machine"]
    lines = [
        f"target: {rps:g} requests/s with p99 <= {p99_ms:g} ms",
        f"measured: {len(measured)} TorchServe load levels on {summary['device']} ({machine.get('cpu', '?')}, "
        f"{machine.get('cpu_count', '?')} cores); {len(clean)} stable without failures, {len(fitting)} of them within the p99",
    ]
    if not fitting:
        closest = min(clean or measured, key=lambda r: r["latency_ms"]["p99"], default=None)
        best = f"; the lowest measured p99 is {closest['latency_ms']['p99']:.0f} ms ({setting(closest)}, {closest['users']} users)" if closest else ""
        raise PlanError(f"no measured setting meets p99 <= {p99_ms:g} ms{best}: more replicas cannot lower a "
                        "per-request latency; measure lower concurrency or a faster backend")
    point = max(fitting, key=lambda r: (r["rps"], -r["latency_ms"]["p99"]))
    usable = point["rps"] * (1 - headroom)
    replicas = math.ceil(rps / usable)
    max_replicas = math.ceil(replicas * burst)
    host = point.get("host") or {}
    used_cpu = (host.get("workers_cpu_percent", 0) + host.get("frontend_cpu_percent", 0)) / 100
    cpu = int(machine.get("cpu_count") or math.ceil(used_cpu))
    rss = host.get("workers_rss_mib", 0) + host.get("frontend_rss_mib", 0)
    memory = math.ceil(rss * MEMORY_MARGIN / MEMORY_STEP_MIB) * MEMORY_STEP_MIB
    concurrency = max(1, math.floor(point["users"] * (1 - headroom)))
    target = round(100 * (1 - headroom))
    mean = point["latency_ms"]["mean"]
    lines += [
        f"per replica, best within the p99: {setting(point)}: {point['rps']:.1f} req/s at {point['users']} users, "
        f"p99 {point['latency_ms']['p99']:.0f} ms (Little's law: {point['users']} users / {mean:.0f} ms mean = "
        f"{1000 * point['users'] / mean:.0f} req/s)",
        f"planned per replica at {1 - headroom:.0%} of it (headroom {headroom:.0%}): {point['rps']:.1f} x {1 - headroom:.2f} = {usable:.1f} req/s",
        f"replicas: ceil({rps:g} / {usable:.1f}) = {replicas}; at most {replicas} x {burst:g} (burst) = {max_replicas}",
        f"in-flight requests per replica (KServe's scale target): floor({point['users']} x {1 - headroom:.2f}) = {concurrency}",
        f"cpu per replica: {cpu} cores, the measured machine's (TorchServe used {used_cpu:.2f} there); "
        f"autoscale above {target} % average CPU",
        f"memory per replica: ({host.get('workers_rss_mib', 0):.0f} workers + {host.get('frontend_rss_mib', 0):.0f} frontend MiB) "
        f"x {MEMORY_MARGIN} = {rss * MEMORY_MARGIN:.0f} MiB -> {memory} MiB (request = limit)",
        f"total: {replicas * cpu} cores and {replicas * memory / 1024:.1f} GiB at {replicas} replicas, "
        f"{replicas * point['workers']} workers; serve the {point['backend']} archive",
    ]
    return Plan(point, replicas, max_replicas, cpu, memory, concurrency, target, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, required=True, help="a benchmark report's summary.json")
    parser.add_argument("--rps", type=float, required=True, help="requests/s to serve")
    parser.add_argument("--p99-ms", type=float, required=True, help="99th percentile latency to stay within")
    parser.add_argument("--headroom", type=float, default=0.3, help="share of a replica's measured rate kept free")
    parser.add_argument("--burst", type=float, default=2.0, help="maximum replicas as a multiple of the planned ones")
    parser.add_argument("--values-out", type=Path, help="write the plan as deploy values (YAML)")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    try:
        result = plan(summary, args.rps, args.p99_ms, args.headroom, args.burst)
    except PlanError as exc:
        print(f"no plan: {exc}", file=sys.stderr)
        return 2
    print(f"from {args.summary}")
    print("\n".join(result.lines))
    if args.values_out:
        args.values_out.parent.mkdir(parents=True, exist_ok=True)
        args.values_out.write_text(f"# python -m deploy.plan --summary {args.summary} --rps {args.rps:g} --p99-ms {args.p99_ms:g}\n"
                                   + yaml.safe_dump(result.values(summary["device"]), sort_keys=False))
        print(f"wrote {args.values_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
