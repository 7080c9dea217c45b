"""The OpenAPI contract (openapi.yaml): a valid OpenAPI 3.1 document, served as /openapi.json, that
the function's real answers match; and a bounded schemathesis run against the function finds no 5xx.
"""

from __future__ import annotations

import io
import json
import re

import functions_framework
import jsonschema
import pytest
import requests
import requests_mock
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from function import app as service
from function import errors
from standin import photos
from tests.support import ROOT

SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
SPEC_URI = "urn:bird-classifier:openapi"
REGISTRY = Registry().with_resource(SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012))


def make_app():
    return functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))


@pytest.fixture
def client(env):
    app = make_app()
    assert service.serving().wait_until_ready(120).ready
    return app.test_client()


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(node: dict) -> dict:
    """A ``$ref`` within the contract, followed (one level, as the contract uses them)."""
    if "$ref" not in node:
        return node
    target = SPEC
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return target


def check_against_spec(method: str, path: str, response) -> None:
    """The response's status, media type and body are what the contract says for this operation."""
    operation = SPEC["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path}: {status} is not in the contract"
    documented = operation["responses"][status]
    if "$ref" in documented:
        media_path = f"{documented['$ref']}/content"
        documented = resolve(documented)
    else:
        media_path = "#/" + pointer("paths", path, method.lower(), "responses", status, "content")
    assert response.mimetype in documented["content"], f"{method} {path} {status}: {response.mimetype} undocumented"
    for name, header in documented.get("headers", {}).items():
        if resolve(header).get("required"):
            assert name in response.headers, f"{method} {path} {status}: no {name} header"
    if response.mimetype == "application/json":
        schema = {"$ref": f"{SPEC_URI}{media_path}/{pointer(response.mimetype)}/schema"}
        jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(response.get_json())


def test_the_contract_is_a_valid_openapi_3_1_document():
    validate_spec(SPEC)
    assert SPEC["openapi"].startswith("3.1.")


def test_openapi_json_serves_the_yaml(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == SPEC


def png(class_id: int) -> bytes:
    return photos.solid(photos.class_colour(class_id), size=(64, 48), fmt="PNG")


def test_answers_to_photo_requests_match_the_contract(client, serve_photo, server):
    good, missing = serve_photo(40), server.url("/missing.jpg")
    exchanges = [
        ("GET", "/", client.get("/", query_string=[("url", good), ("url", missing), ("top_k", "2")])),
        ("GET", "/", client.get("/", headers={"Accept": "text/html"})),
        ("GET", "/", client.get("/", headers={"Accept": "application/json"})),
        ("GET", "/", client.get("/?url=x&top_k=0")),
        ("POST", "/", client.post("/", json={"urls": [good, missing, "ftp://x"]})),
        ("POST", "/", client.post("/", json={"url": good, "top_k": 1})),
        ("POST", "/", client.post("/", json={"urls": []})),
        ("POST", "/", client.post("/", data=b"{", content_type="application/json")),
        ("POST", "/", client.post("/", data={"photo": (io.BytesIO(png(3)), "a.png"), "urls": good})),
        ("POST", "/", client.post("/", data={"photo": "text"}, content_type="multipart/form-data")),
        ("POST", "/", client.post("/?filename=b.png", data=png(4), content_type="image/png")),
        ("POST", "/", client.post("/", data=b"x" * (2 * 1024 * 1024), content_type="application/json")),
        ("POST", "/", client.post("/", data="a=b", content_type="application/x-www-form-urlencoded")),
        ("GET", "/healthz", client.get("/healthz")),
        ("GET", "/readyz", client.get("/readyz")),
        ("GET", "/openapi.json", client.get("/openapi.json")),
    ]
    for method, path, response in exchanges:
        check_against_spec(method, path, response)
    assert {r.status_code for _, _, r in exchanges} >= {200, 400, 413, 415}


DELIVERY_TOKEN = "contract-test-token-0123456789ab"


def test_answers_to_deliveries_match_the_contract(env, server, serve_photo):
    """CloudEvents (binary and structured) and S3 notifications, read from the stand-in storage; each
    proves its sender with a token (MinIO's way), but the last two, which prove nothing or too little."""
    serve_photo(60)
    env.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{server.port}")
    env.setenv("S3_ENDPOINT", server.url(""))
    env.setenv("EVENT_TOKENS", DELIVERY_TOKEN)
    server.add("/download/storage/v1/b/birds/o/robin.png", png(61), "image/png")
    server.add("/birds/wren.png", png(62), "image/png")
    service.reset()
    client = make_app().test_client()
    assert service.serving().wait_until_ready(120).ready
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {DELIVERY_TOKEN}"
    ce = {"ce-specversion": "1.0", "ce-source": "//storage.googleapis.com/projects/_/buckets/birds",
          "ce-type": "google.cloud.storage.object.v1.finalized"}
    data = {"bucket": "birds", "name": "robin.png", "contentType": "image/png", "size": "100"}
    structured = {"specversion": "1.0", "id": "s1", "source": "//test", "datacontenttype": "application/json",
                  "type": "google.cloud.storage.object.v1.finalized", "data": data}
    s3 = {"Records": [{"eventName": "s3:ObjectCreated:Put",
                       "s3": {"bucket": {"name": "birds"}, "object": {"key": "wren.png", "size": 10}}}]}
    exchanges = [
        client.post("/", json=data, headers={**ce, "ce-id": "1"}),
        client.post("/", data=json.dumps(structured), content_type="application/cloudevents+json"),
        client.post("/", json={**data, "contentType": "text/plain"}, headers={**ce, "ce-id": "2"}),
        client.post("/", json=data, headers={**ce, "ce-id": "3", "ce-type": "something.else"}),
        client.post("/", json=s3),
        client.post("/", json={"Records": "nope"}),
        client.post("/events", json=s3),
        client.post("/events", json=data, headers={**ce, "ce-id": "4"}),
        client.post("/events", json={"urls": ["http://127.0.0.1/x.png"]}),
        client.post("/events", json=s3, headers={"Authorization": "Bearer not-the-token-0123456789"}),
        client.post("/", json=s3, headers={"Authorization": ""}),
    ]
    paths = ["/"] * 6 + ["/events"] * 4 + ["/"]
    for path, response in zip(paths, exchanges, strict=True):
        check_against_spec("POST", path, response)
    assert [r.status_code for r in exchanges] == [200, 200, 422, 400, 200, 400, 200, 200, 400, 401, 401]
    assert exchanges[0].headers["ce-type"] == "dev.birdclassifier.birds.classified"
    assert exchanges[4].get_json()["results"][0]["predictions"][0]["id"] == 62
    assert exchanges[6].get_json()["results"][0]["predictions"][0]["id"] == 62
    assert {r.get_json()["error"]["code"] for r in exchanges[-2:]} == {"sender_unproven"}


def test_model_unavailable_matches_the_contract(env, server):
    env.setenv("MODEL_URL", server.url("/no-such-model"))
    env.setenv("MODEL_LOAD_RETRY_S", "60")
    service.reset()
    client = make_app().test_client()
    photo = server.add("/contract.png", png(5), "image/png")
    responses = [("POST", "/", client.post("/", json={"urls": [photo]})),
                 ("GET", "/", client.get("/", query_string={"url": photo})),
                 ("GET", "/readyz", client.get("/readyz"))]
    for method, path, response in responses:
        assert response.status_code == 503
        check_against_spec(method, path, response)


def every_subclass(cls: type) -> set[type]:
    return {cls} | {sub for direct in cls.__subclasses__() for sub in every_subclass(direct)}


def test_every_error_code_the_function_can_answer_is_in_the_contract():
    # What answers a request: request errors, the model not there yet, bucket objects' outcomes, a 500;
    # model, label-map and configuration errors only ever reach a caller as a NotReady's reason.
    answered = (errors.RequestError, errors.NotReady, errors.ObjectNotAnImage, errors.ObjectFailed,
                errors.ObjectUnavailable, errors.ResultNotWritten, errors.Internal)
    request_codes = {cls.code for base in answered for cls in every_subclass(base)} - {errors.RequestError.code}
    photo_codes = {cls.code for cls in every_subclass(errors.PhotoError)} - {errors.PhotoError.code}
    schemas = SPEC["components"]["schemas"]
    assert request_codes <= set(schemas["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert photo_codes <= set(schemas["PhotoError"]["properties"]["code"]["enum"])
    assert len(photo_codes) >= 19 and len(request_codes) >= 25  # the hierarchy was found


def test_every_route_is_in_the_contract():
    http = (ROOT / "function" / "api" / "http.py").read_text()
    routes = set(re.findall(r'path == "(/[a-z.]*)"', http))
    assert routes and routes | {"/"} == set(SPEC["paths"])


# -- Fuzzing: schemathesis generates requests from the contract; nothing may be a 5xx -----------------

@pytest.fixture
def api_schema(env, serve_photo):
    """The function as a WSGI app; every photo URL it is given answers with a photo (no traffic leaves)."""
    app = make_app()
    served = service.serving()
    assert served.wait_until_ready(120).ready
    adapter = requests_mock.Adapter()
    adapter.register_uri(requests_mock.ANY, requests_mock.ANY, content=png(7), headers={"Content-Type": "image/png"})
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    served._photos.session = session
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_fuzzed_requests_get_no_server_error_and_match_the_contract(api_schema, mode):
    """Bounded: a fixed number of requests per operation, derandomized so a run is repeatable."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {o.label for o in operations} == {"GET /", "POST /", "POST /events", "GET /healthz", "GET /readyz",
                                             "GET /metrics"}  # not its own URL
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (operation.query or operation.headers or operation.body):
            continue  # nothing to make invalid
        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            case.call_and_validate(checks=CHECKS)

        call()
