#!/usr/bin/env bash
# Build the image against a stand-in hub on 127.0.0.1 and smoke-test it (`make image-test`).
#
# Needs podman (on this machine: bash ../shared/tools/podman-setup.sh) or docker (ENGINE=docker,
# BUILD_FLAGS=--network=host). Does not run in CI. See tests/image/smoke.py for what it checks; it
# builds the image itself, since the build stage converts the model from the stand-in hub.
set -euo pipefail
cd "$(dirname "$0")/../.."

ENGINE=${ENGINE:-podman} IMAGE=${IMAGE:-bird-classifier} BUILD_FLAGS=${BUILD_FLAGS:---pull=never --network host} \
    "${PY:-.venv/bin/python}" tests/image/smoke.py
