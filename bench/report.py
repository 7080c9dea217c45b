"""The targets and the printed table, from the results document ``run.py`` writes.

Every target is a ratio of two figures measured in the same run (the machine is shared and noisy:
absolute times move from one run to the next, ratios much less). A row whose inputs were not
measured in this run (``--only``) reads ``n/a``; a scenario that could not run reads ``SKIP`` with
the reason.
"""

from __future__ import annotations

import math
from typing import Any

from .service import judged_level
from .stats import ratio

FIRST_VS_NAIVE = 0.45
SECOND_VS_FIRST = 1.0
REPEAT_VS_NAIVE = 0.08
SERVICE_COLD_VS_NAIVE = 0.05
THROUGHPUT_VS_CEILING = 0.85
RSS_VS_TENSORFLOW = 0.25
TWO_VS_ONE = 0.55  # the ideal 0.5 plus what fanning out may cost


def _row(figure: str, target: str, measured: float, limit: float, passed: bool, detail: str,
         result: str | None = None) -> dict[str, Any]:
    if result is None:
        result = "n/a" if not math.isfinite(measured) else ("PASS" if passed else "MISS")
    return {"figure": figure, "target": target, "measured": measured, "limit": limit, "result": result,
            "detail": detail}


def _median(doc: dict[str, Any] | None, *path: str) -> float:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return math.nan
        doc = doc[key]
    return doc.get("median", math.nan) if isinstance(doc, dict) else math.nan


