# The project's vocabulary. `make run` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8080
# Container image: podman here (../shared/tools/podman-setup.sh), or ENGINE=docker BUILD_FLAGS=.
ENGINE ?= podman
IMAGE  ?= bird-classifier
BUILD_FLAGS ?= --pull=never --network host
BROWSER_DIR := tests/browser
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)
# Go for knative/check (on PATH, or where the machines install it).
GO     ?= $(or $(shell command -v go),/usr/local/go/bin/go)
KNATIVE_CHECK := build/knative-check
MANIFESTS ?= $(wildcard knative/*.yaml knative/cloudrun/*.yaml)

.PHONY: model run serve serve-events test test-network test-browser browser-tools lint knative-check format bench loadtest clean image image-test kube-test

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

## Classify the five default photos (or: make run PHOTOS="url1 url2").
run: $(VENV)/.installed
	$(PY) main.py $(PHOTOS)

## Convert MODEL_URL (default: the TF Hub birds module) to a .tflite for LiteRT, into the model cache;
## prints where it went, its size and the measured TensorFlow-vs-LiteRT difference. Also: OUT=path.
model: $(VENV)/.installed
	$(PY) -m function.model $(MODEL_URL) $(if $(OUT),--out $(OUT))

## The HTTP API on $(PORT): gunicorn with gunicorn.conf.py (header deadline, request-line limit) and
## functions-framework's app, as the image runs it.
serve: $(VENV)/.installed
	PORT=$(PORT) $(VENV)/bin/gunicorn --config gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'

## The CloudEvent target on $(PORT), for local events: a trusted route (EVENT_AUTH=none, logged as a
## WARNING) unless EVENT_AUTH is set; a deployment sets the proofs its platform gives (README).
serve-events: $(VENV)/.installed
	EVENT_AUTH=$${EVENT_AUTH:-none} $(VENV)/bin/functions-framework --target classify_event --signature-type cloudevent --port $(PORT)

## The offline test suite (generated model and photos on 127.0.0.1).
test: $(VENV)/.installed-test
	$(PY) -m pytest

## The web page in headless Chromium (tests/api/test_browser.py), the browser tools installed first.
## `make test` runs it too when they are there (CI installs them), and skips it with the reason if not.
test-browser: browser-tools $(VENV)/.installed-test
	$(PY) -m pytest tests/api/test_browser.py

## Debian's Chromium (apt, as root) and playwright-core (npm, into tests/browser/node_modules).
browser-tools: $(BROWSER_DIR)/node_modules/.installed
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

$(BROWSER_DIR)/node_modules/.installed: $(BROWSER_DIR)/package.json
	cd $(BROWSER_DIR) && npm install --no-package-lock --no-audit --no-fund --silent
	touch $@

## The real model and the default photos, over the internet (opt in).
test-network: $(VENV)/.installed-test
	$(PY) -m pytest -m network

## The benchmark (bench/run.py), on a stand-in internet (127.0.0.1; ~7 minutes): the CLI's first, back-to-back
## second and repeat runs against the naive original, the service's cold start, 8-client throughput against
## the decode+inference ceiling and RSS against the TensorFlow service (started as the image starts it),
## the container's cold start (needs $(IMAGE): make image; skipped with the reason otherwise), the
## service's import chain and one 40-photo request on 1 and 2 instances (scaleout). Prints one table with the targets as PASS/MISS; writes bench/results/latest.json.
## Smoke run: make bench BENCH_ARGS=--quick; a subset: BENCH_ARGS="--only cli,service"; what a setting
## costs: BENCH_ARGS="--only compare --compare DECODE_WORKERS=0,DECODE_WORKERS=2". docs/performance.md.
bench: $(VENV)/.installed-test
	$(PY) -m bench.run --image $(IMAGE) --engine $(ENGINE) $(BENCH_ARGS)

## The load test (bench/loadtest.py; not in CI; about 3.5 minutes), on 127.0.0.1, the service started as
## the image starts it (harness/: gunicorn + gunicorn.conf.py). Normal load: 16 clients send
## good photos and hostile inputs; fails on any 5xx, wrong answer, RSS growth >= 10 % or threads/sockets
## not back to baseline. Then the hostile phase (bench/attacks.py), with the image's settings:
## 45 s of attacks (slow clients, big bodies, query bomb, stalled photo hosts, decompression bombs, de-dup
## flood, bad storage events) mixed with normal clients; fails on any 5xx, a normal request over its bound
## (1 photo 10 s, 5 photos 15 s), peak RSS over 75 % of the pod's memory limit (knative/service.yaml; the service
## is then killed, as the OOM killer would) or RSS not within 20 % of its pre-attack level 30 s after.
## Results in bench/results/loadtest.json; docs/reliability.md, "Hostile phase". Smoke run:
## make loadtest LOADTEST_ARGS="--duration 10 --warmup 5 --attack 10 --settle 10"; also --no-hostile,
## --hostile-only, --skip ATTACK,...
loadtest: $(VENV)/.installed-test
	$(PY) -m bench.loadtest $(LOADTEST_ARGS)

## ruff, the import contracts (pyproject.toml: one direction of flow), strict mypy on function/, hadolint,
## and Knative 1.18's own admission checks on the manifests (make knative-check).
lint: $(VENV)/.installed-test knative-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

## Knative 1.18's own admission checks (SetDefaults + Validate of Serving and Eventing), offline,
## on knative/*.yaml and knative/cloudrun/*.yaml, or: make knative-check MANIFESTS="a.yaml b.yaml". Exit 0 when every object
## passes, non-zero with Knative's messages. The first build downloads the Go modules (~160 MB
## into Go's module cache) and takes 1-2 minutes; the binary is kept in build/ until the source changes.
knative-check: $(KNATIVE_CHECK)
	$(KNATIVE_CHECK) $(MANIFESTS)

$(KNATIVE_CHECK): knative/check/main.go knative/check/go.mod knative/check/go.sum
	cd knative/check && GOFLAGS=-mod=mod $(GO) build -trimpath -ldflags=-s -o $(CURDIR)/$@ .

## The container image (Dockerfile): the build stage converts MODEL_URL to .tflite (needs TF Hub, or
## BUILD_FLAGS="--build-arg MODEL_URL=... --build-arg LABELS_URL=..."); the image carries model and labels.
image:
	$(ENGINE) build $(BUILD_FLAGS) -t $(IMAGE) .

## Build the image, run it against a stand-in hub on 127.0.0.1, classify two photos (not in CI).
image-test: $(VENV)/.installed
	ENGINE=$(ENGINE) IMAGE=$(IMAGE) BUILD_FLAGS="$(BUILD_FLAGS)" PY=$(PY) tests/image/smoke.sh

## knative/service.yaml's pod spec as written (securityContext, read-only root, emptyDirs, probes, resources),
## played with `podman kube play` against a stand-in hub on 127.0.0.1; classifies two photos (not in CI).
## Builds the image first; KUBE_TEST_BUILD=0 reuses $(IMAGE). See tests/kube/play.py for the translations.
KUBE_TEST_BUILD ?= 1
kube-test: $(VENV)/.installed-test
	$(if $(filter 0,$(KUBE_TEST_BUILD)),,$(MAKE) image-test)
	ENGINE=$(ENGINE) IMAGE=$(IMAGE) $(PY) tests/kube/play.py

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
