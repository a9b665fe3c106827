#!/usr/bin/env bash
# Preprocessing before/after, alternated: the base commit (a worktree at BASE, default /tmp/base:
# `git worktree add /tmp/base 40afd9e`) beside this checkout, two rounds, into OUT (default /tmp/ba):
# each file holds the benchmark's log lines, then its JSON summary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../../.." && pwd)"
BASE="${BASE:-/tmp/base}"
OUT="${OUT:-/tmp/ba}"
PY="$ROOT/.venv/bin/python"
mkdir -p "$OUT"
for round in 1 2; do
  (cd "$BASE" && "$PY" -m benchmarks.preprocess_bench --set preprocess.repeats=3 > "$OUT/before-$round.json")
  (cd "$ROOT" && "$PY" -m benchmarks.preprocess_bench --set preprocess.repeats=3 --set preprocess.photos=0 \
       --set 'preprocess.detector_sides=[]' > "$OUT/after-$round.json")
done
