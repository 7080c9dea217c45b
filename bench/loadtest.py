"""``make loadtest``: 16 clients, good photos and hostile inputs, then the hostile phase.

    python -m bench.loadtest                       # the whole run (about four minutes)
    python -m bench.loadtest --duration 10 --warmup 5 --attack 10 --settle 10   # a smoke run
    python -m bench.loadtest --hostile-only        # only the hostile phase (bench/attacks.py)
    python -m bench.loadtest --no-hostile          # only the normal load

The stand-in server (this process, 127.0.0.1) serves the colour model, the label map, good photos
whose class is known, and the hostile inputs of ``standin/hostile.py``. The function runs as the
image runs it: ``gunicorn --config gunicorn.conf.py 'functions_framework:create_app(target=
"classify_http")'`` (header and body deadlines, request-line limit), as a subprocess bound to
127.0.0.1 (WORKERS=1, THREADS=8, MALLOC_ARENA_MAX=2) with TRUSTED_HOSTS=127.0.0.1, so loopback
photos are allowed; the blocked inputs are addresses the guard refuses before connecting (redirects
to 169.254.169.254 and 10.0.0.1, 169.254.169.254 as an integer, 10.0.0.1 as hex, 127.0.0.2 and
[::1], which are not the trusted 127.0.0.1): nothing leaves the machine.

The normal load passes when: no 5xx and no client-side failure; every good photo classified with
its class; every hostile input answered with its expected error; the service's RSS at the end of
the load is less than 10 % above its RSS after the warm-up; once idle, its threads and its sockets
(listening, from clients, other) are back at what they were when idle after the warm-up, and its
pooled keep-alive connections to the photo host (which the stand-in never closes) stay within the
pool's size; a ``requests.Session`` can go on after a 413.

Then, by default, the hostile phase (``bench/attacks.py``: a second process with the image's own
settings; its checks are there). Prints the tables, writes bench/results/loadtest.json (``normal``
and ``hostile``), exits 1 when either phase fails. ``--env NAME=VALUE`` overrides the function's
environment in both phases (``--env MALLOC_ARENA_MAX=16``: glibc's default on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import attacks  # noqa: E402
from harness import APP, FunctionProcess, Sampler, image_env, status_kb, tail, tree  # noqa: E402
from standin import hostile, hubmodel, photos  # noqa: E402
from standin.server import Reply, StandInServer  # noqa: E402

MODEL_PATH = "/models/birds/1"
LABELS_PATH = "/labels.csv"
OUT = ROOT / "bench" / "results" / "loadtest.json"
# MALLOC_ARENA_MAX=2 as in the Dockerfile (without it RSS kept growing: +12 % in 150 s; docs/reliability.md).
FUNCTION_ENV = {"WORKERS": "1", "THREADS": "8", "MALLOC_ARENA_MAX": "2", "TRUSTED_HOSTS": "127.0.0.1",
                "LOG_LEVEL": "WARNING", "READ_TIMEOUT_S": "1", "CONNECT_TIMEOUT_S": "1", "PHOTO_DEADLINE_S": "3",
                "MAX_PHOTO_BYTES": "2000000", "FETCH_RETRIES": "2", "MAX_URLS": "8"}
RSS_GROWTH_LIMIT = 0.10
POOL = 16  # FETCH_WORKERS: the photo session keeps at most this many connections per host
SETTLE_S = 30.0  # how long the idle service may take to close kept-alive sockets


# -- what the stand-in serves -------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """A photo URL and what the service must answer for it: a class id or an error code."""

    name: str
    url: str
    expect: int | str
    per_request: bool = False  # add a fresh query string per request (retry handlers count per key)
    slow: bool = False  # holds a fetch worker for seconds: picked less often

    def for_request(self) -> str:
        if not self.per_request:
            return self.url
        return f"{self.url}?k={uuid.uuid4().hex}"


def build_model(tmp: Path) -> bytes:
    """The colour model, built in a subprocess so that this process never imports TensorFlow."""
    code = ("import sys; from pathlib import Path; from standin import hubmodel; "
            "sys.stdout.buffer.write(hubmodel.tar_gz(hubmodel.colour_model(Path(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp / "colour-model")], cwd=ROOT, capture_output=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"building the model failed:\n{done.stderr.decode()[-2000:]}")
    return done.stdout


def photo_like_class(data: bytes) -> int:
    """The class the colour model gives a photo-like JPEG: nearest prototype to its decoded mean."""
    from function.core.images import decode

    # 8-bit pixels at the colour model's size, in [0,1] as the float model sees them (its contract).
    mean = tuple((decode(data, 10**9, (224, 224)).reshape(-1, 3).mean(axis=0) / 255).tolist())
    ranking = hubmodel.expected_ranking(mean)
    d = [sum((a - b) ** 2 for a, b in zip(hubmodel.prototype(k), mean, strict=True)) for k in ranking[:2]]
    if d[1] - d[0] < 1e-4:
        raise ValueError("ambiguous photo")
    return ranking[0]


def serve(server: StandInServer, stop: threading.Event) -> tuple[list[Photo], list[Photo]]:
    """Register every route; returns (good photos, hostile photos)."""
    port = server.port
    good = [Photo(f"solid-{c}-{fmt.lower()}", server.add(f"/good/{c}.{fmt.lower()}", hostile.solid(c, fmt),
                                                        f"image/{fmt.lower()}"), c)
            for c, fmt in [(3, "JPEG"), (120, "JPEG"), (847, "PNG"), (250, "WEBP"), (512, "JPEG"), (963, "PNG")]]
    for w, h, seed in [(1600, 1067, 10), (1200, 1500, 15), (800, 600, 19)]:  # seeds with a clear winner
        data = photos.photo_like(w, h, seed=seed)
        good.append(Photo(f"photo-like-{w}x{h}", server.add(f"/good/photo-{w}x{h}.jpg", data, "image/jpeg"),
                          photo_like_class(data)))

    def at(name: str, content, expect, content_type: str = "image/jpeg", status: int = 200, **kw) -> Photo:
        path = f"/hostile/{name}"
        if isinstance(content, Reply):
            url = server.add(path, content.body, content.content_type, content.status, content.headers)
        else:
            url = server.add(path, content, content_type, status)
        return Photo(name, url, expect, **kw)

    blocked_direct = {"metadata-as-integer": "http://2852039166/latest/meta-data/",
                      "metadata-ipv4-mapped": "http://[::ffff:169.254.169.254]/",
                      "private-as-hex": "http://0x0a000001/robin.jpg",
                      "private-short": "http://10.1/robin.jpg",
                      "other-loopback": f"http://127.0.0.2:{port}/good/3.jpeg",
                      "ipv6-loopback": f"http://[::1]:{port}/good/3.jpeg",
                      "unspecified": f"http://0.0.0.0:{port}/good/3.jpeg"}
    server.add(quote("/odd/a robin été 鸟.jpg"), hostile.solid(37))
    bad = [
        at("truncated-jpeg", hostile.truncated_jpeg(), "corrupt_image"),
        at("html-as-jpeg", hostile.HTML, "not_an_image"),
        at("empty", b"", "empty"),
        at("cmyk-jpeg", hostile.cmyk_jpeg(), hostile.CMYK_CLASS),
        at("png-16-bit", hostile.png_16bit(), hostile.PNG16_CLASS, "image/png"),
        at("animated-gif", hostile.animated_gif(), hostile.GIF_CLASS, "image/gif"),
        at("webp", hostile.solid(250, "WEBP"), 250, "image/webp"),
        at("rgba-png", hostile.rgba_png(), hostile.RGBA_CLASS, "image/png"),
        at("exif-rotated", hostile.exif_rotated_jpeg(), hostile.EXIF_CLASS),
        at("png-bomb", hostile.png_bomb(), "image_too_large", "image/png"),
        at("gzip-bomb", hostile.gzip_bomb(), "too_large"),
        at("endless-body", hostile.endless(stop, 10.0), "too_large", slow=True),
        at("endless-chunked", hostile.endless(stop, 10.0, chunked=True), "too_large", slow=True),
        at("declares-50mb", hostile.declares_too_much(stop, 5.0), "too_large", slow=True),
        at("stall-after-headers", hostile.stall_after_headers(stop, 5.0), "timeout", slow=True),
        at("trickle", hostile.trickle(stop, 5.0), "timeout", slow=True),
        at("redirect-to-metadata", hostile.redirect("http://169.254.169.254/computeMetadata/v1/"), "blocked_address"),
        at("redirect-to-10.0.0.1", hostile.redirect("http://10.0.0.1/robin.jpg"), "blocked_address"),
        at("404", b"no such photo", "http_error", "text/plain", 404),
        at("500", hostile.fails_first(1, 500, hostile.solid(60), per_query=True), "http_error", per_request=True),
        at("503-then-200", hostile.fails_first(1, 503, hostile.solid(62), per_query=True), 62, per_request=True),
        at("429-then-200", hostile.fails_first(1, 429, hostile.solid(64), {"Retry-After": "0"}, per_query=True), 64,
           per_request=True),
        at("reset-then-200", hostile.fails_first(1, 0, hostile.solid(66), per_query=True), 66, per_request=True),
        Photo("spaces-and-unicode", server.url("/odd/a robin été 鸟.jpg"), 37),
        Photo("ftp", "ftp://127.0.0.1/robin.jpg", "invalid_url"),
        Photo("javascript", "javascript:alert(1)", "invalid_url"),
        *[Photo(name, url, "blocked_address") for name, url in blocked_direct.items()],
    ]
    return good, bad


# -- the clients --------------------------------------------------------------------------------


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # by kind
    statuses: Counter = field(default_factory=Counter)
    photos: Counter = field(default_factory=Counter)  # "good ok", "hostile ok", ...
    outcomes: Counter = field(default_factory=Counter)  # by photo name
    latencies_ms: list[float] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrong(self, text: str) -> None:
        with self.lock:
            self.mismatches.append(text)


REQUEST_LEVEL = [  # (name, body, content type, status, code)
    ("malformed-json", b'{"urls": ["http://a/x.jpg"', "application/json", 400, "invalid_json"),
    ("nested-json", b"[" * 50_000 + b"]" * 50_000, "application/json", 400, "invalid_json"),
    ("urls-a-number", b'{"urls": 5}', "application/json", 400, "invalid_urls"),
    ("empty-list", b'{"urls": []}', "application/json", 400, "missing_urls"),
    ("too-many-urls", json.dumps({"urls": ["http://a/x.jpg"] * 9}).encode(), "application/json", 400,
     "too_many_urls"),
    ("top-k-0", b'{"urls": ["http://a/x.jpg"], "top_k": 0}', "application/json", 400, "invalid_top_k"),
    ("top-k-10000", b'{"urls": ["http://a/x.jpg"], "top_k": 10000}', "application/json", 400, "invalid_top_k"),
    ("huge-body", b'{"urls": ["' + b"x" * 1_100_000 + b'"]}', "application/json", 413, "body_too_large"),
    ("xml", b"<urls/>", "application/xml", 415, "unsupported_media_type"),
]


class Client(threading.Thread):
    def __init__(self, base: str, good: list[Photo], bad: list[Photo], until: float, tally: Tally, seed: int):
        super().__init__(daemon=True)
        self.base, self.good, self.until, self.tally = base, good, until, tally
        self.fast_bad = [p for p in bad if not p.slow]
        self.slow_bad = [p for p in bad if p.slow]
        self.rng = random.Random(seed)

    def run(self) -> None:
        with requests.Session() as session:
            while time.monotonic() < self.until:
                roll = self.rng.random()
                if roll < 0.35:
                    self.photos(session, "good", self.rng.sample(self.good, self.rng.randint(1, 4)))
                elif roll < 0.85:
                    bad = self.rng.sample(self.fast_bad, self.rng.randint(1, 3))
                    if self.rng.random() < 0.15:
                        bad.append(self.rng.choice(self.slow_bad))
                    mixed = bad + self.rng.sample(self.good, self.rng.randint(1, 3))
                    self.rng.shuffle(mixed)
                    self.photos(session, "mixed", mixed)
                elif roll < 0.95:
                    self.request_level(session, self.rng.choice(REQUEST_LEVEL))
                else:
                    self.get(session, self.rng.choice(self.good))

    def send(self, session: requests.Session, kind: str, method: str, **kwargs) -> requests.Response | None:
        started = time.perf_counter()
        try:
            r = session.request(method, self.base + "/", timeout=60, **kwargs)
        except requests.RequestException as exc:
            self.tally.wrong(f"{kind}: client error {type(exc).__name__}: {exc}")
            with self.tally.lock:
                self.tally.requests[kind] += 1
                self.tally.statuses["client error"] += 1
            return None
        with self.tally.lock:
            self.tally.requests[kind] += 1
            self.tally.statuses[r.status_code] += 1
            self.tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        if "Traceback" in r.text:
            self.tally.wrong(f"{kind}: a stack trace in the answer")
        return r

    def photos(self, session: requests.Session, kind: str, chosen: list[Photo]) -> None:
        urls = [p.for_request() for p in chosen]
        r = self.send(session, kind, "POST", json={"urls": urls, "top_k": 1})
        if r is not None:
            self.check(kind, chosen, urls, r)

    def get(self, session: requests.Session, photo: Photo) -> None:
        r = self.send(session, "get", "GET", params={"url": photo.url, "top_k": "1"})
        if r is not None:
            self.check("get", [photo], [photo.url], r)

    def check(self, kind: str, chosen: list[Photo], urls: list[str], r: requests.Response) -> None:
        if r.status_code != 200:
            self.tally.wrong(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
            return
        results = r.json()["results"]
        if [x["url"] for x in results] != urls:
            self.tally.wrong(f"{kind}: results out of order")
            return
        for photo, result in zip(chosen, results, strict=True):
            got = result["error"]["code"] if result["error"] else result["predictions"][0]["id"]
            side = "good" if photo in self.good else "hostile"
            ok = got == photo.expect
            with self.tally.lock:
                self.tally.photos[f"{side} {'as expected' if ok else 'WRONG'}"] += 1
                self.tally.outcomes[photo.name, ok] += 1
            if not ok:
                self.tally.wrong(f"{photo.name}: expected {photo.expect!r}, got {got!r} ({result['error']})")

    def request_level(self, session: requests.Session, case) -> None:
        name, body, content_type, status, code = case
        headers = {"Content-Type": content_type}
        if status == 413:
            # A client sending a body it knows is big does not keep the connection; reusing one after
            # a 413 is measured separately (reuse_after_413, a check).
            headers["Connection"] = "close"
        r = self.send(session, "request-level", "POST", data=body, headers=headers)
        if r is None:
            return
        try:
            got = (r.status_code, r.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            got = (r.status_code, r.text[:80])
        ok = got == (status, code)
        with self.tally.lock:
            self.tally.outcomes[f"request:{name}", ok] += 1
        if not ok:
            self.tally.wrong(f"request {name}: expected {(status, code)}, got {got}")


def run_load(base: str, good: list[Photo], bad: list[Photo], seconds: float, clients: int, seed: int) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    threads = [Client(base, good, bad, until, tally, seed * 1000 + i) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)  # a request may take up to its client timeout after the end
        if t.is_alive():
            tally.wrong("a client thread did not finish")
    return tally


def reuse_after_413(base: str, tries: int = 20) -> int:
    """How often the next request on a kept-alive connection fails after a 413 for an unread body."""
    failures = 0
    body = b'{"urls": ["' + b"x" * 1_100_000 + b'"]}'
    for _ in range(tries):
        with requests.Session() as session:
            try:
                session.post(base + "/", data=body, headers={"Content-Type": "application/json"}, timeout=30)
                session.get(base + "/healthz", timeout=30)
            except requests.RequestException:
                failures += 1
    return failures


# -- the process, from /proc --------------------------------------------------------------------


def socket_inodes(pid: int) -> list[int]:
    inodes = []
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.append(int(link[8:-1]))
    except OSError:
        pass
    return inodes


def tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for the TCP sockets of ``pid``'s network namespace."""
    table = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            table[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3])
    return table


