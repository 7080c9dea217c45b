# The bird classifier's HTTP target, as the container of a Knative Service (knative/service.yaml).
#
#   make image        # podman/docker build -t bird-classifier .
#   make image-test   # build, run against a stand-in hub on 127.0.0.1, classify two photos
#
# The model and the label map are NOT in the image: each instance downloads them once at start
# (MODEL_URL, LABELS_URL) into TFHUB_CACHE_DIR, an emptyDir the Service mounts. The image holds
# only the Python dependencies (requirements.txt, no test tools) and the function's code.
FROM python:3.11-slim

# PYTHONUNBUFFERED: log lines reach the cluster's log collector as they are written.
# PYTHONDONTWRITEBYTECODE: the code directory is read-only to the service user; do not try.
# PIP_*: no cache in the layer, no version check, no warning about installing as root.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependency layer first: it is 2.2 GB (1.9 GB of it TensorFlow) and changes only with
# requirements.txt, so a code change rebuilds and pushes only the small layers below it.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# A system user with no login and no home, numeric so Kubernetes' runAsNonRoot can verify it. It
# owns nothing in /app (the code is read-only to it), only the TF Hub cache directory, which the
# Service's emptyDir replaces (a plain `podman run` uses the image's directory).
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /var/cache/tfhub \
    && chown app:app /var/cache/tfhub

# Code layer: only what the function reads: its code, the web page under function/api/static/, and
# the OpenAPI contract it serves as /openapi.json (see .dockerignore for what stays out).
COPY main.py openapi.yaml ./
COPY function/ function/

# PORT: Knative sets it (8080 unless the Service says otherwise); 8080 for a plain `run`.
# TFHUB_CACHE_DIR: tensorflow_hub unpacks the model here; the Service mounts an emptyDir on it
#   so the ~13 MB download and its unpacked copy live in the pod, not in the image or a layer.
# WORKERS=1: one process, so one copy of TensorFlow and the model in memory (~930 MB RSS once
#   ready, measured with a MobileNet V2 of the real size); a second worker would double that for
#   no gain, as TensorFlow already spreads one inference over the pod's cores (function/cpu.py
#   sizes its thread pools from the cgroup's CPU limit).
# THREADS=4: requests a worker serves at once. A request spends most of its time waiting on
#   photo downloads (I/O, GIL released), then a short CPU-bound batch inference; four threads
#   let the downloads of up to four requests overlap one inference. More would only queue for
#   the CPU inside the pod and hold more photos in memory; Knative should queue and scale out
#   instead. knative/service.yaml sets containerConcurrency to this same number (a test checks).
# TF_CPP_MIN_LOG_LEVEL=1: TensorFlow's C++ INFO lines (CPU feature notices) are not service logs.
# XDG_RUNTIME_DIR=/tmp: where gunicorn (>= 25) puts its control socket; its fallback is $HOME,
#   which this user does not have and the read-only root filesystem would refuse.
# MALLOC_ARENA_MAX=2: glibc gives each busy thread its own malloc arena, which keeps freed photo
#   buffers as RSS; two arenas measured ~10 % less peak and ~13 % less retained RSS under load
#   (bench/service_memory.py), with no change in latency.
# MALLOC_MMAP_THRESHOLD_=1048576: every allocation of 1 MiB or more (decoded photos, Pillow's 16 MiB
#   blocks) is its own mmap, returned to the OS when freed. Unset, glibc raises the threshold each time
#   such a block is freed, and later big blocks come from the heap and stay as RSS: after four big
#   PNGs the service held 3.1 GB for 30 more requests (issue 12). Measured with the old decoder (four
#   concurrent 8000x7999 RGBA PNGs, then 30 small photos): 659 MB kept vs 592 MB with it, ready at
#   ~595 MB; with the decoder of issue 12 (which also calls malloc_trim after big decodes) 607 vs
#   596 MB. Setting MALLOC_TRIM_THRESHOLD_ as well changed nothing measurable (docs/reliability.md).
ENV PORT=8080 \
    TFHUB_CACHE_DIR=/var/cache/tfhub \
    WORKERS=1 \
    THREADS=4 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    XDG_RUNTIME_DIR=/tmp \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=1048576

USER 10001:10001
EXPOSE 8080

# exec: gunicorn (under functions-framework) becomes PID 1 and receives SIGTERM on scale-down.
CMD ["sh", "-c", "exec functions-framework --target classify_http --port \"${PORT}\""]
