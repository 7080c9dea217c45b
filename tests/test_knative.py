"""The Knative manifests in ``knative/``, checked without a cluster.

Two layers. First, every document validates against its custom resource's JSON schema (copied
into ``knative/schemas/`` from the CRDs-catalog collection, MIT), made strict where the published
schemas are open (the top level, ``metadata``, ``emptyDir``), so a misspelt field anywhere fails.
Then the values a schema cannot see: annotation values that parse and agree with each other,
``containerConcurrency`` equal to the gunicorn ``THREADS`` of the manifest and of the Dockerfile,
timeouts within Knative's limits and above the function's own, probes on paths the function
really serves, env names the function really reads, and a Trigger that reaches the Service.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shlex
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import functions_framework
import jsonschema
import pytest
import yaml

from function import app as function_app
from function.config import Config
from function.core.workers import RECYCLE_BYTES
from tests.support import ROOT

KNATIVE = ROOT / "knative"
SCHEMAS = KNATIVE / "schemas"
DOCKERFILE = ROOT / "Dockerfile"
SERVICE_NAME = "bird-classifier"
FINALIZED = "google.cloud.storage.object.v1.finalized"
MAX_REVISION_TIMEOUT_S = 600  # Knative's default max-revision-timeout-seconds
# Read by tensorflow_hub (TFHUB_CACHE_DIR) and functions-framework's gunicorn (the others), not Config.
RUNTIME_ENV = {"TFHUB_CACHE_DIR", "PORT", "THREADS", "WORKERS"}
# Knative sets these in every revision and rejects a Service that sets them.
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
# Worst peak RSS measured for the service on LiteRT with the real model's size, summed over its
# process tree (decode workers included): 8 concurrent 64-photo requests of big photos (make bench,
# docs/performance.md; see knative/service.yaml).
MEASURED_PEAK_RSS_BYTES = 767 * 1024**2
# RSS once ready (LiteRT, the same run): what the bounds below add to.
READY_RSS_BYTES = 212 * 1024**2
# The decode workers' fork server (an interpreter with Pillow: 19 MB RSS measured; 32 allows for more
# plugins loaded), and what
# each worker may keep between photos before it is replaced (function/core/workers.py).
DECODE_SERVER_BYTES = 32 * 1024**2
AUTOSCALING = "autoscaling.knative.dev/"
KNOWN_AUTOSCALING = {"class", "metric", "target", "target-utilization-percentage", "min-scale", "max-scale",
                     "initial-scale", "scale-down-delay", "window", "panic-window-percentage",
                     "panic-threshold-percentage", "activation-scale", "scale-to-zero-pod-retention-period"}


# -- loading ----------------------------------------------------------------------------------
def _load_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KNATIVE.glob("*.yaml")) + sorted(KNATIVE.glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    docs.append((f"{path.name}#{i}", doc))
    return docs


DOCUMENTS = _load_documents()


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc.get("kind") == kind]


def the_service() -> dict[str, Any]:
    (service,) = [s for s in objects("Service") if s["metadata"]["name"] == SERVICE_NAME]
    return service


def the_container(service: dict[str, Any] | None = None) -> dict[str, Any]:
    (container,) = (service or the_service())["spec"]["template"]["spec"]["containers"]
    return container


def manifest_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in the_container().get("env", [])}


def annotations() -> dict[str, str]:
    return the_service()["spec"]["template"]["metadata"].get("annotations", {})


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` settings of the Dockerfile (continuation lines joined, ``KEY=value`` pairs)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].upper() == "ENV":
            for token in shlex.split(parts[1]):
                key, sep, value = token.partition("=")
                if sep:
                    env[key] = value
    return env


# -- value parsers ----------------------------------------------------------------------------
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def go_duration_s(text: str) -> float:
    """Seconds in a Go ``time.Duration`` string (``90s``, ``5m``, ``1h30m``), as Knative parses them."""
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    for m in _GO_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a Go duration: {text!r}")
    return total


_ISO = re.compile(r"P(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def iso_duration_s(text: str) -> float:
    """Seconds in an ISO 8601 duration (``PT2S``, ``PT1M30S``), the format of Eventing's backoffDelay."""
    m = _ISO.fullmatch(text)
    if not m or text == "P":
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    d, h, mins, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 86400 + h * 3600 + mins * 60 + s