def snapshot(pid: int, service_port: int = 0, photo_port: int = 0) -> dict[str, float]:
    """RSS, threads and sockets of the process tree; sockets split into listening, from clients (to
    ``service_port``), to the photo host (``photo_port``: the pooled keep-alive connections) and other."""
    pids = tree(pid)
    inodes = [i for p in pids for i in socket_inodes(p)]
    table = tcp_table(pid)
    kinds: Counter = Counter()
    for inode in inodes:
        local, remote, state = table.get(inode, (0, 0, ""))
        if state == "0A":
            kinds["listening"] += 1
        elif local == service_port and service_port:
            kinds["from_clients"] += 1
        elif remote == photo_port and photo_port:
            kinds["to_photo_host"] += 1
        else:
            kinds["other"] += 1
    return {"rss_mb": round(sum(status_kb(p, "VmRSS") for p in pids) / 1024, 1),
            "threads": sum(status_kb(p, "Threads") for p in pids),
            "sockets": len(inodes), **{k: kinds[k] for k in ("listening", "from_clients", "to_photo_host", "other")},
            "processes": len(pids)}


Probe = Callable[[], dict[str, float]]
SETTLING = ("threads", "listening", "from_clients", "other")  # what must come back to the baseline


def settle(probe: Probe, target: dict[str, float] | None, timeout_s: float = SETTLE_S) -> tuple[dict, float]:
    """Poll until threads and non-pooled sockets are back at ``target`` (without one: steady for 3 s)."""
    started = time.monotonic()
    history: list[dict[str, float]] = []
    while True:
        now = probe()
        history.append(now)
        if target is not None and all(now[k] <= target[k] for k in SETTLING):
            break
        steady = history[-7:]
        if target is None and len(steady) == 7 and len({tuple(s[k] for k in SETTLING) for s in steady}) == 1:
            break
        if time.monotonic() - started > timeout_s:
            break
        threading.Event().wait(0.5)
    return now, time.monotonic() - started


