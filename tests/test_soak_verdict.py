"""The soak's pass/fail (benchmarks/soak.py: ``summarise``, ``rss_growth``, ``Timeline.window``) from
constructed measurements, against numbers worked out by hand. No server and no load: the rows are
what Locust's request event and the RSS sampler would have produced."""

from __future__ import annotations

import os
from argparse import Namespace

import numpy as np
import pytest

# Importing Locust monkey-patches the standard library for gevent (the whole pytest process, and
# threads other tests start); the verdict needs none of that. Restored at once: subprocesses that run
# Locust for real (test_bench_load.py) must not inherit the switch.
_previous = os.environ.get("LOCUST_SKIP_MONKEY_PATCH")
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
try:
    from benchmarks.soak import Timeline, rss_growth, summarise
finally:
    if _previous is None:
        del os.environ["LOCUST_SKIP_MONKEY_PATCH"]
    else:
        os.environ["LOCUST_SKIP_MONKEY_PATCH"] = _previous

ARGS = Namespace(duration=600.0, steady=60.0, rss_growth_limit=0.10, warmup=60.0, users=32)


def requests_(*latencies_ms: float, failed: tuple[int, ...] = ()) -> np.ndarray:
    """(end time, latency ms, failed) rows, one per latency; indices in ``failed`` failed."""
    return np.array([(float(i), ms, float(i in failed)) for i, ms in enumerate(latencies_ms)]).reshape(-1, 3)


def rss(process: str, pid: int, *samples: tuple[float, float], phase: str = "run") -> list[dict]:
    return [{"phase": phase, "t_s": t, "process": process, "pid": pid, "rss_mb": mb} for t, mb in samples]


# frontend: first minute 100, 102 (median 101); last minute 105, 107 (median 106): 106/101 - 1 = +4.95 %
# worker:   200, 200 -> 210, 214: 200 -> 212, +6 %. Samples in between are in neither median.
STEADY = rss("frontend", 1, (0, 100), (30, 102), (300, 400), (570, 105), (600, 107)) + rss(
    "worker-0", 2, (0, 200), (60, 200), (300, 900), (540, 210), (600, 214)
)


def verdict(data=None, warmup=None, rss_rows=STEADY, seconds=2.0, args=ARGS):
    data = requests_(100, 200, 300, 400) if data is None else data
    warmup = requests_(50) if warmup is None else warmup
    return summarise(args, ["--duration", "600"], data, seconds, warmup, {}, rss_rows)


def test_a_clean_run_passes_with_hand_computed_numbers():
    summary = verdict()
    assert summary["missed"] == [] and summary["passed"] is True
    assert (summary["requests"], summary["failures"], summary["warmup_requests"], summary["warmup_failures"]) == (4, 0, 1, 0)
    assert summary["rps"] == 2.0  # 4 requests in 2 s
    # linear interpolation between order statistics: p50 halfway 200..300, p99 at 2.97 of 0..3
    assert (summary["p50_ms"], summary["p99_ms"], summary["max_ms"]) == (250.0, 397.0, 400.0)
    growth = {p["process"]: p for p in summary["processes"]}
    assert growth["frontend"]["rss_start_mb"] == 101.0 and growth["frontend"]["rss_end_mb"] == 106.0
    assert growth["frontend"]["growth"] == 0.0495 and growth["frontend"]["rss_max_mb"] == 400
    assert growth["worker-0"]["growth"] == 0.06 and growth["worker-0"]["pids"] == [2]
    assert summary["worst_rss_growth"] == 0.06
    assert summary["command"] == "python -m benchmarks.soak --duration 600"


def test_failed_requests_miss_and_stay_out_of_the_latencies():
    summary = verdict(data=requests_(100, 200, 300, 400, 120_000, failed=(4,)))
    assert summary["missed"] == ["1 failures, 0 in warm-up"] and summary["passed"] is False
    assert summary["requests"] == 5 and summary["failures"] == 1
    assert (summary["p50_ms"], summary["max_ms"]) == (250.0, 400.0)  # the timed-out request is not a latency


