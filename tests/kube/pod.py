"""Derive a plain v1 Pod from the Knative Service's revision template (``make kube-test``).

:func:`pod_from_service` takes ``knative/service.yaml`` as parsed YAML and returns the Pod that
``podman kube play`` runs, plus the list of translations it made. The container spec is copied as
written: env, ports, resources, securityContext (read-only root filesystem, capabilities dropped,
no privilege escalation, non-root, seccomp), probes and volumeMounts; so are the volumes (the
emptyDirs) and a pod-level securityContext if the template has one. What a plain Pod does not have,
or what Knative adds around the container, is translated; each translation is returned as one line
(``tests/kube/play.py`` prints them, and its docstring lists them):

1. ``spec.template.metadata.annotations`` (the KPA's autoscaling settings) are dropped: they are
   read by Knative's autoscaler, not by the kubelet. The template's labels are kept.
2. ``containerConcurrency``, ``timeoutSeconds``, ``responseStartTimeoutSeconds`` and
   ``idleTimeoutSeconds`` are dropped: Knative's queue-proxy enforces them, and there is none here.
3. The image is the locally built one, with ``imagePullPolicy: Never`` (Knative resolves the tag to
   a digest and pulls it; here the image exists only in local storage).
4. The queue-proxy is not there: Knative's revision pods put it in front of the container (it
   answers the kubelet's readiness probe by probing ``/readyz`` itself). Here the kubelet's role is
   played by the test, which probes ``/readyz`` directly on the container's port.
5. ``PORT`` is set to the container port. Knative injects it (the manifest may not set it); the
   image's CMD passes it to functions-framework. So are ``K_SERVICE``, ``K_CONFIGURATION`` and
   ``K_REVISION``, which Knative injects into every revision's container.
6. The probes' ``httpGet`` gets the container port: Knative fills it in (a Knative probe may not
   name a port), a plain Pod needs one.
7. ``hostNetwork: true``: the pod shares the host's network, so it reaches the stand-in internet on
   127.0.0.1 and the test reaches it on 127.0.0.1:PORT (podman 4.3 plays such a pod; Knative runs
   it on the pod network behind the queue-proxy). Because of that the port may already be taken on
   the host: the caller picks a free one, and it replaces ``containerPort``, ``PORT`` and the probes'
   port alike.
8. ``restartPolicy: Never`` (a Deployment's pods are ``Always``): a container that dies fails the
   test instead of being restarted behind its back.

:func:`for_podman` makes one more change, for podman 4.3 only:

9. The container's ``ports`` are removed: podman 4.3 turns a containerPort into a port mapping and
   refuses it on the host network ("PortMappings can only be used with Bridge or slirp4netns
   networking"). On the host network the port is informational anyway (the process binds ``PORT``);
   ``PORT`` and the probes still carry it.
10. The volumes are renamed ``POD-NAME`` (and their volumeMounts with them): podman 4.3 makes an
    emptyDir a local volume named after the pod's volume (``tmp``, ``tfhub-cache``), which a second
    pod, or a leftover volume, would share. Kubernetes scopes the names to the pod; the rename does
    the same, so each emptyDir starts empty. (podman ignores ``sizeLimit``; the kubelet enforces it.)

Environment overrides are separate (``env_overrides``): the caller passes only what must point at
the stand-in internet (``MODEL_URL``, ``LABELS_URL``, ``TRUSTED_HOSTS``); every other variable keeps
the manifest's value. Unknown template fields raise, so a new Knative field cannot slip through.
"""

from __future__ import annotations

import copy
from typing import Any

# Knative revision-spec fields that are not PodSpec fields, and what becomes of them.
KNATIVE_ONLY = ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds")
# PodSpec fields the template may carry that are copied as they are.
COPIED = ("containers", "volumes", "securityContext", "serviceAccountName", "enableServiceLinks",
          "nodeSelector", "tolerations", "affinity", "runtimeClassName", "imagePullSecrets",
          "terminationGracePeriodSeconds", "dnsPolicy", "dnsConfig", "priorityClassName", "hostAliases",
          "schedulerName", "topologySpreadConstraints", "automountServiceAccountToken")
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
INJECTED_ENV = ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")


class TranslationError(ValueError):
    pass