# -- the run ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of measured normal load")
    ap.add_argument("--warmup", type=float, default=20.0,
                    help="seconds of load before measuring (both phases; the hostile one: at most 15)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the function, both phases (e.g. MALLOC_ARENA_MAX=16)")
    ap.add_argument("--attack", type=float, default=45.0, help="seconds of attacks in the hostile phase")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after the attack before RSS is compared")
    ap.add_argument("--attack-slots", type=int, default=None, metavar="N",
                    help="connections the thread-holding attacks share at once (default THREADS - 1, the pod's "
                         "slots but one; 0: no limit, more attackers than the pod has slots)")
    ap.add_argument("--skip", default="", metavar="ATTACK,...",
                    help="attacks left out: " + ", ".join(n for n, _, _ in attacks.ATTACKS))
    ap.add_argument("--no-oom-kill", action="store_true",
                    help="do not kill the service when its RSS passes the pod's memory limit")
    phases = ap.add_mutually_exclusive_group()
    phases.add_argument("--no-hostile", action="store_true", help="only the normal load")
    phases.add_argument("--hostile-only", action="store_true", help="only the hostile phase")
    args = ap.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    unknown = skip - {n for n, _, _ in attacks.ATTACKS}
    if unknown:
        ap.error(f"unknown attacks: {', '.join(sorted(unknown))}")

    stop = threading.Event()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "launcher": "gunicorn --config gunicorn.conf.py " + APP}
    with tempfile.TemporaryDirectory() as tmp, StandInServer() as server:
        tmp_path = Path(tmp)
        # Resets from the function hanging up on stalls and endless bodies are expected: no tracebacks.
        server.httpd.handle_error = lambda request, client_address: None
        print("building the colour model and the photos...", flush=True)
        server.add(MODEL_PATH, build_model(tmp_path), "application/x-tar")
        server.add(LABELS_PATH, hubmodel.label_map_csv(), "text/csv")
        good, bad = serve(server, stop)
        base_env = {**os.environ, "MODEL_URL": server.url(MODEL_PATH), "LABELS_URL": server.url(LABELS_PATH),
                    "TFHUB_CACHE_DIR": str(tmp_path / "tfhub"),
                    # The envelope parsers are attacked as on a route declared trusted: with proofs required,
                    # every forged envelope is refused 401 before it is parsed (tests/api/test_senders.py).
                    "EVENT_AUTH": "none"}
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            base_env.pop(proxy, None)
        try:
            if not args.hostile_only:
                report["normal"] = normal_phase(args, server, good, bad, {**base_env, **FUNCTION_ENV, **extra_env},
                                                {**FUNCTION_ENV, **extra_env}, tmp_path)
            if not args.no_hostile:
                report["hostile"] = hostile_phase(args, server, good, base_env, extra_env, skip, tmp_path)
        finally:
            stop.set()

    if "normal" in report:
        print_table(report["normal"])
    if "hostile" in report:
        attacks.print_report(report["hostile"])
    report["passed"] = all(report[p]["passed"] for p in ("normal", "hostile") if p in report)
    print("\n" + ("PASSED" if report["passed"] else "FAILED") + " (" + ", ".join(
        f"{p}: {'passed' if report[p]['passed'] else 'FAILED'}" for p in ("normal", "hostile") if p in report) + ")")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"written: {args.out}")
    return 0 if report["passed"] else 1


