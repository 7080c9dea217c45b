# The bird classifier's HTTP target, as the container of a Knative Service (knative/service.yaml).
#
#   make image        # podman/docker build -t bird-classifier .   (needs TF Hub and gstatic)
#   make image-test   # build against a stand-in hub on 127.0.0.1, run it, classify, check the pins
#
# Two stages. The first has TensorFlow and tensorflow_hub, the model's source: it downloads
# MODEL_URL through tensorflow_hub's cache, converts it to a float32 .tflite (checked against
# TensorFlow's scores; function/model/convert.py) and fetches the label map. The final stage has
# only what serving needs (requirements-serve.txt: LiteRT, no TensorFlow) and carries the converted
# model and the label map, so the revision's image pins its model and a new instance starts without
# TensorFlow and without waiting on the hub. MODEL_URL / LABELS_URL can still point elsewhere at run
# time (a .tflite runs as is; a TF Hub module needs TensorFlow, which this image refuses clearly).
ARG MODEL_URL=https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1
ARG LABELS_URL=https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv

FROM python:3.11-slim AS model
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=3
WORKDIR /build
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY function/ function/
ARG MODEL_URL
ARG LABELS_URL
# The label map by the function's own loader (so a bad one fails the build), written as CSV again.
RUN python -m function.model "${MODEL_URL}" --cache-dir /tmp/model-cache --out /model/model.tflite \
    && python -c "import sys, requests; from function.core.labels import LabelMap; \
r = requests.get(sys.argv[1], timeout=60); r.raise_for_status(); n = len(LabelMap.parse(r.text)); \
open('/model/labels.csv', 'wb').write(r.content); print(f'label map: {n} labels')" "${LABELS_URL}" \
    && printf '%s\n' "${MODEL_URL}" > /model/SOURCE

FROM python:3.11-slim

# PYTHONUNBUFFERED: log lines reach the cluster's log collector as they are written.
# PYTHONDONTWRITEBYTECODE: the code directory is read-only to the service user; do not try (the
# code layer carries its bytecode, compiled at build).
# PIP_*: no cache in the layer, no version check, no warning about installing as root.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependency layer first: serving only (LiteRT, functions-framework, Pillow, numpy...), no
# TensorFlow; it changes only with requirements-serve.txt.
# botocore ships the API models of every AWS service (28 MB); object reads need S3's, and the
# credential chain STS's (web identity, IRSA) and SSO's: the rest is removed, as are the packages'
# own test suites (17 MB, numpy's most of it). 530 -> 493 MB on this machine's stand-in base image.
COPY requirements-serve.txt .
RUN pip install --no-cache-dir -r requirements-serve.txt \
    && python -c "import botocore, numpy, pathlib, shutil; \
data = pathlib.Path(botocore.__file__).parent / 'data'; \
[shutil.rmtree(d) for d in data.iterdir() if d.is_dir() and d.name not in {'s3', 'sts', 'sso', 'sso-oidc'}]; \
site = pathlib.Path(numpy.__file__).parent.parent; \
[shutil.rmtree(d, ignore_errors=True) for d in list(site.glob('*/tests')) + list(site.glob('*/*/tests'))]"

# A system user with no login and no home, numeric so Kubernetes' runAsNonRoot can verify it. It
# owns nothing in /app or /opt (read-only to it), only the cache directory, which the Service's
# emptyDir replaces (a plain `podman run` uses the image's directory).
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /var/cache/tfhub \
    && chown app:app /var/cache/tfhub

# The model layer: the converted flatbuffer with its manifest (source, sha256, the measured
# TensorFlow-vs-LiteRT difference), the label map, and the handle it came from.
COPY --from=model /model/ /opt/bird-classifier/

# Code layer: only what the function reads: its code, the web page under function/api/static/, and
# the OpenAPI contract it serves as /openapi.json (see .dockerignore for what stays out).
COPY main.py openapi.yaml gunicorn.conf.py ./
COPY function/ function/
# Compiled here, once: otherwise every cold start compiles the function's modules from source before
# it can answer (each start is a fresh container, and the service user could not keep them anyway).
RUN python -m compileall -q main.py gunicorn.conf.py function

# PORT: Knative sets it (8080 unless the Service says otherwise); 8080 for a plain `run`.
# MODEL_URL / LABELS_URL: the files this image carries (override to serve another model).
# MODEL_CACHE_DIR / TFHUB_CACHE_DIR: where a .tflite named by URL at run time is downloaded; the
#   Service mounts an emptyDir on it.
# WORKERS=1: one process; LiteRT runs one single-threaded interpreter per model-call worker (one per
#   CPU of the cgroup beyond the first, function/infra/cpu.py) and photos are decoded in worker
#   processes, so one process already uses the pod's cores (docs/performance.md).
# THREADS=8: requests a worker serves at once. A request spends most of its time waiting on
#   photo downloads (I/O, GIL released), then a short CPU-bound decode and inference (LiteRT:
#   ~6 ms per image). With 4 threads the service ran out of slots before it ran out of CPU: 8
#   clients got 12.2 five-photo req/s with 1.15 of 2 cores busy; with 8 threads 16.2-16.5 req/s
#   with 1.6 cores busy (p50 at 8 clients 667 -> ~490 ms; one client unchanged, ~268 ms); 16
#   threads gave 14.6 (make bench's sweep on the stand-in internet, 80 ms, 16 MB/s;
#   docs/performance.md). knative/service.yaml sets containerConcurrency to this same number
#   (a test checks).
# MALLOC_ARENA_MAX=2: glibc gives each busy thread its own malloc arena, which keeps freed photo
#   buffers as RSS; two arenas measured ~10 % less peak and ~13 % less retained RSS under load
#   (bench/service_memory.py), with no change in latency.
# MALLOC_MMAP_THRESHOLD_=1048576: every allocation of 1 MiB or more (decoded photos, Pillow's 16 MiB
#   blocks) is its own mmap, returned to the OS when freed. Unset, glibc raises the threshold each time
#   such a block is freed, and later big blocks come from the heap and stay as RSS: after four big
#   PNGs the service held 3.1 GB for 30 more requests. Measured with the old decoder (four
#   concurrent 8000x7999 RGBA PNGs, then 30 small photos): 659 MB kept vs 592 MB with it, ready at
#   ~595 MB; with the bounded decoder (which also calls malloc_trim after big decodes) 607 vs
#   596 MB. Setting MALLOC_TRIM_THRESHOLD_ as well changed nothing measurable (docs/reliability.md).
ENV PORT=8080 \
    MODEL_URL=/opt/bird-classifier/model.tflite \
    LABELS_URL=/opt/bird-classifier/labels.csv \
    MODEL_CACHE_DIR=/var/cache/tfhub \
    TFHUB_CACHE_DIR=/var/cache/tfhub \
    WORKERS=1 \
    THREADS=8 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=1048576

USER 10001:10001
EXPOSE 8080

# gunicorn with gunicorn.conf.py and functions-framework's app, not `functions-framework --target`:
# that launcher fixes gunicorn's options (a request line of any length) and reads no config file;
# gunicorn.conf.py bounds the request line and the time a client may take to send its headers
# (function/infra/server.py). gunicorn binds 0.0.0.0:$PORT itself. exec form: gunicorn is PID 1
# and receives SIGTERM on scale-down.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "functions_framework:create_app(target=\"classify_http\")"]
