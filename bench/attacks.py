"""The load test's hostile phase: the attacks mixed with normal clients, for a bounded time.

Run by ``bench/loadtest.py`` after its normal load (``--no-hostile`` skips it, ``--hostile-only``
runs only it). A second service process is started the way the image starts it (gunicorn with
``gunicorn.conf.py`` and functions-framework's app) with **the image's settings**: the Dockerfile's
last-stage ``ENV`` (WORKERS, THREADS, MALLOC_*...) and every other setting at its default
(``PHOTO_DEADLINE_S`` 30, ``REQUEST_DEADLINE_S`` 60, ``MAX_URLS`` 64, ``HEADER_TIMEOUT_S`` 10,
``BODY_TIMEOUT_S`` 60...), plus ``TRUSTED_HOSTS=127.0.0.1`` and a stand-in storage emulator.

Timeline: normal clients only for ``--warmup`` s (the pre-attack RSS is the median of its last
samples); the attacks and the normal clients for ``--attack`` s; then the attackers go away (their
photo hosts stop too) and the normal clients go on for ``--settle`` s (the RSS "after" is the median
of the last 2 s). Normal clients: 4 threads sending one-photo and five-photo requests of good photos,
every latency recorded. Probed throughout: the service's RSS (VmRSS summed over its process tree: the
gunicorn arbiter, its worker and the decode workers, every 0.1 s, kept every 0.5 s; it must stay under
MEMORY_MARGIN of the pod's limit), TCP connect (liveness is a TCP probe) and ``GET /healthz``.

The attacks (each a bounded loop on its own thread(s), all on 127.0.0.1):

* ``slow-headers`` x4: request headers at 1 byte/s, reconnecting when cut;
* ``slow-body`` x4: a JSON body at 1 byte/s after complete headers;
* ``big-body-healthz``, ``big-body-unknown``: 64 MiB declared and streamed to ``/healthz`` and to a
  path that does not exist;
* ``query-bomb``: a 64 MiB query string;
* ``stalled-64``: requests naming 64 stalled photo URLs (status line then a header byte every 2 s;
  accepted and never answered; a gzip header that never ends), and ``stalled-1``: one at a time;
* ``bombs``: 4 decompression bombs in one request (an ICO holding a 30000x30000 PNG; an 8000x7999
  RGBA PNG of 250 kB), alternately;
* ``progressive-8`` x2: 8 progressive 7999x7999 JPEGs in one request (384 MB of coefficients
  each, 376 KB); ``scans-4``: JPEGs repeating a refinement scan 250 times (~9 s of CPU each) and
  with 20003 scans; ``frames-4``: GIF and WebP animations of 5000 frames on a 4000x4000 canvas;
* ``dedup-flood``: 300 structured CloudEvents with 900 KB ids (each refused with 400; the load test runs
  with ``EVENT_AUTH=none`` so that the parsers are reached: with proofs required, 401 comes first);
* ``storage-events``: ``"size": 1e400`` and object or bucket names with ``..`` (CloudEvents and S3
  Records), which must be refused with 400 and never fetched;
* ``idle-connections``: 300 connections that never send a byte, each reopened when the server
  closes it (at ``HEADER_TIMEOUT_S``). They hold no request thread (the worker reads heads in its
  event loop), so they take no slot; 300 is below ``MAX_CONNECTIONS``, so none may be refused.

**Slots.** A pod serves ``containerConcurrency`` = THREADS requests at once: Knative's queue-proxy
admits no more, and it reads request headers itself (a slow-header client never reaches the pod).
When attackers hold every slot of a pod, Knative sends normal requests to another pod, or holds them
at the activator while it scales out; one process cannot show that. So the attacks that hold a
request thread hold ``--attack-slots`` connections at once, THREADS - 1 by default, dealt in turn to
three groups so each kind keeps attacking the whole time: slow headers, slow bodies, and photo
requests (stalled hosts, bombs). What is tested is that they cannot take the slot they do not have,
and that a normal request in its own slot keeps its latency bound. ``--attack-slots 0`` lifts the
limit (every attacker at once, more than the pod's slots), to measure that case too.

The harness plays the pod's OOM killer: when the service's RSS passes the pod's memory limit
(``knative/service.yaml``) it kills the process group it started (``--no-oom-kill``: it lets it run,
up to a safety ceiling of three times the limit, to measure the real peak).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import selectors
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from harness import HOST, ROOT, FunctionProcess
from standin import attackers, costly
from standin.server import StandInServer

MIB = 1024 * 1024
FINALIZED = "google.cloud.storage.object.v1.finalized"
# What a normal request may take, start to answer, during and after the attacks. With fair sharing of
# the fetch pool a hostile request holds at most its share of it, and bombs wait for the decode
# budget, so a good photo is fetched and decoded in milliseconds; the bound leaves room for a
# decode-budget wait behind a bomb and for this shared two-core machine.
NORMAL_BOUND_S = {1: 10.0, 5: 15.0}
RSS_BACK_WITHIN = 0.20  # RSS --settle s after the attack within 20 % of its pre-attack level
NORMAL_CLIENTS = 4
SAFETY_CEILING = 3.0  # x the pod's limit: killed even with --no-oom-kill (a shared machine)
# The attacks must leave the pod this far under its memory limit: the limit is the sum of the
# function's own bounds (tests/test_knative.py), so a peak near it means a bound is not holding.
MEMORY_MARGIN = 0.75


def _quantity_mib(value: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / MIB, "M": 1e6 / MIB, "G": 1e9 / MIB}
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value) / MIB


def pod_limits(manifest: Path = ROOT / "knative" / "service.yaml") -> dict[str, float]:
    """The Service's memory limit (MiB) and its liveness probe's timeout (s)."""
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "Service":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            probe = container.get("livenessProbe", {})
            return {"memory_limit_mib": _quantity_mib(str(container["resources"]["limits"]["memory"])),
                    "liveness_timeout_s": float(probe.get("timeoutSeconds", 1)),
                    "liveness_tcp": "tcpSocket" in probe}
    raise SystemExit(f"no Service in {manifest}")


# -- what the stand-in serves for the attacks ----------------------------------------------------


def serve_attacks(server: StandInServer, over: threading.Event) -> dict[str, list[str]]:
    """Register the hostile photo hosts; returns URL bases by kind (a query string is added per use)."""
    window = 90.0  # a handler's own bound; ``over`` ends them all when the attack ends
    return {
        "stalled": [server.add("/attack/header-drip.jpg", attackers.header_drip(over, window, 2.0)),
                    server.add("/attack/never-answers.jpg", attackers.never_answers(over, window)),
                    server.add("/attack/endless-gzip-header.jpg", attackers.endless_gzip_header(over, window))],
        "ico": [server.add("/attack/bomb.ico", attackers.ico_bomb(), "image/x-icon")],
        "rgba": [server.add("/attack/big-rgba.png", attackers.big_rgba_png(), "image/png")],
        # decoding costs (standin/costly.py): 384 MB of coefficients in 376 KB; ~9 s of CPU in 405 KB;
        # 20003 scans; 5000 frames on a 4000x4000 canvas
        "progressive": [server.add("/attack/progressive-8k.jpg", costly.jpeg(7999, 7999))],
        "scans": [server.add("/attack/refinement-scans.jpg", costly.jpeg(7999, 7999, repeats=250, refine=True)),
                  server.add("/attack/20000-scans.jpg", costly.jpeg(2000, 2000, repeats=20_000))],
        "frames": [server.add("/attack/frames.gif", costly.gif(4000, 4000, 5000), "image/gif"),
                   server.add("/attack/frames.webp", costly.webp(4000, 4000, 5000), "image/webp")],
    }


# -- records --------------------------------------------------------------------------------------


@dataclass
class AttackLog:
    outcomes: dict[str, Counter] = field(default_factory=dict)  # attack -> outcome -> count
    held_s: dict[str, list[float]] = field(default_factory=dict)  # attack -> seconds per attempt
    photo_codes: dict[str, Counter] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, attack: str, outcome: str, seconds: float, codes: Counter | None = None) -> None:
        with self.lock:
            self.outcomes.setdefault(attack, Counter())[outcome] += 1
            self.held_s.setdefault(attack, []).append(seconds)
            if codes:
                self.photo_codes.setdefault(attack, Counter()).update(codes)


@dataclass
class Ctx:
    port: int
    base: str
    until: float  # monotonic end of the attack window
    over: threading.Event  # set when the window ends: attackers and their photo hosts stop
    log: AttackLog
    urls: dict[str, list[str]]
    rng: random.Random

    slots: dict[str, threading.Semaphore] | None = None  # per group of attacks that hold a request thread

    def on(self) -> bool:
        return not self.over.is_set() and time.monotonic() < self.until

    @contextlib.contextmanager
    def slot(self, group: str):
        """Hold one of the pod's slots for a thread-holding attack (waits while the window is open)."""
        sem = None if self.slots is None else self.slots.get(group)
        if self.slots is None:
            yield True
            return
        while self.on() and sem is not None:
            if sem.acquire(timeout=0.2):
                try:
                    yield True
                finally:
                    sem.release()
                return
        yield False

    def left(self) -> float:
        return max(0.5, self.until - time.monotonic())


