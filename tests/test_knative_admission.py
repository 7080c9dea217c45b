"""Knative 1.18's own admission code on the manifests (``knative/check``, ``make knative-check``).

The checker runs Serving's and Eventing's ``SetDefaults`` + ``Validate`` as their webhooks do on
``kubectl apply``. These tests prove it can fail: each known-bad manifest in ``tests/knative/bad/``
is rejected with Knative's own message, and the real manifests in ``knative/`` pass, without
warnings. It is built once per session (``make build/knative-check``, cached in ``build/`` until
its source changes); the tests skip only when Go is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "knative" / "bad"
MANIFESTS = sorted((ROOT / "knative").glob("*.yaml"))
CLOUD_RUN = sorted((ROOT / "knative" / "cloudrun").glob("*.yaml"))

# Each known-bad manifest and the message Knative's webhook answers it with.
REJECTED = {
    "probe-timeout-without-period.yaml": [
        "timeoutSeconds is disallowed when periodSeconds is zero: "
        "spec.template.spec.containers[0].readinessProbe.timeoutSeconds",
        "failureThreshold is disallowed when periodSeconds is zero: "
        "spec.template.spec.containers[0].readinessProbe.failureThreshold",
    ],
    "autoscaling-annotation-not-a-number.yaml": [
        "invalid value: ten: spec.template.metadata.annotations.autoscaling.knative.dev/max-scale",
    ],
    "container-concurrency-above-maximum.yaml": [
        "expected 0 <= 1001 <= 1000: spec.template.spec.containerConcurrency",
    ],
    "trigger-without-subscriber.yaml": [
        "expected at least one, got none: spec.subscriber.ref, spec.subscriber.uri",
    ],
}


def _go() -> str | None:
    return shutil.which("go") or next((g for g in ["/usr/local/go/bin/go"] if Path(g).is_file()), None)


@pytest.fixture(scope="session")
def checker() -> Path:
    go = _go()
    if go is None:
        pytest.skip("Go is not installed (needed to build knative/check); CI and the dev machines have it")
    # make rebuilds only when knative/check changed; the first build fetches the Go modules.
    build = subprocess.run(["make", "-s", f"GO={go}", "build/knative-check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    return ROOT / "build" / "knative-check"


def run(checker: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(checker), *map(str, files)], capture_output=True, text=True, timeout=60)


def test_every_known_bad_manifest_has_an_expected_message():
    assert {p.name for p in BAD.glob("*.yaml")} == set(REJECTED)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_a_known_bad_manifest_is_rejected_with_knatives_message(checker, name):
    result = run(checker, BAD / name)
    assert result.returncode == 1, result.stdout + result.stderr
    for message in REJECTED[name]:
        assert message in result.stdout


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_real_manifests_pass_knatives_admission_without_warnings(checker, path):
    result = run(checker, path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("ok ") for line in lines), result.stdout


def test_the_cloud_run_service_passes_knatives_admission(checker):
    """The Cloud Run file sets no Kubernetes securityContext (Cloud Run sandboxes each instance
    itself), so Knative's warning about those defaults is the one warning expected."""
    (path,) = CLOUD_RUN
    result = run(checker, path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok ") for line in lines)
    for line in lines:
        assert line.startswith("ok ") or (line.startswith("WARN ") and ".securityContext." in line), line


def test_one_bad_object_among_good_ones_fails_the_run_and_names_it(checker):
    result = run(checker, *MANIFESTS, BAD / "trigger-without-subscriber.yaml")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"FAIL {BAD / 'trigger-without-subscriber.yaml'}#1 Trigger trigger-without-subscriber:" in lines
    assert sum(line.startswith("ok ") for line in lines) >= len(MANIFESTS), "the good objects still report"


def test_a_misspelt_field_is_an_error_not_dropped(checker, tmp_path):
    manifest = tmp_path / "misspelt.yaml"
    manifest.write_text((BAD / "container-concurrency-above-maximum.yaml").read_text().replace(
        "containerConcurrency: 1001", "containerConcurency: 4"))
    result = run(checker, manifest)
    assert result.returncode == 1
    assert 'unknown field "containerConcurency"' in result.stdout


def test_a_kind_the_checker_does_not_know_is_refused(checker, tmp_path):
    manifest = tmp_path / "configmap.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n")
    result = run(checker, manifest)
    assert result.returncode == 2
    assert "ConfigMap is not a Knative kind this checker knows" in result.stdout
