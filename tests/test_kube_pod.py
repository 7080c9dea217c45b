"""The Pod that ``make kube-test`` plays is knative/service.yaml's revision template as written.

``tests/kube/pod.py`` derives it; ``make kube-test`` (podman, not in CI) runs it. These checks need
no podman: everything in the template reaches the Pod unchanged except the listed translations.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.kube.pod import TranslationError, for_podman, pod_from_service
from tests.support import ROOT

SERVICE = yaml.safe_load((ROOT / "knative" / "service.yaml").read_text())
OVERRIDES = {"TRUSTED_HOSTS": "127.0.0.1"}
INJECTED = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}


def derive(service=SERVICE, port=8080):
    return pod_from_service(service, image="localhost/bird-classifier:latest", port=port, name="p",
                            env_overrides=OVERRIDES)


def test_the_container_is_the_template_s_but_for_the_translations():
    pod, notes = derive()
    written = SERVICE["spec"]["template"]["spec"]["containers"][0]
    got = pod["spec"]["containers"][0]
    for key in ("name", "ports", "resources", "securityContext", "volumeMounts"):
        assert got[key] == written[key]
    assert {**got["readinessProbe"], "httpGet": {"path": got["readinessProbe"]["httpGet"]["path"]}} \
        == written["readinessProbe"]
    assert got["readinessProbe"]["httpGet"]["port"] == 8080
    assert got["livenessProbe"] == written["livenessProbe"]  # a TCP probe of the container port, as written
    assert got["image"] == "localhost/bird-classifier:latest" and got["imagePullPolicy"] == "Never"
    assert pod["spec"]["volumes"] == SERVICE["spec"]["template"]["spec"]["volumes"]
    assert pod["spec"]["hostNetwork"] is True and pod["spec"]["restartPolicy"] == "Never"
    assert "containerConcurrency" not in pod["spec"] and "timeoutSeconds" not in pod["spec"]
    assert len(notes) >= 6


def test_only_the_stand_in_urls_and_knative_s_own_variables_change():
    pod, _ = derive()
    written = {e["name"]: e["value"] for e in SERVICE["spec"]["template"]["spec"]["containers"][0]["env"]}
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    changed = {k for k in env if written.get(k) != env[k]}
    assert changed == set(OVERRIDES) | INJECTED
    assert env["PORT"] == "8080" and env["K_SERVICE"] == SERVICE["metadata"]["name"]


def test_a_taken_port_moves_container_port_probes_and_port_env_together():
    pod, notes = derive(port=18080)
    c = pod["spec"]["containers"][0]
    assert c["ports"][0]["containerPort"] == 18080
    assert {e["name"]: e["value"] for e in c["env"]}["PORT"] == "18080"
    assert c["readinessProbe"]["httpGet"]["port"] == c["livenessProbe"]["tcpSocket"]["port"] == 18080
    assert any("8080 -> 18080" in n for n in notes)


def test_a_template_field_with_no_translation_is_refused():
    service = copy.deepcopy(SERVICE)
    service["spec"]["template"]["spec"]["someNewKnativeField"] = 1
    with pytest.raises(TranslationError, match="someNewKnativeField"):
        derive(service)


def test_podman_gets_no_port_mappings_on_the_host_network_and_pod_scoped_volume_names():
    pod, _ = derive()
    notes = for_podman(pod)
    c = pod["spec"]["containers"][0]
    assert "ports" not in c and len(notes) == 2
    assert {e["name"]: e["value"] for e in c["env"]}["PORT"] == "8080"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(volumes) == {"p-tfhub-cache", "p-tmp"}
    written = {v["name"]: v for v in SERVICE["spec"]["template"]["spec"]["volumes"]}
    assert volumes["p-tmp"]["emptyDir"] == written["tmp"]["emptyDir"]  # renamed, not changed
    assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]} == {"/var/cache/tfhub": "p-tfhub-cache",
                                                                       "/tmp": "p-tmp"}