def _status(data: bytes) -> str:
    parts = data.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) > 1 and data.startswith(b"HTTP/") else "garbled"


def _drip(ctx: Ctx, attack: str, head: bytes, drip: bytes) -> None:
    """Send ``head`` at once, then ``drip`` one byte a second; record how it ended and how long it held."""
    while ctx.on():
        with ctx.slot(attack) as held:
            if held:
                _drip_once(ctx, attack, head, drip)


def _drip_once(ctx: Ctx, attack: str, head: bytes, drip: bytes) -> None:
    start = time.monotonic()
    outcome = "connect failed"
    try:
        with socket.create_connection((HOST, ctx.port), timeout=5) as s:
            outcome = "still open at the end"
            if head:
                s.sendall(head)
            s.settimeout(1.0)
            for i in range(len(drip)):
                if not ctx.on():
                    break
                try:
                    s.sendall(drip[i:i + 1])
                    got = s.recv(4096)  # up to 1 s: the pace
                except TimeoutError:
                    continue
                except OSError:
                    outcome = "cut"
                    break
                outcome = f"answered {_status(got)}" if got else "cut"
                break
            else:
                outcome = "all sent"
    except OSError:
        pass
    ctx.log.add(attack, outcome, time.monotonic() - start)


def slow_headers(ctx: Ctx) -> None:
    _drip(ctx, "slow-headers", b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 500 + b"\r\n\r\n")