_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_QUANTITY_FACTOR = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    m = _QUANTITY.fullmatch(str(value))
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _QUANTITY_FACTOR[m.group(2)]


@pytest.mark.parametrize("text, seconds", [("0", 0), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5)])
def test_go_durations_parse_as_knative_reads_them(text, seconds):
    assert go_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "5min", "-5m", "5m-"])
def test_malformed_go_durations_are_refused(text):
    with pytest.raises(ValueError):
        go_duration_s(text)


@pytest.mark.parametrize("text, seconds", [("PT2S", 2), ("PT1M30S", 90), ("PT0.5S", 0.5), ("P1D", 86400)])
def test_iso_durations_parse(text, seconds):
    assert iso_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "2S", "PT2", "pt2s", "2s"])
def test_malformed_iso_durations_are_refused(text):
    with pytest.raises(ValueError):
        iso_duration_s(text)


# -- schemas ----------------------------------------------------------------------------------
_DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {  # what a manifest may say about itself; the rest of ObjectMeta is the server's
    "type": "object",
    "required": ["name"],
    "properties": {"name": _DNS_LABEL, "namespace": _DNS_LABEL, "labels": _STRING_MAP, "annotations": _STRING_MAP},
    "additionalProperties": False,
}
EMPTY_DIR = {  # the published schema leaves emptyDir open (it is behind a Knative feature flag)
    "type": "object",
    "properties": {"medium": {"enum": ["", "Memory"]},
                   "sizeLimit": {"type": ["string", "integer"], "pattern": _QUANTITY.pattern}},
    "additionalProperties": False,
}


