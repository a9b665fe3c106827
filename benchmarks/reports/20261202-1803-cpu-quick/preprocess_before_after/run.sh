#!/usr/bin/env bash
# before/after preprocessing, alternating: base commit 40afd9e (git archive into /tmp/base) vs this branch
set -e
PY=/work/wt-26/.venv/bin/python
for round in 1 2; do
  (cd /tmp/base && $PY -m benchmarks.preprocess_bench --set preprocess.repeats=3 > /tmp/ba/before-$round.json)
  (cd /work/wt-26 && $PY -m benchmarks.preprocess_bench --set preprocess.repeats=3 --set preprocess.photos=0 --set 'preprocess.detector_sides=[]' > /tmp/ba/after-$round.json)
done