def slow_body(ctx: Ctx) -> None:
    body = b'{"urls": ["http://127.0.0.1/x.jpg"], "top_k": 1}' + b" " * 500
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    _drip(ctx, "slow-body", head, body)


def _stream(ctx: Ctx, attack: str, head: bytes, size: int, pause_s: float) -> None:
    """``head`` then ``size`` bytes in 1 MiB pieces (stopping when the server stops reading); the answer."""
    piece = b"x" * MIB
    while ctx.on():
        start = time.monotonic()
        outcome = "connect failed"
        try:
            with socket.create_connection((HOST, ctx.port), timeout=15) as s:
                try:
                    s.sendall(head)
                    for _ in range(size // MIB):
                        s.sendall(piece)
                except OSError:
                    pass  # the server answered and stopped reading: its answer is still to be read
                try:
                    got = s.recv(200)
                    outcome = f"answered {_status(got)}" if got else "closed without an answer"
                except TimeoutError:
                    outcome = "no answer in 15 s"
                except OSError:
                    outcome = "closed without an answer"
        except OSError:
            pass
        ctx.log.add(attack, outcome, time.monotonic() - start)
        ctx.over.wait(pause_s)


def big_body(path: str) -> Callable[[Ctx], None]:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {64 * MIB}\r\n\r\n").encode()
    name = "big-body-healthz" if path == "/healthz" else "big-body-unknown"
    return lambda ctx: _stream(ctx, name, head, 64 * MIB, 0.5)


def query_bomb(ctx: Ctx) -> None:
    _stream(ctx, "query-bomb", b"GET /?url=", 64 * MIB, 1.0)


def stalled(n: int) -> Callable[[Ctx], None]:
    """Requests naming ``n`` stalled photo URLs (the three kinds in turn), one after another."""

    def run(ctx: Ctx) -> None:
        hosts = ctx.urls["stalled"]
        while ctx.on():
            with ctx.slot("photos") as held:
                if held:
                    _photos_once(ctx, f"stalled-{n}", [hosts[i % len(hosts)] for i in range(n)])
            ctx.over.wait(0.5)

    return run


def bombs(ctx: Ctx) -> None:
    """Four bombs in one request: four ICOs, then four big RGBA PNGs, and so on."""
    i = 0
    while ctx.on():
        with ctx.slot("photos") as held:
            if held:
                _photos_once(ctx, "bombs", [ctx.urls[("ico", "rgba")[i % 2]][0]] * 4)
        i += 1
        ctx.over.wait(1.0)


def costly_photos(kind: str, n: int) -> Callable[[Ctx], None]:
    """Requests of ``n`` photos costly to decode (progressive 8k JPEGs, many-scan JPEGs, thousand-frame
    animations), one after another, in the photo requests' slots."""

    def run(ctx: Ctx) -> None:
        hosts = ctx.urls[kind]
        while ctx.on():
            with ctx.slot("photos") as held:
                if held:
                    _photos_once(ctx, f"{kind}-{n}", [hosts[i % len(hosts)] for i in range(n)])
            ctx.over.wait(0.5)

    return run


def _photos_once(ctx: Ctx, attack: str, urls: list[str]) -> None:
    """POST the URLs (each with a fresh query string); the client gives up when the window ends."""
    sent = [f"{u}?k={uuid.uuid4().hex}" for u in urls]
    start = time.monotonic()
    try:
        r = requests.post(ctx.base + "/", json={"urls": sent, "top_k": 1}, timeout=(5, ctx.left() + 2))
    except requests.RequestException as exc:
        gave_up = isinstance(exc, requests.Timeout) and not ctx.on()
        ctx.log.add(attack, "gave up at the end" if gave_up else f"client error {type(exc).__name__}",
                    time.monotonic() - start)
        return
    codes: Counter = Counter()
    if r.status_code == 200:
        for result in r.json().get("results", []):
            codes[result["error"]["code"] if result.get("error") else "classified"] += 1
    ctx.log.add(attack, f"answered {r.status_code}", time.monotonic() - start, codes)


def _post(ctx: Ctx, session: requests.Session, attack: str, **kw) -> None:
    start = time.monotonic()
    try:
        r = session.post(ctx.base + "/", timeout=30, **kw)
    except requests.RequestException as exc:
        ctx.log.add(attack, f"client error {type(exc).__name__}", time.monotonic() - start)
        return
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = ""
    ctx.log.add(attack, f"answered {r.status_code} {code}".strip(), time.monotonic() - start)


def dedup_flood(ctx: Ctx, count: int = 300, id_bytes: int = 900_000) -> None:
    pause = max(0.0, (ctx.until - time.monotonic()) * 0.8 / count)
    with requests.Session() as session:
        for i in range(count):
            if not ctx.on():
                break
            event = {"specversion": "1.0", "id": f"{i}-{uuid.uuid4().hex}-" + "i" * id_bytes, "source": "loadtest",
                     "type": FINALIZED, "data": {"name": "x.jpg"}}
            _post(ctx, session, "dedup-flood", data=json.dumps(event).encode(),
                  headers={"Content-Type": "application/cloudevents+json"})
            ctx.over.wait(pause)


DOT_NAMES = [("birds", "../../other-bucket/secret.jpg"), ("birds", "a/../../b.jpg"), ("..", "x.jpg"),
             ("birds/../other", "x.jpg"), ("birds", "./x.jpg")]


def storage_events(ctx: Ctx) -> None:
    with requests.Session() as session:
        i = 0
        while ctx.on():
            i += 1
            headers = {"ce-specversion": "1.0", "ce-id": f"le-{uuid.uuid4().hex}", "ce-source": "loadtest",
                       "ce-type": FINALIZED, "Content-Type": "application/json"}
            _post(ctx, session, "size-1e400", headers=headers,
                  data=b'{"bucket": "birds", "name": "x.jpg", "contentType": "image/jpeg", "size": 1e400}')
            bucket, name = DOT_NAMES[i % len(DOT_NAMES)]
            headers = {**headers, "ce-id": f"le-{uuid.uuid4().hex}"}
            _post(ctx, session, "dot-names", headers=headers,
                  data=json.dumps({"bucket": bucket, "name": name, "contentType": "image/jpeg"}).encode())
            record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": name}}}
            _post(ctx, session, "dot-names", json={"Records": [record]})
            ctx.over.wait(0.5)


def idle_connections(ctx: Ctx, n: int = 300) -> None:
    """``n`` connections open at once that send nothing; one reopened as soon as the server closes it."""
    poller = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}  # socket -> when it was opened
    while ctx.on():
        while len(opened) < n and ctx.on():
            try:
                s = socket.create_connection((HOST, ctx.port), timeout=5)
            except OSError:
                ctx.log.add("idle-connections", "connect failed", 0.0)
                ctx.over.wait(0.5)  # a dead service: do not spin
                continue
            s.setblocking(False)
            poller.register(s, selectors.EVENT_READ, s)
            opened[s] = time.monotonic()
        for key, _ in poller.select(timeout=0.5):  # readable: an answer, or closed by the server
            s = key.data
            poller.unregister(s)
            try:
                got = s.recv(200)
            except OSError:
                got = b""
            outcome = f"answered {_status(got)}" if got else "cut"
            ctx.log.add("idle-connections", outcome, time.monotonic() - opened.pop(s))
            s.close()
    for s, start in opened.items():
        ctx.log.add("idle-connections", "still open at the end", time.monotonic() - start)
        s.close()
    poller.close()