def test_a_failure_in_the_warm_up_alone_misses():
    summary = verdict(warmup=requests_(50, 60, failed=(1,)))
    assert summary["missed"] == ["0 failures, 1 in warm-up"] and not summary["passed"]


def test_rss_growth_at_the_limit_misses_and_just_below_passes():
    at_limit = rss("worker-0", 2, (0, 100), (600, 110))  # +10.0 %: the limit is "below 10 %"
    summary = verdict(rss_rows=at_limit)
    assert summary["worst_rss_growth"] == 0.1 and summary["missed"] == ["RSS growth +10.0%"]
    below = rss("worker-0", 2, (0, 100), (600, 109.9))  # +9.9 %
    assert verdict(rss_rows=below)["passed"]


def test_a_restarted_worker_misses():
    """A new pid under the same name mid-run: a restart, even when its memory looks fine."""
    restarted = STEADY + rss("worker-0", 3, (300, 200))
    summary = verdict(rss_rows=restarted)
    assert summary["missed"] == ["restarted: worker-0"]
    assert {p["process"]: p["pids"] for p in summary["processes"]}["worker-0"] == [2, 3]


def test_a_process_missing_at_one_end_misses():
    """A worker that died before the last minute has no end RSS: not measured, which misses."""
    died = STEADY + rss("worker-1", 4, (0, 200), (120, 205))
    summary = verdict(rss_rows=died)
    assert summary["missed"] == ["RSS not measured at both ends: worker-1"]
    assert {p["process"]: p["growth"] for p in summary["processes"]}["worker-1"] is None
    assert summary["worst_rss_growth"] == 0.06  # the measured ones still count


def test_no_rss_samples_at_all_misses():
    assert verdict(rss_rows=[])["missed"] == ["RSS not measured at both ends: no process"]
    # samples from before the measured period do not count as measurements
    assert verdict(rss_rows=rss("frontend", 1, (-60, 100), phase="before"))["missed"] == ["RSS not measured at both ends: no process"]


def test_every_missed_target_is_listed_in_order():
    data = requests_(100, 200, failed=(0, 1))
    rows = rss("frontend", 1, (0, 100), (600, 150)) + rss("worker-0", 2, (0, 100)) + rss("worker-0", 5, (600, 100))
    summary = verdict(data=data, warmup=requests_(10, failed=(0,)), rss_rows=rows)
    assert summary["missed"] == ["2 failures, 1 in warm-up", "restarted: worker-0", "RSS growth +50.0%"]
    assert summary["p50_ms"] is None and summary["p99_ms"] is None and summary["max_ms"] is None  # nothing answered


def test_the_steady_windows_follow_the_settings():
    rows = rss("frontend", 1, (0, 100), (100, 120), (500, 130), (600, 140))
    wide = Namespace(**{**vars(ARGS), "steady": 120.0})
    # 60 s ends: 100 -> 140 (+40 %); 120 s ends: median(100, 120) = 110 -> median(130, 140) = 135 (+22.73 %)
    assert rss_growth(ARGS, rows)[0]["growth"] == 0.4
    assert rss_growth(wide, rows)[0]["growth"] == pytest.approx(0.2273, abs=1e-4)


def test_a_timeline_window_counts_only_its_own_requests():
    timeline = Timeline()
    timeline.rows = [(9.99, 50.0, False), (10.0, 100.0, False), (12.0, 300.0, False), (15.0, 9_000.0, True), (20.0, 70.0, False)]
    window = timeline.window(10.0, 10.0, origin=0.0)  # [10, 20): three requests, one failed
    assert window == {"t_s": 20.0, "requests": 3, "failures": 1, "rps": 0.3, "p50_ms": 200.0, "p99_ms": 298.0}
    assert timeline.window(30.0, 10.0, origin=0.0) == {"t_s": 40.0, "requests": 0, "failures": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None}