def _tf_seen(flags: list[bool | None]) -> str:
    if any(f is None for f in flags):
        return f"not verified in {sum(f is None for f in flags)} of {len(flags)}"
    return f"{sum(flags)} of {len(flags)}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cli, svc, ctr = results.get("cli"), results.get("service"), results.get("container")
    naive = _median(cli, "naive", "wall_s")
    if cli:
        first = _median(cli, "first", "wall_s")
        out.append(_row("CLI first run, empty caches", f"<= {FIRST_VS_NAIVE} x naive", ratio(first, naive),
                        FIRST_VS_NAIVE, ratio(first, naive) <= FIRST_VS_NAIVE,
                        f"first {_s(first)} s / naive {_s(naive)} s (medians of {cli['naive']['wall_s']['n']}); "
                        f"TensorFlow imported in {_tf_seen(cli['first']['tensorflow_imported'])} first runs"))
        per_round = [d["second_vs_first"] for d in cli["rounds"]]
        worst = max(per_round) if per_round and all(math.isfinite(r) for r in per_round) else math.nan
        rounds = "; ".join(
            f"{_by(d, 'first')['wall_s']:.2f} -> {_by(d, 'second')['wall_s']:.2f} s (second on "
            f"{_runtime(_by(d, 'second')['tensorflow_imported'])}, started "
            f"{d['gap_first_exit_to_second_spawn_ms']:.1f} ms after the first exited, conversion "
            f"{'done' if d['conversion_done_when_second_started'] else 'not done'} then: flatbuffer "
            f"{_s(d['flatbuffer_after_first_exit_s'])} s after the first exited)" for d in cli["rounds"])
        out.append(_row("CLI second run, started right after the first", f"<= {SECOND_VS_FIRST} x the first",
                        worst, SECOND_VS_FIRST, worst <= SECOND_VS_FIRST,
                        f"the worst round's second / first; per round {rounds}"))
        repeat = _median(cli, "repeat", "wall_s")
        flags = cli["repeat"]["tensorflow_imported"]
        r = ratio(repeat, naive)
        out.append(_row("CLI repeat once the conversion is done", f"<= {REPEAT_VS_NAIVE} x naive, no TensorFlow",
                        r, REPEAT_VS_NAIVE, r <= REPEAT_VS_NAIVE and bool(flags) and not any(f is not False
                                                                                              for f in flags),
                        f"repeat {_s(repeat)} s / naive {_s(naive)} s; TensorFlow imported in {_tf_seen(flags)} "
                        f"repeat runs (sys.modules at exit)"))
    if svc:
        cold = _median(svc, "cold", "first_answer_s")
        r = ratio(cold, naive)
        out.append(_row("service cold start, .tflite on local disk", f"<= {SERVICE_COLD_VS_NAIVE} x naive", r,
                        SERVICE_COLD_VS_NAIVE, r <= SERVICE_COLD_VS_NAIVE,
                        f"spawn -> first five-photo answer {_s(cold)} s (port open "
                        f"{_s(_median(svc, 'cold', 'port_open_s'))} s) / naive {_s(naive)} s"
                        + ("" if cli else " (naive not run: --only without cli)")))
        lv, tp = judged_level(svc), svc.get("throughput", {})
        best = tp.get("ceiling", {}).get("requests_per_s", math.nan)
        if lv is not None:
            r = ratio(lv["requests_per_s"], best)
            cpu = lv["cpu"]
            out.append(_row("8 clients, 5-photo requests", f">= {THROUGHPUT_VS_CEILING} x the decode+inference "
                            "ceiling, 0 errors", r, THROUGHPUT_VS_CEILING,
                            r >= THROUGHPUT_VS_CEILING and lv["errors"] == 0,
                            f"{_s(lv['requests_per_s'])} req/s vs ceiling {_s(best)} req/s (best of "
                            f"{[c['requests_per_s'] for c in tp.get('ceilings', [])]}: before, after; decoding "
                            f"in-process instead of in the decode workers: "
                            f"{_s(tp.get('in_process_ceiling', {}).get('requests_per_s', math.nan))}); errors "
                            f"{lv['errors']}; cores busy: function {_s(cpu['function_cores'])}, stand-in "
                            f"{_s(cpu['standin_cores'])}, clients {_s(cpu['bench_cores'])}, others "
                            f"{_s(cpu['other_cores'])}; " + _cpu_per_request(lv, tp.get("ceiling", {}))))
        if "tensorflow" in svc:
            lite, tf = svc["cold"]["memory_once_ready"], svc["tensorflow"]["memory_once_ready"]
            r = ratio(lite["rss_mb"]["median"], tf["rss_mb"])
            out.append(_row("RSS once ready", f"<= {RSS_VS_TENSORFLOW} x the TensorFlow service", r,
                            RSS_VS_TENSORFLOW, r <= RSS_VS_TENSORFLOW,
                            f"RSS {_s(lite['rss_mb']['median'], 0)} vs {_s(tf['rss_mb'], 0)} MB; PSS "
                            f"{_s(lite['pss_mb']['median'], 0)} vs {_s(tf['pss_mb'], 0)} MB "
                            f"({_s(ratio(lite['pss_mb']['median'], tf['pss_mb']))}); VmHWM "
                            f"{_s(lite['hwm_mb']['median'], 0)} vs {_s(tf['hwm_mb'], 0)} MB (the tree: gunicorn "
                            f"arbiter + worker, model loaded, one request served)"))
    so = results.get("scaleout")
    if so:
        out += _scaleout_rows(so)
    if ctr:
        if "skipped" in ctr:
            out.append(_row("container cold start (podman run -> first answer)", "", math.nan, math.nan,
                            False, ctr["skipped"], result="SKIP"))
        else:
            c = ctr["first_answer_s"]["median"]
            out.append(_row("container cold start (podman run -> first answer)", "", ratio(c, naive),
                            math.nan, ctr["errors"] == 0,
                            f"{_s(c)} s / naive {_s(naive)} s, model in the image; errors {ctr['errors']}; image "
                            f"{ctr['image']} {ctr['image_mb']} MB", result="info"))
    return out


