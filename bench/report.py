"""The targets of issue 3 and the printed table, from the results document ``run.py`` writes."""

from __future__ import annotations

import math
from typing import Any

from .stats import ratio

COLD_VS_NAIVE = 0.40
COLD_VS_FLOOR = 1.15
WARM_MARGIN_S = 0.250
THROUGHPUT_VS_CEILING = 0.85
THROUGHPUT_CLIENTS = 8


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was measured, the limit, PASS/MISS (None when not measured in this run)."""
    out = []
    cold = results.get("cold_cli")
    if cold:
        c, n, f = (cold[k]["wall_s"]["median"] for k in ("cold", "naive", "floor"))
        r = ratio(c, n)
        reach = ratio(f, n)
        note = (f"; the floor alone is {reach:.2f} x naive, so no cold start above the floor can pass here"
                if reach > COLD_VS_NAIVE else f"; floor / naive = {reach:.2f}")
        out.append(_target("cold CLI <= 0.40 x naive original", r, COLD_VS_NAIVE, r <= COLD_VS_NAIVE,
                           f"cold {c:.2f} s / naive {n:.2f} s{note}"))
        r = ratio(c, f)
        out.append(_target("cold CLI <= 1.15 x floor", r, COLD_VS_FLOOR, r <= COLD_VS_FLOOR,
                           f"cold {c:.2f} s / floor {f:.2f} s (cold - floor = {c - f:+.2f} s)"))
    warm = results.get("warm")
    if warm:
        p50 = warm["latency_s"]["median"]
        fetch = warm["fetch_alone"]["slowest_median_s"]
        limit = fetch + WARM_MARGIN_S
        t = warm["timings_ms"]
        parts = ", ".join(f"{k} {t[k]:.0f}" for k in ("fetch", "decode", "queue", "inference", "total") if k in t)
        out.append(_target("warm p50 <= slowest photo fetch + 250 ms", ratio(p50, limit), 1.0,
                           p50 <= limit and warm["errors"] == 0,
                           f"p50 {p50 * 1000:.0f} ms vs {fetch * 1000:.0f} + 250 = {limit * 1000:.0f} ms; "
                           f"in the function (ms): {parts}; errors {warm['errors']}"))
    tp, ceiling = results.get("throughput"), results.get("ceiling")
    if tp and ceiling:
        level = next((lv for lv in tp["levels"] if lv["clients"] == THROUGHPUT_CLIENTS), None)
        best = ceiling["batches"].get(ceiling.get("best", "5"), {})
        ref = best.get("requests_per_s", math.nan)
        if level is not None:
            r = ratio(level["requests_per_s"], ref)
            cpu = level.get("cpu", {})
            busy = ", ".join(f"{name} {cpu.get(key, math.nan):.2f}" for name, key in (
                ("function", "function_cores"), ("stand-in", "standin_cores"), ("clients", "bench_cores"),
                ("others", "other_cores")))
            per_core = level.get("images_per_function_core_s", math.nan)
            ref_core = best.get("images_per_core_s") or math.nan
            out.append(_target("8 clients >= 0.85 x inference ceiling, 0 errors", r, THROUGHPUT_VS_CEILING,
                               r >= THROUGHPUT_VS_CEILING and level["errors"] == 0,
                               f"{level['requests_per_s']:.2f} req/s vs ceiling {ref:.2f} req/s "
                               f"({_ceiling_name(best)}); "
                               f"errors {level['errors']}; cores busy: {busy}; per busy core: "
                               f"{per_core:.1f} vs {ref_core:.1f} images/core-s = {ratio(per_core, ref_core):.2f}"))
    return out


def _target(name: str, measured: float, limit: float, passed: bool, detail: str) -> dict[str, Any]:
    ok = bool(passed) and math.isfinite(measured)
    return {"target": name, "measured": measured, "limit": limit, "result": "PASS" if ok else "MISS",
            "detail": detail}


# -- printing -----------------------------------------------------------------------------------
def _s(v: float, digits: int = 2) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ms(v_s: float) -> str:
    return "—" if v_s is None or not math.isfinite(v_s) else f"{v_s * 1000:.0f}"


def _spread(summary: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{_s(summary['min'] * scale, digits)}–{_s(summary['max'] * scale, digits)}"


def render(results: dict[str, Any]) -> str:
    meta, lines = results["meta"], []
    w = lines.append
    net = meta["standin"]
    w(f"Bird classifier benchmark (issue 3) — {meta['date']}")
    m = meta["machine"]
    w(f"machine: {m['cpus']} CPUs usable, {m['mem_gib']} GiB, Python {m['python']}, TensorFlow {m['tensorflow']}; "
      f"load average (1 min) at start {m['load_avg_start']}, at end {m.get('load_avg_end', '?')}")
    if m["load_avg_start"] > 0.5 * m["cpus"]:
        w("  WARNING: the machine was busy with other work when the run started; numbers are noisy")
    w(f"stand-in internet: {net['latency_ms']:.0f} ms per request, "
      f"{net['bandwidth_mbps']:g} MB/s per connection" if net["bandwidth_mbps"] else
      f"stand-in internet: {net['latency_ms']:.0f} ms per request, unlimited bandwidth")
    fx = meta["fixtures"]
    w(f"model: MobileNetV2-sized TF1 Hub module, saved_model.pb {fx['model']['saved_model_pb_bytes'] / 1e6:.1f} MB, "
      f"tar.gz {fx['model']['tar_gz_bytes'] / 1e6:.1f} MB; photos: "
      + ", ".join(f"{p['width']}x{p['height']} {p['bytes'] / 1e6:.2f} MB" for p in fx["photos"]))
    for warning in fx.get("warnings", []):
        w(f"  WARNING fixtures: {warning}")
    w(f"functions-framework: WORKERS={meta['service']['WORKERS']}, THREADS={meta['service']['THREADS']}")

    cold = results.get("cold_cli")
    if cold:
        w("")
        w(f"1. Cold CLI: fresh process, empty hub cache, 5 photos; wall time from outside, "
          f"{meta['settings']['runs']} run(s)")
        w(f"   {'':<58}{'median s':>9}  {'min–max':>13}  failed  others' cores")
        rows = (("cold", "cold CLI      python main.py --json URL x5"),
                ("naive", "naive         bench/naive.py URL x5 (original algorithm)"),
                ("floor", "floor         import TF + hub.load(local dir) + 1st call"))
        for key, label in rows:
            sm = cold[key]["wall_s"]
            w(f"   {label:<58}{_s(sm['median']):>9}  {_spread(sm):>13}  {cold[key]['failed_runs']:>6}  "
              f"{_s(cold[key]['other_cores']['median'])}")
        c, n, f = (cold[k]["wall_s"]["median"] for k in ("cold", "naive", "floor"))
        w(f"   cold / naive = {_s(ratio(c, n))}   cold / floor = {_s(ratio(c, f))}   "
          f"model downloads per cold run: {[r['model_downloads'] for r in cold['cold']['runs']]}")

    warm = results.get("warm")
    if warm:
        sm = warm["latency_s"]
        fa = warm["fetch_alone"]
        w("")
        w(f"2. Warm request: functions-framework, model loaded (ready after {_s(warm['ready_s'], 1)} s); "
          f"{sm['n']} five-photo POSTs one after another")
        w(f"   p50 {_ms(sm['median'])} ms   p95 {_ms(sm['p95'])} ms   min–max {_spread(sm, 1000, 0)} ms   "
          f"errors {warm['errors']}   (first request after ready: {_ms(warm['first_request_s'])} ms)")
        for example in warm["error_examples"]:
            w(f"   error: {example[:150]}")
        w(f"   slowest photo fetched alone: {fa['slowest']} {_ms(fa['slowest_median_s'])} ms (median of "
          f"{len(next(iter(fa['per_photo'].values()))['samples_s'])}); all: "
          + ", ".join(f"{_ms(v['median_s'])}" for v in fa["per_photo"].values()) + " ms")

    tp, ceiling = results.get("throughput"), results.get("ceiling")
    if tp:
        w("")
        w(f"3. Throughput: concurrent clients, five photos per request, {meta['settings']['level_seconds']:g} s "
          "per level")
        w("   (req/s: each request counted by the share of its duration inside the level's window; "
          "see scenarios.rate_in_window)")
        w(f"   {'clients':>7} {'requests':>8} {'req/s':>7} {'images/s':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'errors':>6} {'img/core-s':>10}   cores busy: function / stand-in / clients / others")
        for lv in tp["levels"]:
            cpu = lv["cpu"]
            w(f"   {lv['clients']:>7} {lv['requests']:>8} {_s(lv['requests_per_s']):>7} {_s(lv['images_per_s'], 1):>8} "
              f"{_ms(lv['latency_s']['median']):>7} {_ms(lv['latency_s']['p95']):>7} {lv['errors']:>6} "
              f"{_s(lv.get('images_per_function_core_s', math.nan), 1):>10}   "
              f"{_s(cpu['function_cores'])} / {_s(cpu['standin_cores'])} / {_s(cpu['bench_cores'])} / "
              f"{_s(cpu.get('other_cores', math.nan))}")
            for example in lv["error_examples"]:
                w(f"           error: {example[:150]}")
    if ceiling:
        for key, b in ceiling["batches"].items():
            mark = "  <- the ceiling" if key == ceiling.get("best") else ""
            w(f"   inference-only, {_ceiling_name(b):<34}: {_s(b['images_per_s'], 1)} images/s = "
              f"{_s(b['requests_per_s'])} five-photo req/s ({_s(b['ms_per_call'], 0)} ms per call, "
              f"{_s(b['cpu_cores_busy'])} cores busy, {_s(b.get('images_per_core_s') or math.nan, 1)} img/core-s)"
              f"{mark}")

    bd = results.get("breakdown")
    if bd and bd["columns"]:
        w("")
        w("4. Where the time goes: the function's own timings_ms, medians (ms)")
        cols = list(bd["columns"])
        w(f"   {'phase':<22}" + "".join(f"{c:>15}" for c in cols))
        for key in bd["keys"]:
            w(f"   {key:<22}" + "".join(f"{_s(bd['columns'][c].get(key, math.nan), 1):>15}" for c in cols))
        if bd["not_reported"]:
            w(f"   not in these runs' timings_ms: {', '.join(bd['not_reported'])}")

    fo = results.get("fanout")
    if fo:
        w("")
        w("5. Fan-out: 40 photos per request, instances behind a round-robin proxy")
        if "skipped" in fo:
            w(f"   skipped: {fo['skipped']}")
        else:
            if fo.get("note"):
                w(f"   note: {fo['note']}")
            for lv in fo["levels"]:
                sm = lv["latency_s"]
                w(f"   {lv['instances']} instance(s): p50 {_ms(sm['median'])} ms  p95 {_ms(sm['p95'])} ms  "
                  f"errors {lv['errors']}  requests through the proxy {lv['proxied_requests']}")
                for example in lv["error_examples"]:
                    w(f"           error: {example[:150]}")

    if results.get("targets"):
        w("")
        w("Targets (issue 3)")
        for t in results["targets"]:
            w(f"   {t['result']:<5} {t['target']:<48} measured {_s(t['measured'])} (limit {t['limit']:g})")
            w(f"         {t['detail']}")
    for name, err in results.get("errors", {}).items():
        w(f"ERROR in {name}: {err}")
    return "\n".join(lines)


def _ceiling_name(b: dict) -> str:
    if b.get("parallel"):
        return f"{b['parallel']} single-thread callers, batch {b['batch']}"
    return f"one caller, batch {b['batch']}"
