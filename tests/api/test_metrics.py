"""GET /metrics: Prometheus text from the app's own registry, moving with the requests served."""

from __future__ import annotations

import functions_framework
import pytest
from prometheus_client.parser import text_string_to_metric_families

from function import app as service
from tests.support import ROOT


@pytest.fixture
def client(env):
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    assert service.serving().wait_until_ready(120).ready
    return client


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.get_data(as_text=True)) for s in family.samples}


def change(before: dict, after: dict):
    """``moved(name, **labels)``: how much a sample grew between two scrapes."""
    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    return moved


def test_a_scrape_shows_requests_errors_and_phases_moving(client, serve_photo, server):
    before = scrape(client)
    assert client.post("/", json={"urls": [serve_photo(7), server.url("/gone.jpg")], "top_k": 1}).status_code == 200
    assert client.get("/nothing").status_code == 404
    after = scrape(client)

    moved = change(before, after)

    assert moved("bird_http_requests_total", route="/", status="200") == 1
    assert moved("bird_http_requests_total", route="other", status="404") == 1
    assert moved("bird_photo_errors_total", code="http_error") == 1
    for phase in ("fetch", "decode", "inference", "total"):
        assert moved("bird_phase_seconds_count", phase=phase) == 1
    assert moved("bird_model_calls_total") >= 1 and after[("bird_model_call_largest_batch", ())] >= 1
    assert after[("bird_http_requests_in_flight", ())] == 1  # the scrape itself


def test_the_model_state_is_a_gauge_per_state(client):
    samples = scrape(client)
    assert samples[("bird_resource_state", (("resource", "model"), ("state", "ready")))] == 1
    assert samples[("bird_resource_state", (("resource", "model"), ("state", "loading")))] == 0
    assert samples[("bird_model_load_seconds", ())] > 0


def test_each_app_has_its_own_registry(env):
    from prometheus_client import REGISTRY

    assert service.serving()._metrics.registry is not REGISTRY
    assert "bird_http_requests" not in {name for name in REGISTRY._names_to_collectors}


def test_answers_given_below_the_routes_are_counted_too(client):
    # 413 and 414 come from the bounds around the app (function/infra/limits.py), before any route.
    before = scrape(client)
    assert client.get("/?url=" + "x" * 5000).status_code == 414
    assert client.post("/healthz", data=b"x" * (2 * 1024 * 1024), content_type="application/json").status_code == 413
    after = scrape(client)

    moved = change(before, after)

    assert moved("bird_http_requests_total", route="/", status="414") == 1
    assert moved("bird_http_requests_total", route="/healthz", status="413") == 1
