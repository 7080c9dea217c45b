#!/usr/bin/env bash
# Build the image and smoke-test it against a stand-in hub on 127.0.0.1 (`make image-test`).
#
# Needs podman (on this machine: bash ../shared/tools/podman-setup.sh) or docker (ENGINE=docker,
# BUILD_FLAGS=--network=host). Does not run in CI. See tests/image/smoke.py for what it checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

ENGINE=${ENGINE:-podman}
IMAGE=${IMAGE:-bird-classifier}
BUILD_FLAGS=${BUILD_FLAGS:---pull=never --network host}
PY=${PY:-.venv/bin/python}

start=$(date +%s.%N)
# shellcheck disable=SC2086  # BUILD_FLAGS is a list of flags
"$ENGINE" build $BUILD_FLAGS -t "$IMAGE" . >/tmp/bird-classifier-image-build.log 2>&1 || {
    tail -30 /tmp/bird-classifier-image-build.log >&2
    exit 1
}
end=$(date +%s.%N)
size=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
awk -v i="$IMAGE" -v s="$start" -v e="$end" -v b="$size" \
    'BEGIN { printf "image %s built in %.1f s, %.0f MB\n", i, e - s, b / 1e6 }'

ENGINE=$ENGINE IMAGE=$IMAGE "$PY" tests/image/smoke.py