def pod_from_service(service: dict[str, Any], *, image: str, port: int, name: str,
                     env_overrides: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The Pod for ``service``'s revision template, and the translations made (one line each)."""
    if service.get("apiVersion") != "serving.knative.dev/v1" or service.get("kind") != "Service":
        raise TranslationError("not a serving.knative.dev/v1 Service")
    svc_name = service["metadata"]["name"]
    template = copy.deepcopy(service["spec"]["template"])
    tspec = template["spec"]
    notes: list[str] = []

    meta = template.get("metadata", {})
    if meta.get("annotations"):
        notes.append(f"dropped spec.template.metadata.annotations ({', '.join(sorted(meta['annotations']))}): "
                     "Knative's autoscaler reads them, the kubelet does not")
    dropped = [k for k in KNATIVE_ONLY if k in tspec]
    if dropped:
        notes.append(f"dropped {', '.join(f'{k}={tspec[k]}' for k in dropped)}: enforced by Knative's "
                     "queue-proxy and activator, which are not here")
    unknown = set(tspec) - set(KNATIVE_ONLY) - set(COPIED)
    if unknown:
        raise TranslationError(f"template fields with no translation: {sorted(unknown)}")

    containers = tspec["containers"]
    if len(containers) != 1:
        raise TranslationError("expected one container (the sidecar case is not translated)")
    c = containers[0]
    ports = c.get("ports") or [{"containerPort": 8080}]  # Knative's default when none is named
    if len(ports) != 1:
        raise TranslationError("Knative allows exactly one container port")
    written_port = ports[0]["containerPort"]
    if port != written_port:
        notes.append(f"containerPort {written_port} -> {port} (taken on the host, and the pod uses the "
                     "host's network); PORT and the probes follow")
    c["ports"] = [{**ports[0], "containerPort": port}]

    notes.append(f"image {c['image']} -> {image}, imagePullPolicy: Never (local image; Knative would "
                 "resolve the tag to a digest and pull it)")
    c["image"] = image
    c["imagePullPolicy"] = "Never"

    env = c.setdefault("env", [])
    names = [e["name"] for e in env]
    clash = sorted(set(names) & set(INJECTED_ENV))
    if clash:
        raise TranslationError(f"the manifest sets {clash}, which Knative reserves")
    revision = f"{svc_name}-00001"
    injected = {"PORT": str(port), "K_SERVICE": svc_name, "K_CONFIGURATION": svc_name, "K_REVISION": revision}
    env.extend({"name": k, "value": v} for k, v in injected.items())
    notes.append("env " + ", ".join(f"{k}={v}" for k, v in injected.items())
                 + " added: Knative injects them into the revision's container")
    for key, value in env_overrides.items():
        for e in env:
            if e["name"] == key:
                if "value" not in e:
                    raise TranslationError(f"{key} is set from a source, not a value")
                e["value"] = value
                break
        else:
            env.append({"name": key, "value": value})

    for probe_name in PROBES:
        probe = c.get(probe_name)
        if not probe:
            continue
        handler = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
        if handler is None:
            continue  # exec probes need no port
        if "port" not in handler:
            notes.append(f"{probe_name} gets port {port} (Knative fills in the container port)")
        elif handler["port"] not in (written_port, ports[0].get("name")):
            raise TranslationError(f"{probe_name} probes port {handler['port']}, not the container's")
        handler["port"] = port

    notes.append("the queue-proxy is not there: the test probes the readiness path directly on the "
                 "container's port, as the kubelet would on a plain Pod")
    spec: dict[str, Any] = {k: tspec[k] for k in COPIED if k in tspec}
    spec["hostNetwork"] = True
    spec["restartPolicy"] = "Never"
    notes.append("hostNetwork: true (stand-in internet and test client on 127.0.0.1) and restartPolicy: "
                 "Never (a dying container fails the test instead of restarting)")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(meta.get("labels") or {})},
        "spec": spec,
    }
    return pod, notes


def for_podman(pod: dict[str, Any]) -> list[str]:
    """Adapt the Pod in place to what ``podman kube play`` (4.3) accepts; returns the translations."""
    notes = []
    prefix = pod["metadata"]["name"]
    renamed = {v["name"]: f"{prefix}-{v['name']}" for v in pod["spec"].get("volumes", [])}
    for v in pod["spec"].get("volumes", []):
        v["name"] = renamed[v["name"]]
    for c in pod["spec"]["containers"]:
        ports = c.pop("ports", None)
        if ports and pod["spec"].get("hostNetwork"):
            notes.append(f"ports {[p['containerPort'] for p in ports]} removed for podman: it refuses port "
                         "mappings on the host network; PORT and the probes carry the port")
        for m in c.get("volumeMounts", []):
            m["name"] = renamed[m["name"]]
    if renamed:
        notes.append(f"volumes renamed {prefix}-NAME for podman, which names an emptyDir's volume after it "
                     "(a pod-scoped name in Kubernetes); sizeLimit is not enforced by podman")
    return notes