def _close(node: Any) -> None:
    """Every object schema that lists its properties admits no others (and emptyDir gets its own)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        props = node.get("properties", {})
        if isinstance(props.get("emptyDir"), dict) and "properties" not in props["emptyDir"]:
            props["emptyDir"] = copy.deepcopy(EMPTY_DIR)
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


def schema_path(doc: dict[str, Any]) -> Path:
    group, _, version = doc["apiVersion"].rpartition("/")
    return SCHEMAS / group / f"{doc['kind'].lower()}_{version}.json"


@cache
def strict_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    path = schema_path({"apiVersion": api_version, "kind": kind})
    schema = json.loads(path.read_text(encoding="utf-8"))
    _close(schema)
    props = schema.setdefault("properties", {})
    props.pop("status", None)  # the controller writes status; a manifest must not
    props.update({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": OBJECT_META})
    schema["required"] = ["apiVersion", "kind", "metadata"]
    schema["additionalProperties"] = False
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = strict_validator(doc["apiVersion"], doc["kind"])
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def test_there_are_manifests_to_check():
    assert {doc["kind"] for _, doc in DOCUMENTS} >= {"Service", "Broker", "Trigger"}
    assert the_service()["apiVersion"] == "serving.knative.dev/v1"


@pytest.mark.parametrize("doc", [d for _, d in DOCUMENTS], ids=[name for name, _ in DOCUMENTS])
def test_each_manifest_has_a_schema_and_validates_strictly(doc):
    assert {"apiVersion", "kind"} <= set(doc), "every document names its apiVersion and kind"
    assert schema_path(doc).is_file(), f"no schema for {doc['apiVersion']} {doc['kind']} in {SCHEMAS}"
    errors = schema_errors(doc)
    assert not errors, "\n".join(errors)


def test_the_schemas_licence_travels_with_them():
    assert "Permission is hereby granted" in (SCHEMAS / "LICENSE").read_text(encoding="utf-8")


Mutation = Callable[[dict[str, Any]], None]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


UNKNOWN_FIELDS: dict[str, tuple[str, Mutation]] = {
    "top level": ("Service", lambda d: d.update(sepc={})),
    "status": ("Service", lambda d: d.update(status={})),
    "metadata": ("Service", lambda d: d["metadata"].update(anotations={})),
    "template metadata": ("Service", lambda d: d["spec"]["template"]["metadata"].update(annotation={})),
    "revision spec": ("Service", lambda d: d["spec"]["template"]["spec"].update(containerConcurency=4)),
    "container": ("Service", lambda d: _container(d).update(imagePullPolcy="Always")),
    "probe": ("Service", lambda d: _container(d)["readinessProbe"]["httpGet"].update(paht="/readyz")),
    "emptyDir": ("Service", lambda d: d["spec"]["template"]["spec"]["volumes"][0]["emptyDir"].update(sizelimit="1Gi")),
    "resources": ("Service", lambda d: _container(d)["resources"].update(limit={"cpu": "1"})),
    "trigger spec": ("Trigger", lambda d: d["spec"].update(subscribers={})),
    "trigger delivery": ("Trigger", lambda d: d["spec"]["delivery"].update(retries=3)),
    "subscriber ref": ("Trigger", lambda d: d["spec"]["subscriber"]["ref"].update(nmae="x")),
    "broker": ("Broker", lambda d: d.update(specs={})),
    "broker metadata": ("Broker", lambda d: d["metadata"].update(label={})),
}


@pytest.mark.parametrize("where", UNKNOWN_FIELDS)
def test_an_unknown_field_fails_validation(where):
    kind, mutate = UNKNOWN_FIELDS[where]
    doc = copy.deepcopy(the_service() if kind == "Service" else objects(kind)[0])
    assert not schema_errors(doc)
    mutate(doc)
    assert schema_errors(doc), f"a misspelt field in the {where} passed the schema"


def test_a_wrongly_typed_value_fails_validation():
    doc = copy.deepcopy(the_service())
    doc["spec"]["template"]["spec"]["containerConcurrency"] = "4"
    assert schema_errors(doc)


def test_objects_are_named_uniquely_in_one_namespace():
    keys = [(d["kind"], d["metadata"]["name"]) for _, d in DOCUMENTS]
    assert len(keys) == len(set(keys))
    assert len({d["metadata"].get("namespace") for _, d in DOCUMENTS}) == 1, "all in the same namespace"


def _flags_used(schema: Any, doc: Any) -> set[str]:
    """Knative feature flags (``kubernetes.podspec-*``) that the fields set in ``doc`` need."""
    flags: set[str] = set()
    if isinstance(doc, dict) and isinstance(schema, dict):
        for key, value in doc.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None:
                continue
            flags |= set(re.findall(r"feature flag - ([a-z0-9.-]+)", sub.get("description", "")))
            flags |= _flags_used(sub, value)
    elif isinstance(doc, list) and isinstance(schema, dict):
        for item in doc:
            flags |= _flags_used(schema.get("items", {}), item)
    return flags


def test_feature_flags_the_manifests_need_are_in_the_deploy_guide():
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for _, doc in DOCUMENTS:
        flags = _flags_used(json.loads(schema_path(doc).read_text(encoding="utf-8")), doc)
        missing = {f for f in flags if f not in guide}
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} needs {sorted(missing)}; say so in docs/deploy.md"


# -- autoscaling ------------------------------------------------------------------------------
def test_autoscaling_is_the_kpa_on_concurrency():
    a = annotations()
    assert a[AUTOSCALING + "class"] == "kpa.autoscaling.knative.dev"
    assert a[AUTOSCALING + "metric"] == "concurrency"


def test_autoscaling_annotations_are_known_and_on_the_revision_template():
    unknown = {k for k in annotations() if k.startswith(AUTOSCALING)} - {AUTOSCALING + n for n in KNOWN_AUTOSCALING}
    assert not unknown, f"misspelt or unsupported autoscaling annotations: {sorted(unknown)}"
    for service in objects("Service"):
        on_service = [k for k in service["metadata"].get("annotations", {}) if k.startswith(AUTOSCALING)]
        assert not on_service, f"{service['metadata']['name']}: autoscaling annotations belong on spec.template"


def test_it_scales_to_zero_with_consistent_bounds():
    a = annotations()
    low, high = int(a[AUTOSCALING + "min-scale"]), int(a[AUTOSCALING + "max-scale"])
    assert low == 0, "min-scale 0: the service scales to zero"
    assert high > 0 and low <= high
    if AUTOSCALING + "initial-scale" in a:
        assert 0 <= int(a[AUTOSCALING + "initial-scale"]) <= high


def test_the_concurrency_target_is_positive_and_below_the_hard_limit():
    a = annotations()
    target = float(a[AUTOSCALING + "target"])
    utilisation = float(a.get(AUTOSCALING + "target-utilization-percentage", "70"))
    concurrency = the_service()["spec"]["template"]["spec"]["containerConcurrency"]
    assert target > 0 and 0 < utilisation <= 100
    assert target * utilisation / 100 <= concurrency, "the soft target must be reachable below containerConcurrency"


@pytest.mark.parametrize("name, low, high", [
    ("scale-down-delay", 0, 3600),
    ("window", 6, 3600),
    ("scale-to-zero-pod-retention-period", 0, None),
])
def test_duration_annotations_parse_within_knatives_bounds(name, low, high):
    for service in objects("Service"):
        value = service["spec"]["template"]["metadata"].get("annotations", {}).get(AUTOSCALING + name)
        if value is None:
            continue
        seconds = go_duration_s(value)
        assert seconds >= low and (high is None or seconds <= high), f"{name}: {value}"
    if name == "scale-down-delay":
        assert AUTOSCALING + name in annotations(), "the classifier sets scale-down-delay deliberately"


def test_every_service_has_integer_scale_bounds():
    for service in objects("Service"):
        a = service["spec"]["template"]["metadata"].get("annotations", {})
        for name in ("min-scale", "max-scale", "initial-scale"):
            if AUTOSCALING + name in a:
                assert int(a[AUTOSCALING + name]) >= 0, f"{service['metadata']['name']}: {name}"


# -- concurrency, timeouts ----------------------------------------------------------------------
def test_container_concurrency_equals_threads_in_the_manifest_and_the_dockerfile():
    concurrency = the_service()["spec"]["template"]["spec"]["containerConcurrency"]
    assert concurrency > 0, "a CPU-bound model needs a hard per-pod limit"
    assert int(manifest_env()["THREADS"]) == concurrency
    assert int(dockerfile_env()["THREADS"]) == concurrency


def test_one_worker_process_in_the_manifest_and_the_dockerfile():
    assert dockerfile_env()["WORKERS"] == "1"
    assert manifest_env().get("WORKERS", "1") == "1"


def test_timeouts_fit_knatives_limits_and_each_other():
    spec = the_service()["spec"]["template"]["spec"]
    timeout = spec["timeoutSeconds"]
    response_start = spec.get("responseStartTimeoutSeconds", timeout)
    assert 0 < response_start <= timeout <= MAX_REVISION_TIMEOUT_S


def effective_config() -> Config:
    names = {f.name.upper() for f in dataclasses.fields(Config)}
    return Config.from_env({k: v for k, v in manifest_env().items() if k in names})


def test_the_manifests_configuration_values_are_valid():
    effective_config()  # raises ConfigError naming the variable


@pytest.mark.parametrize("field", ["model_wait_s", "request_deadline_s", "fanout_timeout_s"])
def test_the_function_gives_up_before_knative_cuts_the_request(field):
    if field not in {f.name for f in dataclasses.fields(Config)}:
        pytest.skip(f"Config has no {field}")
    spec = the_service()["spec"]["template"]["spec"]
    response_start = spec.get("responseStartTimeoutSeconds", spec["timeoutSeconds"])
    assert getattr(effective_config(), field) < response_start, \
        f"{field.upper()} must end before responseStartTimeoutSeconds so the client gets a reason, not a bare 504"


def test_a_delivery_writes_its_results_before_knative_cuts_the_request():
    spec = the_service()["spec"]["template"]["spec"]
    config = effective_config()
    assert config.request_deadline_s + config.results_timeout_s < spec.get("responseStartTimeoutSeconds",
                                                                          spec["timeoutSeconds"])


def test_the_sink_binding_sends_the_classifiers_results_elsewhere_than_its_own_trigger():
    (binding,) = objects("SinkBinding")
    subject, sink = binding["spec"]["subject"], binding["spec"]["sink"]["ref"]
    assert (subject["kind"], subject["name"]) == ("Service", SERVICE_NAME)
    assert sink["name"] in {b["metadata"]["name"] for b in objects("Broker")}, "the sink is defined in knative/"
    fed = {t["spec"]["broker"] for t in objects("Trigger") if t["spec"]["subscriber"]["ref"]["name"] == SERVICE_NAME}
    assert sink["name"] not in fed, "results sent to the Broker that feeds the classifier would come back"


# -- env, volumes, resources --------------------------------------------------------------------
def test_env_names_are_config_fields_or_runtime_settings():
    config_names = {f.name.upper() for f in dataclasses.fields(Config)}
    unknown = set(manifest_env()) - config_names - RUNTIME_ENV
    assert not unknown, f"env vars nothing reads (misspelt?): {sorted(unknown)}"


def test_env_sets_nothing_knative_reserves():
    for service in objects("Service"):
        for container in service["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & RESERVED_ENV, f"{service['metadata']['name']}: Knative sets {names & RESERVED_ENV}"


def _emptydir_mounts(service: dict[str, Any]) -> set[str]:
    spec = service["spec"]["template"]["spec"]
    emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    return {m["mountPath"] for m in the_container(service).get("volumeMounts", []) if m["name"] in emptydirs}


def test_the_tfhub_cache_is_an_emptydir_at_the_images_cache_path():
    image_path = dockerfile_env()["TFHUB_CACHE_DIR"]
    assert manifest_env().get("TFHUB_CACHE_DIR", image_path) == image_path
    assert image_path in _emptydir_mounts(the_service())


def test_a_read_only_root_filesystem_has_a_writable_tmp():
    service = the_service()
    if the_container(service).get("securityContext", {}).get("readOnlyRootFilesystem"):
        assert "/tmp" in _emptydir_mounts(service), "gunicorn and upload spooling write to /tmp"


def test_resources_are_set_and_requests_fit_limits():
    for service in objects("Service"):
        resources = the_container(service)["resources"]
        for res in ("cpu", "memory"):
            request, limit = quantity(resources["requests"][res]), quantity(resources["limits"][res])
            assert 0 < request <= limit, f"{service['metadata']['name']}: {res}"


def test_the_memory_request_has_headroom_over_the_measured_peak():
    request = quantity(the_container()["resources"]["requests"]["memory"])
    assert request >= 1.2 * MEASURED_PEAK_RSS_BYTES


def test_the_memory_limit_covers_the_worst_case_the_function_s_own_bounds_allow():
    """What the configuration lets one pod hold at once, each at its maximum: every request thread with
    a parsed upload of MAX_UPLOAD_BYTES, every fetch worker with MAX_PHOTO_BYTES, the decode budget
    (DECODE_MEMORY_MB: what the photos being decoded hold, each charged from its header, their bytes'
    copy in the worker included; function/core/costs.py) and the decode workers themselves."""
    config = effective_config()
    workers = config.decode_workers or math.ceil(quantity(the_container()["resources"]["limits"]["cpu"])) + 1
    decoding = config.decode_memory_mb * 1_000_000 + DECODE_SERVER_BYTES + workers * RECYCLE_BYTES
    worst = (READY_RSS_BYTES + config.threads * config.max_upload_bytes
             + config.fetch_workers * config.max_photo_bytes + decoding)
    limit = quantity(the_container()["resources"]["limits"]["memory"])
    assert limit >= worst, f"limit {limit / 2**20:.0f} MiB < worst case {worst / 2**20:.0f} MiB"


def test_every_container_runs_as_non_root():
    for service in objects("Service"):
        assert the_container(service)["securityContext"]["runAsNonRoot"] is True


def test_the_dockerfile_runs_as_a_numeric_non_root_user():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert users, "the image sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes' runAsNonRoot can verify it"


def test_the_container_port_is_the_images_port():
    (port,) = the_container()["ports"]
    assert port["containerPort"] == int(dockerfile_env()["PORT"])


# -- probes against the real app ----------------------------------------------------------------
@pytest.fixture
def app_client(env):
    app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
    return app.test_client()


def _probe(kind: str) -> dict[str, Any]:
    probe = the_container()[kind]
    handler = probe.get("httpGet") or probe.get("tcpSocket")
    assert handler is not None, f"{kind} is an HTTP or TCP probe"
    port = handler.get("port")
    assert port in (None, the_container()["ports"][0]["containerPort"], "http1"), "probe the serving port"
    assert handler.get("scheme", "HTTP") == "HTTP" and "host" not in handler
    return probe


def test_liveness_is_a_tcp_probe_of_the_serving_port_not_queued_behind_request_threads():
    # An HTTP liveness probe waits for a free gunicorn thread: four slow clients or four long requests
    # would get a busy pod restarted. The kernel answers a TCP probe from the listen backlog.
    live = _probe("livenessProbe")
    assert "tcpSocket" in live and live["tcpSocket"]["port"] == the_container()["ports"][0]["containerPort"]


def test_the_readiness_probe_path_is_not_the_liveness_concern(app_client):
    assert app_client.get("/healthz").status_code == 200  # still served, for people and load balancers


def test_the_readiness_probe_path_is_served_and_turns_ready(app_client):
    path = _probe("readinessProbe")["httpGet"]["path"]
    status = app_client.get(path).status_code
    assert status in (200, 503), f"{path} answered {status}: ready (200) or loading (503), never 404"
    classifier = function_app.serving()  # the probe started the load; wait for it (bounded)
    assert classifier.wait_until_ready(120).ready
    assert app_client.get(path).status_code == 200


def test_probes_tolerate_a_request_holding_every_thread():
    live = _probe("livenessProbe")
    window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    assert window >= 60, "liveness must not restart a pod that is only busy or loading the model"
    assert live.get("timeoutSeconds", 1) >= 5


def test_the_readiness_probe_has_an_explicit_period_and_is_tolerant():
    """periodSeconds 0 means Knative's aggressive probing: every 50 ms with a fixed 100 ms timeout,
    too short for /readyz queued behind four busy gunicorn threads or a model load holding the GIL.
    (Knative's webhook also rejects timeoutSeconds / failureThreshold with it; tests/test_knative_admission.py
    runs that check itself.)"""
    ready = _probe("readinessProbe")
    period, timeout = ready.get("periodSeconds", 0), ready.get("timeoutSeconds")
    failures = ready.get("failureThreshold")
    assert period > 0, "set periodSeconds: 0 (unset) selects Knative's 100 ms aggressive probing"
    assert period <= 5, "a cold pod must take traffic soon after its model is loaded"
    assert timeout is not None and timeout >= 5, "the probe waits in gunicorn's queue while every thread is busy"
    assert failures is not None
    config = effective_config()
    # Time-outs in a row before the pod leaves the endpoints: longer than a request holds a thread.
    assert failures * max(period, timeout) > config.request_deadline_s
    # Quick 503s in a row: longer than one model reload after a failure.
    assert failures * period > config.model_load_retry_s


def _fanout_host_parts() -> tuple[str, list[str]]:
    from urllib.parse import urlsplit

    url = urlsplit(manifest_env()["FANOUT_URL"])
    assert url.scheme == "http", "cluster-local traffic is plain HTTP to the ingress"
    assert url.port is None and url.path in ("", "/") and not url.query, url.geturl()
    name, *rest = (url.hostname or "").split(".")
    return name, rest


def test_the_fanout_url_is_a_cluster_local_host_with_the_namespace():
    """Knative's cluster-local ingress routes NAME.NS, NAME.NS.svc and NAME.NS.svc.cluster.local only:
    a bare NAME reaches it with a Host that matches no route, so every sub-request would 404."""
    name, rest = _fanout_host_parts()
    assert name == SERVICE_NAME, "fan-out goes back to this Service"
    assert rest and rest[1:] in ([], ["svc"], ["svc", "cluster", "local"]), \
        f"{manifest_env()['FANOUT_URL']}: use http://{SERVICE_NAME}.NAMESPACE.svc.cluster.local"
    namespace = rest[0]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace), f"not a namespace name: {namespace}"
    assert namespace == the_service()["metadata"].get("namespace", namespace)


def test_the_deploy_guide_substitutes_the_fanout_namespace():
    name, rest = _fanout_host_parts()
    assert rest, "FANOUT_URL names no namespace"
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    substitution = f"s|{name}.{rest[0]}.svc|{name}.$NAMESPACE.svc|"
    assert substitution in guide, f"docs/deploy.md must apply knative/service.yaml through {substitution!r}"


def test_the_deploy_guide_pins_the_dead_letter_image_by_digest():
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    (image,) = [c["image"] for s in objects("Service") if s["metadata"]["name"] != SERVICE_NAME
                for c in s["spec"]["template"]["spec"]["containers"]]
    assert "@" not in image and ":" not in image.rsplit("/", 1)[-1], "the manifest leaves the pin to deploy time"
    tail = "/".join(image.split("/")[-2:])  # what the guide's sed matches at the end of the line
    assert f"s|{tail}$|{tail}@${{EVENT_DISPLAY_DIGEST" in guide
    assert f"crane digest {image}" in guide


# -- eventing -----------------------------------------------------------------------------------
def _trigger() -> dict[str, Any]:
    (trigger,) = [t for t in objects("Trigger") if t["spec"].get("filter", {}).get("attributes", {}).get("type")
                  == FINALIZED]
    return trigger


def test_the_trigger_filters_finalized_objects_from_a_broker_defined_here():
    trigger = _trigger()
    assert trigger["spec"]["broker"] in {b["metadata"]["name"] for b in objects("Broker")}
    attributes = trigger["spec"]["filter"]["attributes"]
    assert all(isinstance(v, str) and v for v in attributes.values()), "filter values are non-empty strings"


def test_the_trigger_delivers_to_the_classifier_service():
    ref = _trigger()["spec"]["subscriber"]["ref"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("serving.knative.dev/v1", "Service", SERVICE_NAME)
    assert ref.get("namespace") in (None, the_service()["metadata"].get("namespace"))


def test_delivery_retries_with_backoff_then_dead_letters():
    delivery = _trigger()["spec"]["delivery"]
    assert delivery["retry"] >= 1
    assert delivery["backoffPolicy"] in ("linear", "exponential")
    assert iso_duration_s(delivery["backoffDelay"]) > 0
    sink = delivery["deadLetterSink"]
    ref = sink["ref"]
    assert ref["kind"] == "Service" and ref["name"] != SERVICE_NAME, "dead letters go somewhere else"
    assert ref["name"] in {s["metadata"]["name"] for s in objects("Service")}, "the sink is defined in knative/"


def test_trigger_filters_never_match_the_classifiers_own_replies():
    for trigger in objects("Trigger"):
        if trigger["spec"]["subscriber"]["ref"]["name"] == SERVICE_NAME:
            assert trigger["spec"].get("filter", {}).get("attributes", {}).get("type") == FINALIZED, \
                "an unfiltered trigger to the classifier would feed it its own reply events"