def hostile_phase(args, server: StandInServer, good: list[Photo], base_env: dict, extra_env: dict,
                  skip: set[str], tmp_path: Path) -> dict:
    """The image's settings (bench/attacks.py); the stand-in also plays an (empty) storage emulator."""
    settings = {**image_env(), "TRUSTED_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING",
                "STORAGE_EMULATOR_HOST": f"127.0.0.1:{server.port}", "STORAGE_CREDENTIALS": "anonymous",
                **extra_env}
    limits = attacks.pod_limits()
    # The image serves a .tflite on LiteRT and has no TensorFlow: convert the model into the cache
    # first (the normal phase has done it already unless --hostile-only), and allow no fallback.
    done = subprocess.run([sys.executable, "-m", "function.model", base_env["MODEL_URL"]], cwd=ROOT,
                          env=base_env, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"converting the model failed:\n{done.stderr.decode()[-2000:]}")
    settings["MODEL_RUNTIME"] = "litert"
    service = FunctionProcess({**base_env, **settings}, tmp_path / "hostile.log")
    try:
        service.start()
        ready_s = service.wait_ready(240)
        print(f"hostile phase: service ready in {ready_s:.1f} s ({settings})", flush=True)
        pid = service.proc.pid
        report = attacks.run_phase(
            service, server, good, lambda: snapshot(pid)["rss_mb"], warmup_s=min(args.warmup, 15.0),
            attack_s=args.attack, settle_s=args.settle, skip=skip, oom_kill=not args.no_oom_kill, seed=args.seed,
            limits=limits, settings={k: v for k, v in settings.items() if k != "STORAGE_EMULATOR_HOST"},
            attack_slots=args.attack_slots)
        report["ready_s"] = round(ready_s, 1)
        report["log_tail"] = tail(tmp_path / "hostile.log", 20).splitlines()
        return report
    finally:
        service.stop()


