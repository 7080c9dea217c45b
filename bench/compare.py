"""What a setting costs on the normal path: the service with each of two (or more) environments.

    python -m bench.run --only compare --compare DECODE_WORKERS=0,DECODE_WORKERS=2
    python -m bench.run --only compare --compare "THREADS=4,THREADS=8,THREADS=16"
    python -m bench.run --only compare --compare "A=1+B=2,A=0"      # several variables: joined by +

Each setting is a set of environment overrides on top of the image's (values may hold neither ``,``
nor ``+``); the first is the reference. For each: the service as the image starts it, ready, every
worker warmed; memory once ready; warm p50 (requests one after another); 8 clients for a level;
peak and after-load memory. ``settings.compare_rounds`` passes, every other one in reverse order, so
a trend in the machine's load hits every setting alike; medians over the passes. A setting the
function does not know yet is simply ignored by it: the pair can be run before the setting exists
(and then measures the noise).
"""

from __future__ import annotations

from typing import Any

import requests

from harness import Sampler

from .clients import level, post, warm
from .context import THROUGHPUT_CLIENTS, Bench
from .stats import median, ratio


def parse(spec: str) -> list[dict[str, str]]:
    """``"A=1+B=2,A=0"`` -> ``[{"A": "1", "B": "2"}, {"A": "0"}]``."""
    configs = []
    for part in spec.split(","):
        config = {}
        for item in part.split("+"):
            name, sep, value = item.strip().partition("=")
            if not sep or not name:
                raise ValueError(f"--compare: {item!r} is not NAME=VALUE")
            config[name] = value
        configs.append(config)
    if len(configs) < 2:
        raise ValueError("--compare needs at least two settings, comma-separated")
    return configs


def label(config: dict[str, str]) -> str:
    return "+".join(f"{k}={v}" for k, v in config.items())


def measure(b: Bench, config: dict[str, str]) -> dict[str, Any]:
    s = b.settings
    env = b.service_env(b.fresh_dir("compare-"), **config)
    server = b.service("compare", env)
    try:
        server.start()
        server.wait_ready(s.ready_timeout_s)
        with requests.Session() as session:
            for _ in range(2 * int(env.get("WORKERS", "1"))):  # each worker loads its own model
                post(session, server.url + "/", b.photo_urls, s.request_timeout_s)
        ready = server.memory_mb()
        warm_doc = warm(b, server, s.warm_requests)
        sampler = Sampler(server.memory_mb)
        sampler.start()
        load = level(b, server, THROUGHPUT_CLIENTS, s.level_seconds)
        peak = sampler.stop()
        after = server.memory_mb()
    finally:
        server.stop()
    return {"config": config, "warm_p50_s": warm_doc["latency_s"]["median"], "warm_errors": warm_doc["errors"],
            "rps": load["requests_per_s"], "load_errors": load["errors"], "load_p50_s": load["latency_s"]["median"],
            "function_cores": load["cpu"]["function_cores"], "other_cores": load["cpu"]["other_cores"],
            "ready": ready, "peak": peak, "after": after}


def compare(b: Bench, configs: list[dict[str, str]]) -> dict[str, Any]:
    order = [c for r in range(b.settings.compare_rounds) for c in (configs if r % 2 == 0 else configs[::-1])]
    samples: dict[str, list[dict[str, Any]]] = {label(c): [] for c in configs}
    for n, config in enumerate(order):
        doc = measure(b, config)
        samples[label(config)].append(doc)
        b.log(f"compare {n + 1}/{len(order)} {label(config)}: warm p50 {doc['warm_p50_s'] * 1000:.0f} ms, "
              f"8 clients {doc['rps']:.2f} req/s, RSS ready {doc['ready']['rss_mb']:.0f} MB "
              f"(PSS {doc['ready']['pss_mb']:.0f}), peak {doc['peak'].get('rss_mb', 0):.0f} MB")
    rows = []
    for config in configs:
        mine = samples[label(config)]
        rows.append({
            "label": label(config), "config": config, "samples": len(mine),
            "errors": sum(d["warm_errors"] + d["load_errors"] for d in mine),
            "warm_p50_s": median([d["warm_p50_s"] for d in mine]),
            "rps": median([d["rps"] for d in mine]), "rps_samples": [round(d["rps"], 2) for d in mine],
            "load_p50_s": median([d["load_p50_s"] for d in mine]),
            "function_cores": median([d["function_cores"] for d in mine]),
            "other_cores": median([d["other_cores"] for d in mine]),
            **{f"{when}_{k}": median([d[when].get(k, float("nan")) for d in mine])
               for when in ("ready", "peak", "after") for k in ("rss_mb", "pss_mb")},
        })
    ref = rows[0]
    for row in rows:
        row["vs_first"] = {k: ratio(row[k], ref[k]) for k in ("warm_p50_s", "rps", "ready_rss_mb", "ready_pss_mb",
                                                                "peak_rss_mb", "peak_pss_mb")}
    return {"rounds": b.settings.compare_rounds, "rows": rows, "samples": samples}