ATTACKS: list[tuple[str, int, Callable[[Ctx], None]]] = [  # (name, threads, loop)
    ("slow-headers", 4, slow_headers),
    ("slow-body", 4, slow_body),
    ("big-body-healthz", 1, big_body("/healthz")),
    ("big-body-unknown", 1, big_body("/no-such-path")),
    ("query-bomb", 1, query_bomb),
    ("stalled-64", 1, stalled(64)),
    ("stalled-1", 1, stalled(1)),
    ("bombs", 1, bombs),
    ("progressive-8", 2, costly_photos("progressive", 8)),
    ("scans-4", 1, costly_photos("scans", 4)),
    ("frames-4", 1, costly_photos("frames", 4)),
    ("dedup-flood", 1, dedup_flood),
    ("storage-events", 1, storage_events),
    ("idle-connections", 1, idle_connections),
]


# -- normal clients and probes ------------------------------------------------------------------------


@dataclass
class NormalLog:
    rows: list[dict] = field(default_factory=list)  # {"t", "photos", "s", "status", "ok"}
    lock: threading.Lock = field(default_factory=threading.Lock)


def normal_client(base: str, good: list, stop: threading.Event, log: NormalLog, seed: int) -> None:
    rng = random.Random(seed)
    with requests.Session() as session:
        while not stop.is_set():
            n = rng.choice((1, 5))
            chosen = rng.sample(good, n)
            start = time.monotonic()
            row = {"t": start, "photos": n, "status": "client error", "ok": False}
            try:
                r = session.post(base + "/", json={"urls": [p.url for p in chosen], "top_k": 1}, timeout=120)
                row["status"] = r.status_code
                if r.status_code == 200:
                    got = [x["predictions"][0]["id"] if not x["error"] else x["error"]["code"]
                           for x in r.json()["results"]]
                    row["ok"] = got == [p.expect for p in chosen]
                    if not row["ok"]:
                        row["got"] = got[:5]
            except requests.RequestException as exc:
                row["error"] = type(exc).__name__
            row["s"] = time.monotonic() - start
            with log.lock:
                log.rows.append(row)
            stop.wait(0.2 if "error" not in row else 1.0)  # a dead service: do not spin