def _scaleout_rows(so: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    one = next((r for r in so["by_k"] if r["k"] == 1), None)
    for r in so["by_k"]:
        if r["k"] == 1 or one is None:
            continue
        measured = r["vs_one"]
        detail = (f"{so['photos']} photos: {_s(r['latency_s']['median'])} s on {r['k']} instances / "
                  f"{_s(one['latency_s']['median'])} s on one (one without FANOUT_URL "
                  f"{_s(so['alone']['latency_s']['median'])} s); per request: front instance CPU "
                  f"{_s(r['front_cpu_s'])} s, the others {_s(r['others_cpu_s'])} s (one instance: "
                  f"{_s(one['front_cpu_s'])} s); proxy {_s(r['proxy_ms'], 1)} ms over {_s(r['sub_requests'], 0)} "
                  f"sub-requests ({_s(r['refused'], 0)} refused as the front's own); fan-out transport "
                  f"{_s(r['transport_ms'], 1)} ms summed over chunks; JSON {_s(so['serialisation_ms_per_chunk'], 2)} "
                  f"ms per chunk each way; chunks {_s(r['remote_chunks'], 0)} remote, {_s(r['local_chunks'], 0)} "
                  f"local ({_s(r['backups'], 0)} backups); the busiest instance's CPU / one instance's "
                  f"{_s(r.get('busiest_cpu_vs_one'))}; cores busy meanwhile with the proxy, stand-in and client "
                  f"{_s(r.get('bench_cores'))}, with other work {_s(r['other_cores'])}")
        if r["k"] == 2:
            rows.append(_row("one big request on 2 instances vs 1", f"<= {TWO_VS_ONE} x one instance", measured,
                             TWO_VS_ONE, measured <= TWO_VS_ONE, detail))
        else:
            rows.append(_row(f"one big request on {r['k']} instances vs 1", "", measured, math.nan, True, detail,
                             result="info"))
    return rows


def _runtime(tensorflow_imported: bool | None) -> str:
    return {True: "TensorFlow", False: "LiteRT", None: "an unverified runtime"}[tensorflow_imported]


def _by(round_doc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(r for r in round_doc["runs"] if r["kind"] == kind)


def breakdown(results: dict[str, Any]) -> dict[str, Any]:
    """Medians of the function's own timings_ms, by where they were measured."""
    columns: dict[str, dict[str, float]] = {}
    cli, svc, ctr = results.get("cli"), results.get("service"), results.get("container")
    if cli:
        for key in ("first", "second", "repeat"):
            col = dict(cli[key].get("timings_ms", {}))
            outside = cli[key]["wall_s"]["median"] * 1000
            if "wall" in col and math.isfinite(outside):
                col["outside the CLI"] = outside - col["wall"]  # interpreter start, imports, exit
            columns[f"CLI {key}"] = col
    if svc:
        columns["service cold"] = svc["cold"].get("timings_ms", {})
        if "warm" in svc:
            columns["warm"] = svc["warm"]["timings_ms"]
        lv = judged_level(svc)
        if lv:
            columns["8 clients"] = lv["timings_ms"]
        if "tensorflow" in svc:
            columns["TF service cold"] = svc["tensorflow"].get("timings_ms", {})
    if ctr and "timings_ms" in ctr:
        columns["container cold"] = ctr["timings_ms"]
    keys: list[str] = []
    for col in columns.values():
        keys += [k for k in col if k not in keys]
    return {"columns": columns, "keys": keys}


def _cpu_per_request(level: dict[str, Any], ceiling: dict[str, Any]) -> str:
    """CPU ms a request costs the service (its serving process, its decode workers) beside the ceiling's."""
    rps, cpu = level["requests_per_s"], level["cpu"]
    if not rps or "decode_cores" not in cpu:
        return "CPU per request: n/a"
    serving, decode = cpu["serving_cores"] / rps * 1000, cpu["decode_cores"] / rps * 1000
    best = ceiling.get("requests_per_s") or math.nan
    return (f"CPU per request: {serving + decode:.0f} ms (serving process {serving:.0f}, decode workers "
            f"{decode:.0f}) vs the ceiling's {ceiling.get('cpu_cores_busy', math.nan) / best * 1000:.0f} ms")


# -- printing -----------------------------------------------------------------------------------
def _s(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.{digits}f}"


def _ms(v_s: float | None) -> str:
    return "—" if v_s is None or not math.isfinite(v_s) else f"{v_s * 1000:.0f}"


def _spread(summary: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{_s(summary['min'] * scale, digits)}–{_s(summary['max'] * scale, digits)}"


def _phases(t: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in t.items() if isinstance(v, (int, float))) or "—"


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    w = lines.append
    meta = results["meta"]
    m, net, fx = meta["machine"], meta["standin"], meta["fixtures"]
    w(f"Bird classifier benchmark — {meta['date']}{' (quick)' if meta['quick'] else ''}")
    w(f"machine: {m['cpus']} CPUs usable, {m['mem_gib']} GiB, Python {m['python']}, TensorFlow {m['tensorflow']}; "
      f"load average (1 min) at start {m['load_avg_start']}, at end {m.get('load_avg_end', '?')}")
    if m["load_avg_start"] > 0.5 * m["cpus"]:
        w("  WARNING: the machine was busy with other work when the run started; numbers are noisy")
    w(f"stand-in internet: {net['latency_ms']:.0f} ms per request, "
      + (f"{net['bandwidth_mbps']:g} MB/s per connection" if net["bandwidth_mbps"] else "unlimited bandwidth"))
    w(f"model: MobileNetV2-sized TF1 Hub module (tar.gz {fx['model']['tar_gz_bytes'] / 1e6:.1f} MB), float32 .tflite "
      f"{fx['tflite']['bytes'] / 1e6:.1f} MB; photos: "
      + ", ".join(f"{p['width']}x{p['height']} {p['bytes'] / 1e6:.2f} MB" for p in fx["photos"]))
    for warning in fx.get("warnings", []):
        w(f"  WARNING fixtures: {warning}")
    w("service: gunicorn + gunicorn.conf.py as the image starts it, "
      + ", ".join(f"{k}={v}" for k, v in meta["service_env"].items()))
    _render_cli(results.get("cli"), w)
    _render_service(results.get("service"), w)
    ctr = results.get("container")
    if ctr:
        w("")
        if "skipped" in ctr:
            w(f"C. Container: skipped: {ctr['skipped']}")
        else:
            w(f"C. Container {ctr['image']} ({ctr['image_mb']} MB), run as knative/service.yaml runs it, model in "
              f"the image: `podman run` -> first five-photo answer {_s(ctr['first_answer_s']['median'])} s "
              f"({_spread(ctr['first_answer_s'])}), port open {_s(ctr['port_open_s']['median'])} s; "
              f"errors {ctr['errors']}")
    _render_imports(results.get("imports"), w)
    _render_compare(results.get("compare"), w)
    bd = results.get("breakdown")
    if bd and bd["columns"]:
        w("")
        w("F. Where the time goes: the function's own timings_ms, medians (ms)")
        cols = list(bd["columns"])
        w(f"   {'phase':<22}" + "".join(f"{c:>16}" for c in cols))
        for key in bd["keys"]:
            w(f"   {key:<22}" + "".join(f"{_s(bd['columns'][c].get(key, math.nan), 1):>16}" for c in cols))
    if results.get("targets"):
        w("")
        w("Targets (each a ratio of two figures of this run)")
        for t in results["targets"]:
            limit = f" (target {t['target']})" if t["target"] else " (x naive; no target)"
            w(f"   {t['result']:<5} {t['figure']:<52} {_s(t['measured']):>6}{limit}")
            w(f"         {t['detail']}")
    for name, err in results.get("errors", {}).items():
        w(f"ERROR in {name}: {err}")
    return "\n".join(lines)


def _render_cli(cli: dict[str, Any] | None, w) -> None:
    if not cli:
        return
    w("")
    w(f"A. CLI, five photos, fresh processes, wall time from outside; {len(cli['rounds'])} round(s), each with "
      "caches of its own")
    w(f"   {'':<62}{'median s':>9}  {'min–max':>11}  failed  x naive  TensorFlow")
    naive = cli["naive"]["wall_s"]["median"]
    labels = (("naive", "naive original (bench/naive.py: TensorFlow, per photo)"),
              ("first", "first run, empty caches (auto: TF answers, converts detached)"),
              ("second", "second run, started the moment the first exits"),
              ("repeat", "repeat, once the conversion is done (LiteRT)"))
    for key, label in labels:
        sm = cli[key]["wall_s"]
        w(f"   {label:<62}{_s(sm['median']):>9}  {_spread(sm):>11}  {cli[key]['failed_runs']:>6}  "
          f"{_s(ratio(sm['median'], naive)):>7}  {_tf_seen(cli[key]['tensorflow_imported'])}")
    for d in cli["rounds"]:
        w(f"   round {d['round']}: second / first {_s(d['second_vs_first'])}, started "
          f"{d['gap_first_exit_to_second_spawn_ms']:.1f} ms after the first exited; the flatbuffer was in the cache "
          f"{_s(d['flatbuffer_after_first_exit_s'])} s after the first exited (done when the second started: "
          f"{d['conversion_done_when_second_started']}); model downloads by first + second "
          f"{d['model_downloads_first_and_second']}")


def _render_service(svc: dict[str, Any] | None, w) -> None:
    if not svc:
        return
    cold = svc["cold"]
    mem = cold["memory_once_ready"]
    w("")
    w("B. Service, .tflite and label map on local disk (as the image carries them)")
    w(f"   cold start, spawn -> first five-photo answer: {_s(cold['first_answer_s']['median'])} s "
      f"({_spread(cold['first_answer_s'])}; {cold['first_answer_s']['n']} run(s)); port open "
      f"{_s(cold['port_open_s']['median'])} s")
    w(f"   the first request's phases (ms): {_phases(cold['timings_ms'])}")
    w(f"   once ready: RSS {_s(mem['rss_mb']['median'], 0)} MB, PSS {_s(mem['pss_mb']['median'], 0)} MB, "
      f"VmHWM {_s(mem['hwm_mb']['median'], 0)} MB (the tree)")
    tf = svc.get("tensorflow")
    if tf:
        tm = tf["memory_once_ready"]
        w(f"   TensorFlow service (MODEL_RUNTIME=tensorflow, hub module by URL): first answer "
          f"{_s(tf['first_answer_s'])} s; once ready RSS {_s(tm['rss_mb'], 0)} MB, PSS {_s(tm['pss_mb'], 0)} MB, "
          f"VmHWM {_s(tm['hwm_mb'], 0)} MB ({tf['runtime']})")
    warm, fa = svc.get("warm"), svc.get("fetch_alone")
    if warm and fa:
        sm = warm["latency_s"]
        w(f"   warm: p50 {_ms(sm['median'])} ms, p95 {_ms(sm['p95'])} ms ({sm['n']} in a row, errors "
          f"{warm['errors']}); the slowest photo fetched alone {_ms(fa['slowest_median_s'])} ms ({fa['slowest']})")
    tp = svc.get("throughput")
    if tp:
        w(f"   {'clients':>9} {'req/s':>7} {'images/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'errors':>6} "
          f"{'img/core-s':>10}   cores: function / stand-in / clients / others")
        for lv in tp["levels"]:
            cpu = lv["cpu"]
            w(f"   {lv['clients']:>9} {_s(lv['requests_per_s']):>7} {_s(lv['images_per_s'], 1):>8} "
              f"{_ms(lv['latency_s']['median']):>7} {_ms(lv['latency_s']['p95']):>7} {lv['errors']:>6} "
              f"{_s(lv.get('images_per_function_core_s', math.nan), 1):>10}   "
              f"{_s(cpu['function_cores'])} / {_s(cpu['standin_cores'])} / {_s(cpu['bench_cores'])} / "
              f"{_s(cpu['other_cores'])}")
            for example in lv["error_examples"]:
                w(f"             error: {example[:150]}")
        for c in [*tp["ceilings"], *([tp["in_process_ceiling"]] if "in_process_ceiling" in tp else [])]:
            w(f"   decode+inference ceiling {c['when']} ({c['parallel']} threads, calls of {c['batch']}, "
              f"{c.get('decode_workers', 0)} decode workers): "
              f"{_s(c['requests_per_s'])} req/s; per request decode {c['decode_ms_per_request']} ms + inference "
              f"{c['inference_ms_per_request']} ms (thread time), {c['cpu_cores_busy']} cores busy")
    for key in [k for k in svc if k.startswith("memory_load")]:
        m = svc[key]
        w(f"   memory, {m['clients']} concurrent requests of {m['photos_per_request']} x {m['photo']}: peak RSS "
          f"{m['peak']['rss_mb']:.0f} MB, PSS {m['peak']['pss_mb']:.0f} MB; after {m['after']['rss_mb']:.0f} MB RSS; "
          f"p50 {_ms(m['latency_s']['median'])} ms; errors {m['errors']}")


def _render_imports(doc: dict[str, Any] | None, w) -> None:
    if not doc:
        return
    w("")
    w(f"D. Import chain of the service's cold start (python -X importtime, arbiter and worker): "
      f"{doc['total_ms']:.0f} ms in {doc['modules']} modules")
    w("   heaviest chain: " + " > ".join(f"{c['module']} {c['cumulative_ms']:.0f}" for c in doc["chain"]))
    w("   top-level imports (cumulative ms): " + ", ".join(f"{t['module']} {t['cumulative_ms']:.0f}"
                                                          for t in doc["top"]))


def _render_compare(doc: dict[str, Any] | None, w) -> None:
    if not doc:
        return
    w("")
    w(f"E. Compare (the service as the image runs it, per setting; {doc['rounds']} round(s), medians; x = vs the "
      "first)")
    w(f"   {'setting':<30}{'warm p50 ms':>12}{'8 clients req/s':>17}{'RSS ready':>11}{'PSS ready':>11}"
      f"{'peak RSS':>10}{'peak PSS':>10}{'errors':>8}")
    for row in doc["rows"]:
        x = row["vs_first"]
        w(f"   {row['label']:<30}{_ms(row['warm_p50_s']):>7} x{_s(x['warm_p50_s'])}"
          f"{_s(row['rps']):>10} x{_s(x['rps'])}{_s(row['ready_rss_mb'], 0):>11}{_s(row['ready_pss_mb'], 0):>11}"
          f"{_s(row['peak_rss_mb'], 0):>10}{_s(row['peak_pss_mb'], 0):>10}{row['errors']:>8}"
          f"   (8-client samples {row['rps_samples']}; cores {_s(row['function_cores'])}, others "
          f"{_s(row['other_cores'])})")