def normal_phase(args, server: StandInServer, good: list[Photo], bad: list[Photo], env: dict, shown_env: dict,
                 tmp_path: Path) -> dict:
    service = FunctionProcess(env, tmp_path / "function.log")
    report: dict = {"function_env": shown_env, "clients": args.clients, "duration_s": args.duration,
                    "warmup_s": args.warmup, "photos": {"good": len(good), "hostile": len(bad)}}
    try:
        service.start()
        ready_s = service.wait_ready(240)
        probe = partial(snapshot, service.proc.pid, service.port, server.port)
        report["ready_s"] = round(ready_s, 1)
        report["at_ready"] = probe()
        print(f"ready in {ready_s:.1f} s: {report['at_ready']}; warming up {args.warmup:g} s...", flush=True)

        warm = run_load(service.url, good, bad, args.warmup, args.clients, args.seed)
        report["warm_end"] = probe()
        baseline, waited = settle(probe, None)
        report["baseline_idle"] = {**baseline, "settled_after_s": round(waited, 1)}
        print(f"baseline (idle after warm-up): {baseline}; load {args.duration:g} s...", flush=True)

        sampler = Sampler(probe, period_s=1.0)
        sampler.start()
        started = time.monotonic()
        tally = run_load(service.url, good, bad, args.duration, args.clients, args.seed + 1)
        elapsed = time.monotonic() - started
        sampler.stop()
        samples = sampler.samples
        report["load_end"] = probe()
        after, waited = settle(probe, baseline)
        report["after_idle"] = {**after, "settled_after_s": round(waited, 1)}
        alive = service.proc.poll() is None
        report["reuse_after_413"] = {"tries": 20, "failures": reuse_after_413(service.url)}
    finally:
        service.stop()

    rss0 = baseline["rss_mb"]
    peak = max([s["rss_mb"] for s in samples] + [report["load_end"]["rss_mb"]])
    growth_end = report["load_end"]["rss_mb"] / rss0 - 1
    growth_idle = after["rss_mb"] / rss0 - 1
    n = sum(tally.requests.values())
    five_xx = sum(v for k, v in tally.statuses.items() if isinstance(k, int) and k >= 500)
    report.update({
        "requests": dict(tally.requests), "requests_total": n, "requests_per_s": round(n / elapsed, 1),
        "statuses": {str(k): v for k, v in tally.statuses.items()}, "photo_outcomes": dict(tally.photos),
        "latency_ms": {"p50": round(percentile(tally.latencies_ms, 0.5), 1),
                       "p95": round(percentile(tally.latencies_ms, 0.95), 1),
                       "max": round(max(tally.latencies_ms, default=float("nan")), 1),
                       "mean": round(statistics.fmean(tally.latencies_ms), 1) if tally.latencies_ms else None},
        "rss_mb": {"baseline": rss0, "load_end": report["load_end"]["rss_mb"], "peak": peak,
                   "after_idle": after["rss_mb"], "growth_at_load_end": round(growth_end, 4),
                   "growth_after_idle": round(growth_idle, 4)},
        "rss_series_mb": [s["rss_mb"] for s in samples],
        "threads_series": [s["threads"] for s in samples], "sockets_series": [s["sockets"] for s in samples],
        "warmup": {"requests": sum(warm.requests.values()), "mismatches": len(warm.mismatches)},
        "mismatches": tally.mismatches[:50], "mismatch_count": len(tally.mismatches),
        "outcomes": {f"{k[0]} {'ok' if k[1] else 'WRONG'}": v for k, v in sorted(tally.outcomes.items())},
        "per_input": {name: [tally.outcomes[name, True], tally.outcomes[name, False]]
                      for name in sorted({k[0] for k in tally.outcomes})},
        "photos_tally": dict(tally.photos), "requests_tally": dict(tally.requests),
    })
    checks = {
        "no 5xx": five_xx == 0,
        "no client errors": tally.statuses["client error"] == 0,
        "every photo and request as expected": not tally.mismatches and tally.photos["good as expected"] > 0,
        "every hostile input was sent": all((p.name, True) in tally.outcomes for p in bad),
        f"RSS growth < {RSS_GROWTH_LIMIT:.0%} (load end and idle)": max(growth_end, growth_idle) < RSS_GROWTH_LIMIT,
        "threads back to baseline": after["threads"] <= baseline["threads"],
        "sockets from clients, listening and other back to baseline":
            all(after[k] <= baseline[k] for k in ("listening", "from_clients", "other")),
        f"pooled sockets to the photo host within the pool ({POOL})": after["to_photo_host"] <= POOL,
        "a requests.Session goes on after a 413 (20 tries)": report["reuse_after_413"]["failures"] == 0,
        "service alive throughout": alive,
    }
    report["checks"] = checks
    report["passed"] = all(checks.values())
    return report