class Probes(threading.Thread):
    """RSS every 0.1 s (kept every 0.5 s; the OOM-kill emulation), TCP connect every 0.5 s, /healthz every 1 s."""

    def __init__(self, service: FunctionProcess, rss: Callable[[], float], limit_mib: float, oom_kill: bool):
        super().__init__(daemon=True)
        self.service, self.rss, self.limit, self.oom_kill = service, rss, limit_mib, oom_kill
        self.halt = threading.Event()
        self.rss_series: list[tuple[float, float]] = []
        self.tcp: list[tuple[float, float | None]] = []
        self.http: list[tuple[float, float | None, int | str]] = []
        self.peak = 0.0
        self.killed_at: tuple[float, float] | None = None
        self._others = [threading.Thread(target=self._tcp, daemon=True),
                        threading.Thread(target=self._http, daemon=True)]

    def run(self) -> None:
        for t in self._others:
            t.start()
        kept = 0.0
        while not self.halt.wait(0.1):
            now, mib = time.monotonic(), self.rss()
            if self.service.proc is None or self.service.proc.poll() is not None:
                continue
            self.peak = max(self.peak, mib)
            if now - kept >= 0.5:
                self.rss_series.append((now, mib))
                kept = now
            ceiling = self.limit if self.oom_kill else self.limit * SAFETY_CEILING
            if mib > ceiling and self.killed_at is None:
                self.killed_at = (now, mib)
                self.service.kill()

    def _tcp(self) -> None:
        while not self.halt.wait(0.5):
            start = time.monotonic()
            try:
                socket.create_connection((HOST, self.service.port), timeout=10).close()
                self.tcp.append((start, time.monotonic() - start))
            except OSError:
                self.tcp.append((start, None))

    def _http(self) -> None:
        while not self.halt.wait(1.0):
            start = time.monotonic()
            try:
                status: int | str = requests.get(self.service.url + "/healthz", timeout=10).status_code
                self.http.append((start, time.monotonic() - start, status))
            except requests.RequestException as exc:
                self.http.append((start, None, type(exc).__name__))

    def stop(self) -> None:
        self.halt.set()
        for t in [self, *self._others]:
            t.join(15)


