"""The targets of issues 3 and 10 and the printed table, from the results document ``run.py`` writes."""

from __future__ import annotations

import math
from typing import Any

from .stats import median, ratio

COLD_VS_NAIVE = 0.40
COLD_VS_FLOOR = 1.15
WARM_MARGIN_S = 0.250
THROUGHPUT_VS_CEILING = 0.85
THROUGHPUT_CLIENTS = 8

# Issue 10 (LiteRT serving)
REPEAT_VS_NAIVE = 0.08
FIRST_VS_NAIVE = 0.45
SERVICE_COLD_VS_NAIVE = 0.10
WARM10_MARGIN_S = 0.100
VS_TENSORFLOW_SERVICE = 2.0
RSS_VS_TENSORFLOW = 0.25
IMAGE_MB = 500


def targets10(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets: each a ratio measured in this run (None-free: a missing input is a MISS)."""
    out: list[dict[str, Any]] = []
    cli, svc, ctr = results.get("cli"), results.get("services"), results.get("container")
    naive = cli["naive"]["wall_s"]["median"] if cli else math.nan
    if cli:
        rep = cli["repeat"]["wall_s"]["median"]
        r = ratio(rep, naive)
        t = cli["repeat"].get("timings_ms", {})
        out.append(_target("CLI repeat run <= 0.08 x naive", r, REPEAT_VS_NAIVE, r <= REPEAT_VS_NAIVE,
                           f"repeat {rep:.2f} s / naive {naive:.2f} s (model converted and cached; in the CLI: "
                           f"{_phases(t, ('cache_lookup', 'model_load', 'fetch', 'decode', 'inference', 'wall'))} ms)"))
        a = cli["first_auto"]["wall_s"]["median"]
        after = cli["first_auto"].get("flatbuffer_after_exit_s", {}).get("median", math.nan)
        today = cli.get("first_tensorflow", {}).get("wall_s", {}).get("median", math.nan)
        others = [cli[k].get("other_cores", {}).get("median", math.nan) for k in ("first_auto", "first_tensorflow")]
        r = ratio(a, naive)
        out.append(_target("CLI first run (auto, the default) <= 0.45 x naive", r, FIRST_VS_NAIVE,
                           r <= FIRST_VS_NAIVE,
                           f"first {a:.2f} s / naive {naive:.2f} s; judged on auto because it is what a user "
                           f"with empty caches gets by default and the issue asks that this first run not get "
                           f"slower than today's TensorFlow path: MODEL_RUNTIME=tensorflow (today's path, no "
                           f"conversion) took {_s(today)} s = {_s(ratio(today, naive))} x naive, auto / today = "
                           f"{_s(ratio(a, today))}; the detached conversion had the flatbuffer in the cache "
                           f"{_s(after)} s after the CLI exited; cores busy outside the CLI during its runs (the "
                           f"detached conversion counts there) {_s(others[0])} vs {_s(others[1])} for today's path"))
        lt = cli["first_litert"]["wall_s"]["median"]
        r = ratio(lt, naive)
        out.append(_target("  (info) CLI first run, MODEL_RUNTIME=litert <= 0.45 x naive", r, FIRST_VS_NAIVE,
                           r <= FIRST_VS_NAIVE,
                           f"first {lt:.2f} s / naive {naive:.2f} s: download + conversion (TensorFlow import, "
                           f"convert, verify) inside the run; {lt - a:+.2f} s against auto. Not the judged "
                           f"figure: only a user who forces litert pays it", info=True))
    if svc:
        cold = svc["litert_cold"]["first_answer_s"]["median"]
        r = ratio(cold, naive)
        t = svc["litert_cold"].get("timings_ms", {})
        out.append(_target("service cold start (.tflite by URL) <= 0.10 x naive", r, SERVICE_COLD_VS_NAIVE,
                           r <= SERVICE_COLD_VS_NAIVE,
                           f"spawn -> first five-photo answer {cold:.2f} s (port open "
                           f"{svc['litert_cold']['port_open_s']['median']:.2f} s) / naive {naive:.2f} s; in the "
                           f"first request: {_phases(t, COLD_PHASES)} ms"))
    if ctr:
        if "skipped" in ctr:
            out.append({"target": "container cold start (podman run) <= 0.10 x naive", "measured": math.nan,
                        "limit": SERVICE_COLD_VS_NAIVE, "result": "SKIP", "detail": ctr["skipped"], "info": False})
        else:
            c = ctr["carried"]["first_answer_s"]["median"]
            u = ctr["by_url"]["first_answer_s"]["median"]
            errors = ctr["carried"]["errors"] + ctr["by_url"]["errors"]
            r = ratio(c, naive)
            out.append(_target("container cold start (podman run) <= 0.10 x naive", r, SERVICE_COLD_VS_NAIVE,
                               r <= SERVICE_COLD_VS_NAIVE and errors == 0,
                               f"`podman run` -> first five-photo answer {c:.2f} s / naive {naive:.2f} s, the "
                               f"image as deployed (model and label map carried in the image); errors {errors}"))
            r = ratio(u, naive)
            out.append(_target("  (info) container, .tflite by URL <= 0.10 x naive", r, SERVICE_COLD_VS_NAIVE,
                               r <= SERVICE_COLD_VS_NAIVE,
                               f"{u:.2f} s / naive {naive:.2f} s: the same download as the function process's",
                               info=True))
            mb = ctr.get("image_mb") or math.nan
            out.append(_target("image size < 500 MB", ratio(mb, IMAGE_MB), 1.0, mb < IMAGE_MB,
                               f"{mb:.0f} MB ({ctr['image']}, built {ctr['created'][:19]}), base image included"))
    if svc and "warm" in svc:
        warm = svc["warm"]
        p50 = warm["latency_s"]["median"]
        fetch = warm["fetch_alone"]["slowest_median_s"]
        limit = fetch + WARM10_MARGIN_S
        t = warm["timings_ms"]
        out.append(_target("warm p50 <= slowest photo fetch + 100 ms", ratio(p50, limit), 1.0,
                           p50 <= limit and warm["errors"] == 0,
                           f"p50 {p50 * 1000:.0f} ms vs {fetch * 1000:.0f} + 100 = {limit * 1000:.0f} ms; in the "
                           f"function: {_phases(t, ('fetch', 'decode', 'queue', 'inference', 'total'))} ms; "
                           f"errors {warm['errors']}"))
    if svc and svc.get("pairs"):
        pairs = svc["pairs"]
        lite_rps = median([p["litert"]["requests_per_s"] for p in pairs])
        tf_rps = median([p["tensorflow"]["requests_per_s"] for p in pairs])
        ratios = [ratio(p["litert"]["requests_per_s"], p["tensorflow"]["requests_per_s"]) for p in pairs]
        r = ratio(lite_rps, tf_rps)
        errors = sum(p["litert"]["errors"] + p["tensorflow"]["errors"] for p in pairs)
        eff = [ratio(p["litert"]["images_per_function_core_s"], p["tensorflow"]["images_per_function_core_s"])
               for p in pairs]
        ceiling = svc.get("ceiling", {}).get("requests_per_s", math.nan)
        cpu = [(p["litert"]["cpu"], p["tensorflow"]["cpu"]) for p in pairs]
        cores = "; ".join(f"{_s(a['function_cores'])} / {_s(t['function_cores'])} "
                          f"(others {_s(a['other_cores'])} / {_s(t['other_cores'])})" for a, t in cpu)
        out.append(_target("8 clients >= 2.0 x the TensorFlow service, 0 errors", r, VS_TENSORFLOW_SERVICE,
                           r >= VS_TENSORFLOW_SERVICE and errors == 0,
                           f"LiteRT {lite_rps:.2f} req/s vs TensorFlow {tf_rps:.2f} req/s (medians of {len(pairs)} "
                           f"alternating pairs; per pair {', '.join(_s(x) for x in ratios)}); errors {errors}; "
                           f"images per busy function core-second LiteRT/TF {', '.join(_s(x) for x in eff)}; "
                           f"function cores LiteRT / TF per pair: {cores}"))
        out.append(_target("  (info) 8 clients vs decode+inference ceiling", ratio(lite_rps, ceiling),
                           math.nan, True,
                           f"{lite_rps:.2f} req/s vs {ceiling:.2f} req/s (decode five photos + LiteRT in calls of 2, "
                           f"{svc.get('ceiling', {}).get('parallel')} threads, in-process, no HTTP, measured alone; "
                           f"best of {[c['requests_per_s'] for c in svc.get('ceilings', [])]})", info=True))
    if svc and "tensorflow" in svc:
        lite_rss = svc["litert_cold"]["rss_once_ready_mb"]["median"]
        lite_pss = svc["litert_cold"]["pss_once_ready_mb"]["median"]
        tf_rss = svc["tensorflow"]["memory_once_ready"]["rss_mb"]
        r = ratio(lite_rss, tf_rss)
        out.append(_target("service RSS once ready <= 0.25 x TensorFlow's", r, RSS_VS_TENSORFLOW,
                           r <= RSS_VS_TENSORFLOW,
                           f"LiteRT {lite_rss:.0f} MB vs TensorFlow {tf_rss:.0f} MB (VmRSS of the process tree, "
                           f"model loaded, one request served; PSS {lite_pss:.0f}"
                           f" vs {svc['tensorflow']['memory_once_ready']['pss_mb']:.0f} MB)"))
    return out


COLD_PHASES = ("model_download", "model_load", "labels", "fetch", "decode", "inference", "total")


def _level(tp: dict[str, Any], clients: int) -> dict[str, Any] | None:
    return next((lv for lv in tp.get("levels", []) if lv["clients"] == clients), None)


def _phases(t: dict[str, float], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {t[k]:.0f}" for k in keys if k in t) or "—"


def breakdown10(results: dict[str, Any]) -> dict[str, Any]:
    """Medians of the function's own timings_ms for issue 10's runs, phase by phase."""
    columns: dict[str, dict[str, float]] = {}
    cli, svc, ctr = results.get("cli"), results.get("services"), results.get("container")
    if cli:
        for key, name in (("first_auto", "CLI 1st auto"), ("first_litert", "CLI 1st litert"),
                          ("first_tensorflow", "CLI 1st TF"), ("repeat", "CLI repeat")):
            if key not in cli:
                continue
            col = dict(cli[key].get("timings_ms", {}))
            outside = cli[key]["wall_s"]["median"] * 1000
            if "wall" in col and math.isfinite(outside):
                col["process_outside_cli"] = outside - col["wall"]
            columns[name] = col
    if svc:
        columns["service cold"] = svc["litert_cold"].get("timings_ms", {})
        if "tensorflow" in svc:
            columns["TF service cold"] = svc["tensorflow"].get("timings_ms", {})
        if "warm" in svc:
            columns["warm"] = svc["warm"]["timings_ms"]
        level = _level(svc.get("throughput", {}), THROUGHPUT_CLIENTS)
        if level:
            columns["8 clients"] = level["timings_ms"]
        if svc.get("pairs"):
            columns["TF 8 clients"] = svc["pairs"][0]["tensorflow"]["timings_ms"]
    if svc and "litert_cold_local" in svc:
        columns["svc cold, file"] = svc["litert_cold_local"].get("timings_ms", {})
    if ctr and "carried" in ctr:
        columns["container cold"] = ctr["carried"]["timings_ms"]
    keys: list[str] = []
    for col in columns.values():
        keys += [k for k in col if k not in keys]
    return {"columns": columns, "keys": keys}


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


def _target(name: str, measured: float, limit: float, passed: bool, detail: str,
            info: bool = False) -> dict[str, Any]:
    ok = bool(passed) and math.isfinite(measured)
    result = ("pass" if ok else "miss") if info else ("PASS" if ok else "MISS")
    if info and not math.isfinite(limit):
        result = "info"
    return {"target": name, "measured": measured, "limit": limit, "result": result, "detail": detail, "info": info}


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
    w(f"Bird classifier benchmark (issues 3 and 10) — {meta['date']}")
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
    if "tflite" in fx:
        w(f"converted: float32 .tflite {fx['tflite']['bytes'] / 1e6:.1f} MB, max |TF - LiteRT| "
          f"{fx['tflite']['max_abs_diff']:.2g}")
    image = meta["service"].get("issue 10 services (as the image)")
    if image and (results.get("services") or results.get("sweep")):
        w("functions-framework (issue 10's services, as the image runs it): "
          + ", ".join(f"{k}={v}" for k, v in image.items()))
    if any(k in results for k in ("warm", "throughput", "fanout")):
        w(f"functions-framework (issue 3's scenarios): WORKERS={meta['service']['WORKERS']}, "
          f"THREADS={meta['service']['THREADS']}")

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

    section = render10(results)
    if section:
        lines.append(section)
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


def render10(results: dict[str, Any]) -> str:
    """Issue 10's sections of the printed table."""
    lines: list[str] = []
    w = lines.append
    cli, svc, ctr, sw = (results.get(k) for k in ("cli", "services", "container", "sweep"))
    if cli:
        w("")
        w(f"A. CLI, five photos, fresh processes; wall time from outside, {len(cli['naive']['runs'])} run(s) "
          f"(cache prepared once with python -m function.model.convert: {cli['prepare_cache_s']:.1f} s)")
        w(f"   {'':<66}{'median s':>9}  {'min–max':>13}  failed  x naive")
        naive = cli["naive"]["wall_s"]["median"]
        rows = (("naive", "naive original (bench/naive.py, TensorFlow, per photo)"),
                ("first_auto", "1st run, empty caches, auto (TF answers, converts detached)"),
                ("first_litert", "1st run, empty caches, MODEL_RUNTIME=litert (converts inside)"),
                ("first_tensorflow", "1st run, empty caches, MODEL_RUNTIME=tensorflow (today's path)"),
                ("repeat", "repeat run, model converted and cached (LiteRT, no TF import)"))
        for key, label in rows:
            sm = cli[key]["wall_s"]
            w(f"   {label:<66}{_s(sm['median']):>9}  {_spread(sm):>13}  {cli[key]['failed_runs']:>6}  "
              f"{_s(ratio(sm['median'], naive)):>7}")
        fa = cli["first_auto"].get("flatbuffer_after_exit_s", {})
        w(f"   auto's detached conversion: flatbuffer in the cache {_s(fa.get('median', math.nan))} s after the "
          f"CLI exited (min–max {_s(fa.get('min', math.nan))}–{_s(fa.get('max', math.nan))})")
    if svc:
        lc = svc["litert_cold"]
        w("")
        w(f"B. Service (functions-framework, {', '.join(f'{k}={v}' for k, v in svc['env'].items())} as in the "
          f"image): .tflite by URL from the stand-in")
        w(f"   cold start, spawn -> first five-photo answer: {_s(lc['first_answer_s']['median'])} s "
          f"({_spread(lc['first_answer_s'])}); port open {_s(lc['port_open_s']['median'])} s; "
          f"RSS once ready {_s(lc['rss_once_ready_mb']['median'], 0)} MB "
          f"(PSS {_s(lc['pss_once_ready_mb']['median'], 0)})")
        loc = svc.get("litert_cold_local")
        if loc:
            w(f"   the same with the .tflite on local disk (as the image carries it): first answer "
              f"{_s(loc['first_answer_s']['median'])} s ({_spread(loc['first_answer_s'])})")
        tf = svc.get("tensorflow")
        if tf:
            w(f"   TensorFlow runtime (MODEL_RUNTIME=tensorflow, hub module by URL): first answer "
              f"{_s(tf['first_answer_s'])} s; RSS once ready {_s(tf['memory_once_ready']['rss_mb'], 0)} MB "
              f"(PSS {_s(tf['memory_once_ready']['pss_mb'], 0)})")
        warm = svc.get("warm")
        if warm:
            sm = warm["latency_s"]
            fa = warm["fetch_alone"]
            w(f"   warm: p50 {_ms(sm['median'])} ms  p95 {_ms(sm['p95'])} ms  ({sm['n']} in a row, errors "
              f"{warm['errors']}); slowest photo alone {_ms(fa['slowest_median_s'])} ms ({fa['slowest']})")
        best = svc.get("ceiling")
        w(f"   {'':<17}{'clients':>7} {'req/s':>7} {'images/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'errors':>6} "
          f"{'img/core-s':>10}   cores: function / stand-in / clients / others")
        levels = [("LiteRT", lv) for lv in svc.get("throughput", {}).get("levels", [])]
        for i, pair in enumerate(svc.get("pairs", [])):
            levels += [(f"pair {i + 1} LiteRT", pair["litert"]), (f"pair {i + 1} TF", pair["tensorflow"])]
        for name, lv in levels:
            cpu = lv["cpu"]
            w(f"   {name:<17}{lv['clients']:>7} {_s(lv['requests_per_s']):>7} {_s(lv['images_per_s'], 1):>8} "
              f"{_ms(lv['latency_s']['median']):>7} {_ms(lv['latency_s']['p95']):>7} {lv['errors']:>6} "
              f"{_s(lv.get('images_per_function_core_s', math.nan), 1):>10}   "
              f"{_s(cpu['function_cores'])} / {_s(cpu['standin_cores'])} / {_s(cpu['bench_cores'])} / "
              f"{_s(cpu.get('other_cores', math.nan))}")
        for ceil in svc.get("ceilings", [best] if best else []):
            w(f"   decode+inference ceiling ({ceil['parallel']} threads, calls of {ceil['batch']}, in-process): "
              f"{_s(ceil['requests_per_s'])} req/s; per request decode {ceil['decode_ms_per_request']} ms + "
              f"inference {ceil['inference_ms_per_request']} ms (thread time), {ceil['cpu_cores_busy']} cores busy")
        for key in [k for k in svc if k.startswith("memory_load")]:
            m = svc[key]
            if m:
                w(f"   memory, {m['clients']} concurrent requests of {m['photos_per_request']} x {m['photo']}: peak "
                  f"RSS {m['peak']['rss_mb']:.0f} MB, PSS {m['peak']['pss_mb']:.0f} MB; "
                  f"after {m['after']['rss_mb']:.0f} MB RSS; p50 {_ms(m['latency_s']['median'])} ms; "
                  f"errors {m['errors']}")
    if ctr:
        w("")
        if "skipped" in ctr:
            w(f"C. Container: skipped: {ctr['skipped']}")
        else:
            w(f"C. Container {ctr['image']} ({ctr['image_mb']} MB), run as knative/service.yaml runs it: "
              f"`podman run` -> first five-photo answer")
            for key, label in (("carried", "model carried in the image"), ("by_url", ".tflite by URL")):
                v = ctr[key]
                w(f"   {label:<28} {_s(v['first_answer_s']['median'])} s ({_spread(v['first_answer_s'])}), "
                  f"port open {_s(v['port_open_s']['median'])} s; errors {v['errors']}")
    if sw:
        w("")
        w(f"D. Sweep (LiteRT service, one setting changed from {sw['base']}; {sw['seconds_per_level']:g} s per level, "
          f"{sw['rounds']} round(s), medians)")
        w(f"   {'setting':<24}{'8 clients req/s':>16} {'p50 ms':>7} {'errors':>6} {'1 client p50 ms':>16}  cores")
        for row in sw["table"]:
            w(f"   {row['label']:<24}{_s(row['c8_requests_per_s']):>16} {_ms(row['c8_p50_s']):>7} "
              f"{row['errors']:>6} {_ms(row['c1_p50_s']):>16}  {_s(row['function_cores'])} (others "
              f"{_s(row['other_cores'])}); 8-client samples {row['c8_requests_per_s_samples']}")
    bd = results.get("breakdown10")
    if bd and bd["columns"]:
        w("")
        w("E. Where the time goes now: the function's own timings_ms, medians (ms)")
        cols = list(bd["columns"])
        w(f"   {'phase':<22}" + "".join(f"{c:>16}" for c in cols))
        for key in bd["keys"]:
            w(f"   {key:<22}" + "".join(f"{_s(bd['columns'][c].get(key, math.nan), 1):>16}" for c in cols))
    if results.get("targets10"):
        w("")
        w("Targets (issue 10: LiteRT serving)")
        for t in results["targets10"]:
            limit = "" if not math.isfinite(t["limit"]) else f" (limit {t['limit']:g})"
            w(f"   {t['result']:<5} {t['target']:<58} measured {_s(t['measured'])}{limit}")
            w(f"         {t['detail']}")
    return "\n".join(lines)