def print_table(report: dict) -> None:
    rss = report["rss_mb"]
    lat = report["latency_ms"]
    baseline, after = report["baseline_idle"], report["after_idle"]
    print("\n== normal load ==")
    rows = [
        ("service", f"gunicorn + gunicorn.conf.py, WORKERS=1 THREADS={report['function_env']['THREADS']}, "
                    f"ready in {report['ready_s']} s"),
        ("load", f"{report['clients']} clients, {report['warmup_s']:g} s warm-up + {report['duration_s']:g} s"),
        ("requests", f"{report['requests_total']} ({report['requests_per_s']}/s): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(report["requests_tally"].items()))),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(report["statuses"].items()))),
        ("photos", ", ".join(f"{k} {v}" for k, v in sorted(report["photos_tally"].items()))),
        ("latency ms", f"p50 {lat['p50']}, p95 {lat['p95']}, max {lat['max']}"),
        ("RSS MB", f"baseline {rss['baseline']}, load end {rss['load_end']} ({rss['growth_at_load_end']:+.1%}), "
                   f"peak {rss['peak']}, idle after {rss['after_idle']} ({rss['growth_after_idle']:+.1%})"),
        ("threads", f"baseline {baseline['threads']}, load end {report['load_end']['threads']}, "
                    f"idle after {after['threads']}"),
        ("sockets", f"baseline {baseline['sockets']}, load end {report['load_end']['sockets']}, "
                    f"idle after {after['sockets']} (settled in {after['settled_after_s']} s)"),
        *[(f"  {k}", f"baseline {baseline[k]}, load end {report['load_end'][k]}, idle after {after[k]}")
          for k in ("listening", "from_clients", "to_photo_host", "other")],
        ("processes", f"{baseline['processes']} (gunicorn arbiter + worker)"),
        ("after a 413", f"a Session's next request failed {report['reuse_after_413']['failures']} of "
                        f"{report['reuse_after_413']['tries']} times"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("\nper input (as expected / wrong):")
    for name, (ok, bad) in report["per_input"].items():
        print(f"  {name:<28} {ok:>5} / {bad}")
    if report["mismatches"]:
        print(f"\nfirst mismatches ({report['mismatch_count']}):")
        for m in report["mismatches"][:10]:
            print("  " + m)
    print("\nnormal-load checks:")
    for name, ok in report["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


if __name__ == "__main__":
    sys.exit(main())
