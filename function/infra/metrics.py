"""Prometheus metrics, in a registry the app owns (never prometheus_client's global one). What other pieces
already count (model state and load time, batch totals) is read at scrape time (:meth:`Metrics.watch`),
so they do not depend on this module."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PHASES = ("fetch", "decode", "queue", "inference", "total")
STATES = ("not_loaded", "loading", "ready", "failed")
COST_REASONS = ("memory", "cpu", "scans", "deadline")  # function/core/decoding.py
# Why a delivery was refused (function/infra/senders.py): a bounded set, whatever callers send.
SENDER_REASONS = ("no_proof", "not_accepted", "malformed", "signature", "issuer", "audience", "expired",
                  "not_allowed", "token", "cert_url", "cert", "keys_unavailable")
# Seconds: a cached photo decodes in ms, a slow host takes up to the 60 s request deadline.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Watched(Collector):
    """Read at scrape time: each resource's state, the model's load time, ``(calls, images, largest)``."""

    def __init__(self, states: Callable[[], Mapping[str, str]], load_seconds: Callable[[], float | None],
                 batches: Callable[[], tuple[int, int, int]]):
        self.states, self.load_seconds, self.batches = states, load_seconds, batches

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("bird_resource_state", "1 for the state each resource is in",
                                  labels=["resource", "state"])
        for resource, current in self.states().items():
            for s in STATES:
                state.add_metric([resource, s], 1.0 if current == s else 0.0)
        yield state
        seconds = self.load_seconds()
        if seconds is not None:
            yield GaugeMetricFamily("bird_model_load_seconds", "How long the model took to load and warm up",
                                    value=seconds)
        calls, images, largest = self.batches()
        yield CounterMetricFamily("bird_model_calls", "Model calls (batches) made", value=calls)
        yield CounterMetricFamily("bird_model_call_images", "Images in all model calls; "
                                  "/ bird_model_calls_total = mean batch size", value=images)
        yield GaugeMetricFamily("bird_model_call_largest_batch", "Most images in one model call", value=largest)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("bird_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.in_flight = Gauge("bird_http_requests_in_flight", "HTTP requests being served now", registry=r)
        self.photo_errors = Counter("bird_photo_errors", "Photos without predictions, by error code",
                                    ["code"], registry=r)
        self.phase = Histogram("bird_phase_seconds", "Time per request phase (Server-Timing's phases)",
                               ["phase"], buckets=BUCKETS, registry=r)
        self.cost_refusals = Counter("bird_photo_cost_refusals", "Photos refused before decoding or stopped "
                                     "while decoding for their cost (decode_too_costly), by reason",
                                     ["reason"], registry=r)
        for reason in COST_REASONS:
            self.cost_refusals.labels(reason)
        self.delivery_refusals = Counter("bird_delivery_refusals", "Bucket deliveries refused for their sender's "
                                         "proof, by envelope and reason", ["envelope", "reason"], registry=r)

    def count_delivery_refusal(self, envelope: str, reason: str) -> None:
        self.delivery_refusals.labels(envelope, reason if reason in SENDER_REASONS else "other").inc()

    def count_cost_refusal(self, reason: str) -> None:
        self.cost_refusals.labels(reason).inc()

    def observe(self, timings_ms: Mapping[str, float], error_codes: Iterable[str]) -> None:
        """One classification: its phase timings and its photos' error codes."""
        for name in PHASES:
            if name in timings_ms:
                self.phase.labels(name).observe(max(0.0, timings_ms[name]) / 1000)
        for code in error_codes:
            self.photo_errors.labels(code).inc()

    def watch(self, states: Callable[[], Mapping[str, str]], load_seconds: Callable[[], float | None],
              batches: Callable[[], tuple[int, int, int]]) -> None:
        self.registry.register(_Watched(states, load_seconds, batches))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMeter:
    """Requests in flight and answers by route and status, counted below the routes (in ``limits``), so
    answers the bounds give (413, 414, 408) count too."""

    def __init__(self, metrics: Metrics, routes: Iterable[str]):
        self._metrics, self._routes = metrics, frozenset(routes)

    def started(self) -> None:
        self._metrics.in_flight.inc()

    def answered(self, path: str, status: int) -> None:
        self._metrics.in_flight.dec()
        self._metrics.requests.labels(self.route(path), str(status)).inc()

    def route(self, path: str) -> str:
        """For metric labels: a bounded set, whatever paths clients send."""
        path = path.rstrip("/") or "/"
        return path if path in self._routes else "other"