# -- the phase ---------------------------------------------------------------------------------------


def unrouted_hits(server: StandInServer) -> int:
    """Requests to paths the stand-in does not serve: a storage read (the stand-in plays the storage
    emulator, which has no objects) would be one."""
    with server._lock:
        return sum(n for path, n in server.hits.items() if path not in server.routes)


def run_phase(service: FunctionProcess, server: StandInServer, good: list, rss: Callable[[], float], *,
              warmup_s: float, attack_s: float, settle_s: float, skip: set[str], oom_kill: bool,
              seed: int, limits: dict, settings, attack_slots: int | None = None) -> dict:
    """Run the hostile phase against a ready ``service``; returns its report (``passed`` included)."""
    over = threading.Event()
    urls = serve_attacks(server, over)
    hits_before = unrouted_hits(server)
    probes = Probes(service, rss, limits["memory_limit_mib"], oom_kill)
    normal, stop_normal = NormalLog(), threading.Event()
    clients = [threading.Thread(target=normal_client, args=(service.url, good, stop_normal, normal, seed * 100 + i),
                                daemon=True) for i in range(NORMAL_CLIENTS)]
    probes.start()
    for t in clients:
        t.start()
    t_warm = time.monotonic()
    print(f"hostile phase: normal clients for {warmup_s:g} s...", flush=True)
    time.sleep(warmup_s)
    t_attack = time.monotonic()
    pre_window = [m for t, m in probes.rss_series if t >= t_attack - max(2.0, min(5.0, warmup_s / 2))]
    pre = statistics.median(pre_window) if pre_window else rss()
    log = AttackLog()
    ctx = Ctx(service.port, service.url, t_attack + attack_s, over, log, urls, random.Random(seed))
    threads_n = int(settings.get("THREADS", "4"))
    slots = (threads_n - 1) if attack_slots is None else attack_slots
    groups = ("slow-headers", "slow-body", "photos")
    shares = {g: len(range(i, slots, len(groups))) for i, g in enumerate(groups)} if slots > 0 else {}
    ctx.slots = {g: threading.Semaphore(n) for g, n in shares.items()} if slots > 0 else None
    print(f"attacks holding a request thread: {shares or 'unlimited'} of THREADS={threads_n} slots", flush=True)
    chosen = [(n, k, f) for n, k, f in ATTACKS if n not in skip]
    threads = [threading.Thread(target=f, args=(ctx,), daemon=True, name=n) for n, k, f in chosen for _ in range(k)]
    print(f"pre-attack RSS {pre:.0f} MiB; attacks for {attack_s:g} s: {', '.join(n for n, _, _ in chosen)}...",
          flush=True)
    for t in threads:
        t.start()
    over.wait(attack_s)
    over.set()  # the attackers go away, their photo hosts stop
    for t in threads:
        t.join(30)
    stragglers = [t.name for t in threads if t.is_alive()]
    t_end = time.monotonic()
    print(f"attack over ({t_end - t_attack:.0f} s); normal clients for {settle_s:g} s more...", flush=True)
    time.sleep(settle_s)
    alive = service.proc is not None and service.proc.poll() is None
    after_window = [m for t, m in probes.rss_series if t >= time.monotonic() - 2.0]
    after = (statistics.median(after_window) if after_window else rss()) if alive else None
    stop_normal.set()
    for t in clients:
        t.join(130)
    probes.stop()
    alive = alive and service.proc is not None and service.proc.poll() is None
    hits_after = unrouted_hits(server)

    def phase(t: float) -> str:
        return "before" if t < t_attack else "during" if t < t_end else "after"

    rows = normal.rows
    by = {(p, n): [r for r in rows if phase(r["t"]) == p and r["photos"] == n]
          for p in ("before", "during", "after") for n in (1, 5)}
    normal_5xx = sum(1 for r in rows if isinstance(r["status"], int) and r["status"] >= 500)
    attack_5xx = {a: sum(v for o, v in c.items() if re.match(r"answered 5", o)) for a, c in log.outcomes.items()}
    slow = {n: max((r["s"] for r in rows if r["photos"] == n), default=0.0) for n in (1, 5)}
    during_tcp = [s for t, s in probes.tcp if t_attack <= t < t_end]
    during_http = [(s, st) for t, s, st in probes.http if t_attack <= t < t_end]
    peak = probes.peak
    killed = probes.killed_at
    report = {
        "settings": settings,
        "limits": limits,
        "timeline_s": {"warmup": warmup_s, "attack": round(t_end - t_attack, 1), "settle": settle_s},
        "attacks": [n for n, _, _ in chosen], "skipped": sorted(skip), "stragglers": stragglers,
        "normal": {f"{p} {n}-photo": _lat(rs) for (p, n), rs in by.items()},
        "normal_wrong": [r for r in rows if r["status"] == 200 and not r["ok"]][:10],
        "normal_failed": [r for r in rows if r["status"] != 200][:10],
        "attack_outcomes": {a: dict(c) for a, c in log.outcomes.items()},
        "attack_held_s": {a: {"max": round(max(v), 1), "median": round(statistics.median(v), 1), "n": len(v)}
                          for a, v in log.held_s.items()},
        "attack_photo_codes": {a: dict(c) for a, c in log.photo_codes.items()},
        "rss_mib": {"pre_attack": round(pre, 1), "peak": round(peak, 1),
                    "after": round(after, 1) if after is not None else None,
                    "after_vs_pre": round(after / pre - 1, 3) if after is not None and pre else None,
                    "killed_at": round(killed[1], 1) if killed else None,
                    "killed_after_attack_start_s": round(killed[0] - t_attack, 1) if killed else None},
        "rss_series_mib": [(round(t - t_warm, 1), round(m, 1)) for t, m in probes.rss_series],
        "tcp_connect_during_s": {"n": len(during_tcp), "failed": sum(1 for s in during_tcp if s is None),
                                 "max": round(max((s for s in during_tcp if s is not None), default=0.0), 3)},
        "healthz_during": {"n": len(during_http),
                           "ok": sum(1 for s, st in during_http if st == 200),
                           "max_s": round(max((s for s, _ in during_http if s is not None), default=0.0), 2),
                           "failed": dict(Counter(str(st) for s, st in during_http if st != 200))},
        "storage_fetches_for_refused_names": hits_after - hits_before,
    }
    limit = limits["memory_limit_mib"]
    checks = {
        "no 5xx to normal clients": normal_5xx == 0,
        "no 5xx to attackers (none is documented)": not any(attack_5xx.values()),
        "no normal client errors (connection, timeout)": not any(r["status"] == "client error" for r in rows),
        "every normal photo classified with its class": not report["normal_wrong"] and bool(rows),
        f"normal one-photo requests <= {NORMAL_BOUND_S[1]:g} s": slow[1] <= NORMAL_BOUND_S[1],
        f"normal five-photo requests <= {NORMAL_BOUND_S[5]:g} s": slow[5] <= NORMAL_BOUND_S[5],
        f"peak RSS <= {MEMORY_MARGIN:.0%} of the pod's limit ({limit:g} MiB)": peak <= MEMORY_MARGIN * limit
                                                                               and not killed,
        f"RSS {settle_s:g} s after the attack within {RSS_BACK_WITHIN:.0%} of pre-attack":
            after is not None and abs(after / pre - 1) <= RSS_BACK_WITHIN,
        f"TCP connect during the attack < liveness timeout ({limits['liveness_timeout_s']:g} s)":
            bool(during_tcp) and all(s is not None and s < limits["liveness_timeout_s"] for s in during_tcp),
        "names with '..' and size 1e400 refused without a fetch": hits_after == hits_before,
        "service alive throughout (not OOM-killed, not exited)": alive,
    }
    report["normal_max_s"] = {f"{n}-photo": round(v, 2) for n, v in slow.items()}
    report["five_xx"] = {"normal": normal_5xx, **{k: v for k, v in attack_5xx.items() if v}}
    report["checks"] = checks
    report["passed"] = all(checks.values())
    return report


def _lat(rows: list[dict]) -> dict:
    s = sorted(r["s"] for r in rows)
    if not s:
        return {"n": 0}
    return {"n": len(s), "p50": round(s[len(s) // 2], 2), "p95": round(s[min(len(s) - 1, int(0.95 * len(s)))], 2),
            "max": round(s[-1], 2), "non_200": sum(1 for r in rows if r["status"] != 200)}


def print_report(h: dict) -> None:
    print("\n== hostile phase ==")
    st = h["settings"]
    print("service: gunicorn + gunicorn.conf.py, " + ", ".join(f"{k}={v}" for k, v in st.items()))
    lim = h["limits"]
    print(f"pod: memory limit {lim['memory_limit_mib']:g} MiB, liveness TCP={lim['liveness_tcp']} "
          f"timeout {lim['liveness_timeout_s']:g} s; timeline {h['timeline_s']}")
    print(f"\n{'attack':<18} {'attempts':>8} {'held s (med/max)':>17}  outcomes; photo codes")
    for a in h["attacks"]:
        key = "dot-names" if a == "storage-events" else a
        names = ["size-1e400", "dot-names"] if a == "storage-events" else [key]
        for n in names:
            out = h["attack_outcomes"].get(n, {})
            held = h["attack_held_s"].get(n, {})
            codes = h["attack_photo_codes"].get(n)
            text = ", ".join(f"{o} x{c}" for o, c in sorted(out.items())) or "(none)"
            if codes:
                text += "; " + ", ".join(f"{o} x{c}" for o, c in sorted(codes.items()))
            print(f"{n:<18} {sum(out.values()):>8} {held.get('median', '-')!s:>8}/{held.get('max', '-')!s:<8}  {text}")
    print("\nnormal requests (s):")
    for k, v in h["normal"].items():
        print(f"  {k:<16} " + ", ".join(f"{a} {b}" for a, b in v.items()))
    rss = h["rss_mib"]
    change = f" ({rss['after_vs_pre']:+.1%})" if rss["after_vs_pre"] is not None else " (service gone)"
    killed = (f"; KILLED at {rss['killed_at']} MiB, {rss['killed_after_attack_start_s']} s into the attack"
              if rss["killed_at"] else "")
    print(f"RSS MiB: pre-attack {rss['pre_attack']}, peak {rss['peak']}, after {rss['after']}{change}{killed}")
    tcp, hz = h["tcp_connect_during_s"], h["healthz_during"]
    print(f"during the attack: TCP connect {tcp['n']} probes, max {tcp['max']} s, failed {tcp['failed']}; "
          f"GET /healthz {hz['ok']}/{hz['n']} 200, max {hz['max_s']} s, failed {hz['failed']}")
    for r in h["normal_failed"][:5] + h["normal_wrong"][:5]:
        print(f"  normal request: {r}")
    print("\nhostile checks:")
    for name, ok in h["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
