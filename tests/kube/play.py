"""Run the Knative Service's pod spec as written, with ``podman kube play`` (``make kube-test``).

Reads ``knative/service.yaml``, derives a v1 Pod from its revision template (``tests/kube/pod.py``:
the container spec, env, resources, securityContext, probes, volumeMounts and emptyDir volumes as
written; the image carries its model and label map, photos come from a stand-in on 127.0.0.1), plays the pod,
waits for readiness through the readiness probe's own path, period and timeout, classifies two
photos, checks what podman made of the securityContext and resources, and always tears the pod
down again (``podman kube down``). Needs podman (>= 4.3; on this machine:
``bash ../shared/tools/podman-setup.sh``) and the image: ``make kube-test`` builds it with ``make
image-test`` (against a stand-in hub, since the build converts the model). Not collected by pytest.

Knative -> Pod translations (made by ``tests/kube/pod.py``, printed at every run):

1. ``spec.template.metadata.annotations`` (autoscaling) dropped; the template's labels kept.
2. ``containerConcurrency``, ``timeoutSeconds``, ``responseStartTimeoutSeconds`` (and
   ``idleTimeoutSeconds``) dropped: the queue-proxy/activator enforce them and are not here.
3. ``image`` -> the local image (``localhost/bird-classifier:latest``), ``imagePullPolicy: Never``.
4. No queue-proxy: the test probes the readiness path directly on the container's port.
5. ``PORT`` set to the container port, and ``K_SERVICE``/``K_CONFIGURATION``/``K_REVISION`` set as
   Knative injects them.
6. Port-less probes get the container port (Knative fills it in; a Pod needs it).
7. ``hostNetwork: true`` (stand-in and client on 127.0.0.1); if the manifest's port (8080) is taken
   on the host, a free port replaces ``containerPort``, ``PORT`` and the probes' port together.
8. ``restartPolicy: Never``: a container that dies fails the test.
9. For podman 4.3 only: the container's ``ports`` are removed (podman refuses port mappings on the
   host network; the port is informational there, ``PORT`` and the probes carry it).
10. For podman 4.3 only: the emptyDir volumes are renamed ``POD-NAME`` (podman names their local
    volumes after them, so two pods would share ``tmp``); the test checks they do not exist before
    the play (each emptyDir starts empty) and are gone after ``kube down``.

Environment overrides, and nothing else: ``TRUSTED_HOSTS=127.0.0.1`` (the photos are on loopback,
which the SSRF guard refuses otherwise). The model and the label map are the image's own: the test
checks that the pod fetches neither. Everything else (WORKERS, THREADS, TFHUB_CACHE_DIR, timeouts, FANOUT_URL, ...)
keeps the manifest's value; two photos stay below FANOUT_CHUNK, so the fan-out URL is not used.

What podman does not do as a kubelet would (reported, not hidden): it does not verify
``runAsNonRoot`` (the test checks the process's uid instead); it runs no readiness probe (the test
is the prober, with the probe's path, period and timeout); it turns the liveness probe into a
healthcheck that runs ``curl`` inside the container (the image has none; the kubelet makes the HTTP
request itself) on a systemd timer that does not exist here, so the test GETs the liveness path
itself; and it does not enforce an emptyDir's ``sizeLimit``.

``--print-pod`` prints the derived Pod and exits (no podman needed).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness import free_port  # noqa: E402
from standin import photos  # noqa: E402
from standin.server import StandInServer  # noqa: E402
from tests.kube.pod import for_podman, pod_from_service  # noqa: E402

MODEL_PATH = "/google/aiy/vision/classifier/birds_V1/1"
LABELS_PATH = "/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
CLASSES = (300, 5)  # two photos the colour model puts in these classes
UPLOAD_CLASS = 12  # an uploaded photo, big enough (~0.9 MB) that the form parser spools it to /tmp
ALL_CAPS = 41  # capabilities in a 5.x kernel's CapBnd; "drop: [ALL]" must leave none effective


class KubeTestFailure(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise KubeTestFailure(message)


def port_free(port: int) -> bool:
    """Whether gunicorn could bind ``port`` on all interfaces (it binds 0.0.0.0)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is no obstacle
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def engine(cmd: str, *args: str, check_rc: bool = True, timeout: float = 120) -> str:
    done = subprocess.run([cmd, *args], capture_output=True, text=True, timeout=timeout)
    if check_rc and done.returncode != 0:
        raise KubeTestFailure(f"{cmd} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def local_image_name(cmd: str, image: str) -> tuple[str, int]:
    """The image's full local name (what a Pod's ``image`` must say for podman) and its size."""
    info = json.loads(engine(cmd, "image", "inspect", image))[0]
    tags = info.get("RepoTags") or []
    want = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    full = next((t for t in tags if t == want or t.endswith("/" + want)), tags[0] if tags else info["Id"])
    return full, int(info["Size"])


def http_probe(probe: dict[str, Any], port: int) -> tuple[str, float, float]:
    get = probe["httpGet"]
    return f"http://127.0.0.1:{port}{get['path']}", float(probe.get("timeoutSeconds", 1)), \
        float(probe.get("periodSeconds", 10))


def proc_status(cmd: str, container: str) -> dict[str, str]:
    """``/proc/1/status`` of the container's PID 1 (gunicorn), read inside the container."""
    out = engine(cmd, "exec", container, "python", "-c", "print(open('/proc/1/status').read())")
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def writable_mounts(cmd: str, container: str) -> list[str]:
    """Mount points inside the container that are writable (not /proc, /sys, /dev)."""
    out = engine(cmd, "exec", container, "python", "-c", "print(open('/proc/self/mountinfo').read())")
    points = []
    for line in out.splitlines():
        fields = line.split()
        point, opts = fields[4], fields[5].split(",")
        if "rw" in opts and not point.startswith(("/proc", "/sys", "/dev")):
            points.append(point)
    return points


def main() -> int:
    ap = argparse.ArgumentParser(description="Play knative/service.yaml's pod spec with podman and classify.")
    ap.add_argument("--image", default=os.environ.get("IMAGE", "bird-classifier"))
    ap.add_argument("--engine", default=os.environ.get("ENGINE", "podman"))
    ap.add_argument("--service", default=str(ROOT / "knative" / "service.yaml"))
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    ap.add_argument("--print-pod", action="store_true", help="print the derived Pod YAML and exit")
    args = ap.parse_args()

    service = yaml.safe_load(Path(args.service).read_text())
    written_port = service["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    port = written_port if port_free(written_port) else free_port("0.0.0.0")
    name = f"bird-classifier-kube-test-{os.getpid()}"
    server = StandInServer()
    overrides = {"TRUSTED_HOSTS": "127.0.0.1"}

    if args.print_pod:
        pod, notes = pod_from_service(service, image=f"localhost/{args.image}:latest", port=port, name=name,
                                      env_overrides=overrides)
        notes += for_podman(pod)
        print(yaml.safe_dump(pod, sort_keys=False), end="")
        print("".join(f"# translation: {n}\n" for n in notes), end="")
        server.httpd.server_close()
        return 0

    image, image_size = local_image_name(args.engine, args.image)
    pod, notes = pod_from_service(service, image=image, port=port, name=name, env_overrides=overrides)
    notes += for_podman(pod)
    container_spec = pod["spec"]["containers"][0]
    container = f"{name}-{container_spec['name']}"  # podman kube play names containers POD-CONTAINER
    print(f"kube-test: {args.service} -> Pod {name}, image {image} ({image_size / 1e6:.0f} MB), port {port}")
    for n in notes:
        print(f"  translation: {n}")
    print(f"  env overrides: {', '.join(f'{k}={v}' for k, v in overrides.items())} (nothing else)")

    with tempfile.NamedTemporaryFile("w", prefix="bird-classifier-pod-", suffix=".yaml", delete=False) as pod_file:
        yaml.safe_dump(pod, pod_file, sort_keys=False)
    volumes = [v["name"] for v in pod["spec"]["volumes"]]
    leftover = [v for v in volumes if subprocess.run([args.engine, "volume", "exists", v]).returncode == 0]
    if leftover:
        print(f"kube-test: volumes {leftover} exist already; an emptyDir must start empty", file=sys.stderr)
        return 1
    server.start()
    played = ok = False
    timings: dict[str, float] = {}
    try:
        urls = [server.add(f"/photos/{k}.jpg", photos.solid(photos.class_colour(k)), "image/jpeg") for k in CLASSES]

        t0 = time.monotonic()
        played = True
        play_out = engine(args.engine, "kube", "play", pod_file.name, timeout=300)
        timings["kube_play_s"] = time.monotonic() - t0

        def alive() -> bool:
            state = engine(args.engine, "inspect", "--format", "{{.State.Status}}", container, check_rc=False)
            return state == "running"

        # Readiness as the kubelet would probe it: the probe's path, timeout and period.
        ready_url, ready_timeout, ready_period = http_probe(container_spec["readinessProbe"], port)
        deadline = t0 + args.ready_timeout
        not_ready = 0
        while True:
            try:
                status = requests.get(ready_url, timeout=ready_timeout).status_code
            except (requests.ConnectionError, requests.Timeout):
                status = None
            if status == 200:
                break
            not_ready += 1
            check(alive(), f"the container is no longer running while waiting for {ready_url}")
            check(time.monotonic() < deadline, f"{ready_url} did not answer 200 in {args.ready_timeout:.0f} s")
            time.sleep(ready_period)
        timings["ready_s"] = time.monotonic() - t0
        live_probe = container_spec["livenessProbe"]
        if "tcpSocket" in live_probe:
            with socket.create_connection(("127.0.0.1", live_probe["tcpSocket"]["port"]),
                                          timeout=float(live_probe.get("timeoutSeconds", 1))):
                pass  # the liveness probe's TCP handshake
            live_said = f"TCP connect to port {live_probe['tcpSocket']['port']}: accepted (by the test)"
        else:
            live_url, live_timeout, _ = http_probe(live_probe, port)
            live = requests.get(live_url, timeout=live_timeout).status_code
            check(live == 200, f"liveness {live_url} answered {live}")
            live_said = f"GET {live_url} -> {live} (by the test)"
        check(server.hits[MODEL_PATH] == 0 and server.hits[LABELS_PATH] == 0,
              "the pod fetched the model or the label map: the image should carry both")

        t = time.monotonic()
        r = requests.post(f"http://127.0.0.1:{port}/", json={"urls": urls}, timeout=60)
        timings["post_s"] = time.monotonic() - t
        check(r.status_code == 200, f"POST / answered {r.status_code}: {r.text[:500]}")
        results = r.json()["results"]
        check([x["url"] for x in results] == urls, f"results out of order: {results}")
        check([x["error"] for x in results] == [None, None], f"photo errors: {results}")
        top = [x["predictions"][0]["id"] for x in results]
        check(top == list(CLASSES), f"top ids {top}, expected {list(CLASSES)}")
        top_k = int(next(e["value"] for e in container_spec["env"] if e["name"] == "TOP_K"))
        check(all(len(x["predictions"]) == top_k for x in results), f"TOP_K={top_k} not honoured")

        # An upload: Werkzeug spools a file part over 500 KB to a temporary file, in /tmp (an emptyDir).
        big = photos.solid(photos.class_colour(UPLOAD_CLASS), size=(640, 480), fmt="PNG", compress_level=0)
        up = requests.post(f"http://127.0.0.1:{port}/", files={"photo": ("wren.png", big, "image/png")}, timeout=60)
        check(up.status_code == 200, f"upload answered {up.status_code}: {up.text[:500]}")
        up_top = [x["predictions"][0]["id"] if x["predictions"] else x["error"] for x in up.json()["results"]]
        check(up_top == [UPLOAD_CLASS], f"upload top ids {up_top}, expected [{UPLOAD_CLASS}]")

        # What podman made of the securityContext and resources, and what the process really has.
        info = json.loads(engine(args.engine, "container", "inspect", container))[0]
        host = info["HostConfig"]
        sc = container_spec["securityContext"]
        check(host["ReadonlyRootfs"] is (sc.get("readOnlyRootFilesystem") is True),
              f"ReadonlyRootfs {host['ReadonlyRootfs']}, the manifest says {sc.get('readOnlyRootFilesystem')}")
        status = proc_status(args.engine, container)
        dropped = sc.get("capabilities", {}).get("drop", [])
        if "ALL" in dropped:
            check(int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0,
                  f"capabilities left: CapEff {status['CapEff']} CapPrm {status['CapPrm']}")
            check(not info.get("EffectiveCaps"), f"podman inspect EffectiveCaps {info.get('EffectiveCaps')}")
        if sc.get("allowPrivilegeEscalation") is False:
            check(status.get("NoNewPrivs") == "1", f"NoNewPrivs {status.get('NoNewPrivs')}")
        if sc.get("seccompProfile", {}).get("type") == "RuntimeDefault":
            check(status.get("Seccomp") == "2", f"Seccomp mode {status.get('Seccomp')} (2 = filter)")
        uid = status["Uid"].split()[0]
        if sc.get("runAsNonRoot"):  # the kubelet's check, which podman does not make
            check(uid != "0", "PID 1 runs as root, which runAsNonRoot forbids")
        limits = container_spec["resources"]["limits"]
        mem_limit = int(limits["memory"].removesuffix("Mi")) * 2**20
        check(host["Memory"] == mem_limit, f"memory limit {host['Memory']}, the manifest says {limits['memory']}")
        cpus = host.get("NanoCpus") or host["CpuQuota"] * 10**9 // max(host["CpuPeriod"], 1)
        check(cpus == int(float(limits["cpu"]) * 1e9), f"CPU limit {cpus / 1e9} cores, manifest {limits['cpu']}")
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        for vm in container_spec["volumeMounts"]:
            m = mounts.get(vm["mountPath"], {})
            check(m.get("Type") == "volume" and m.get("Name") == vm["name"],
                  f"{vm['mountPath']} is not the emptyDir {vm['name']}: {m}")
        cached = engine(args.engine, "exec", container, "python", "-c",
                        "import os; print(sorted(os.listdir('/var/cache/tfhub')))")
        writable = writable_mounts(args.engine, container)
        declared = {vm["mountPath"] for vm in container_spec["volumeMounts"]}
        extra = [p for p in writable if p not in declared and p != "/"]
        check("/" not in writable, "the root filesystem is writable")
        write = ("import sys\nfor p in sys.argv[1:]:\n  try:\n    open(p, 'w').close(); print(p, 'ok')\n"
                 "  except OSError as e:\n    print(p, e.strerror)")
        probe_writes = engine(args.engine, "exec", container, "python", "-c", write,
                              "/app/x", "/var/cache/tfhub/x", "/tmp/x")
        check(probe_writes.splitlines()[1:] == ["/var/cache/tfhub/x ok", "/tmp/x ok"]
              and "ok" not in probe_writes.splitlines()[0], f"writes: {probe_writes}")
        health = subprocess.run([args.engine, "healthcheck", "run", container], capture_output=True, text=True,
                                timeout=60)
        health_said = (health.stdout + health.stderr).strip() or f"exit {health.returncode}"
        health_test = " ".join((info["Config"].get("Healthcheck") or {}).get("Test", [])[1:4]) or "none"
        has_curl = engine(args.engine, "exec", container, "python", "-c",
                          "import shutil; print(bool(shutil.which('curl')))") == "True"

        logs = subprocess.run([args.engine, "logs", container], capture_output=True, text=True, timeout=60)
        log_text = logs.stdout + logs.stderr
        errors = [ln for ln in log_text.splitlines() if '"severity": "ERROR"' in ln or "[ERROR]" in ln]
        check(not errors, "errors in the container log:\n" + "\n".join(errors[:5]))

        # Scale-down: Knative's pod gets SIGTERM; gunicorn (PID 1) must exit 0, well inside the grace period.
        t = time.monotonic()
        engine(args.engine, "pod", "stop", "--time", "30", name, timeout=90)
        timings["stop_s"] = time.monotonic() - t
        exit_code = engine(args.engine, "inspect", "--format", "{{.State.ExitCode}}", container)
        check(exit_code == "0" and timings["stop_s"] < 15, f"SIGTERM: exit {exit_code} after {timings['stop_s']:.1f} s")

        answers = [[(p["id"], p.get("label"), round(p["score"], 3)) for p in x["predictions"]] for x in results]
        print(f"  kube play: {play_out.splitlines()[0] if play_out else ''} ... in {timings['kube_play_s']:.1f} s")
        print(f"  ready (GET {ready_url} -> 200) {timings['ready_s']:.1f} s after kube play "
              f"({not_ready} probes not ready first, every {ready_period:g} s, timeout {ready_timeout:g} s)")
        print(f"  POST / with 2 photo URLs: {r.status_code} in {timings['post_s']:.2f} s, top ids {top} "
              f"(expected {list(CLASSES)})")
        for url, a in zip(urls, answers, strict=True):
            print(f"    {url.rsplit('/', 1)[-1]}: {a}")
        print(f"  POST / with a {len(big) / 1e6:.1f} MB upload (spooled to /tmp): {up.status_code}, top ids {up_top}")
        print(f"  pod stop (SIGTERM): exit {exit_code} in {timings['stop_s']:.1f} s")
        print(f"  securityContext: ReadonlyRootfs {host['ReadonlyRootfs']}, CapEff {status['CapEff']}, "
              f"NoNewPrivs {status['NoNewPrivs']}, Seccomp {status['Seccomp']}, uid {uid}; "
              f"limits {host['Memory'] // 2**20} Mi, {cpus / 1e9:g} CPU")
        print(f"  writable mounts: {writable}; TFHUB cache: {cached}")
        print(f"  liveness: {live_said}; podman's healthcheck made of it "
              f"({health_test}, curl in the image: {has_curl}) says {health_said!r} when run by hand; "
              "podman runs it only from a systemd timer (none here); a kubelet makes the probe itself")
        if extra:
            print(f"  NOTE: podman also made {extra} writable (a kubelet would not; the app did not need them "
                  "to pass here, but a read-only /var/tmp or /run under Kubernetes is untested by this run)")
        print(json.dumps({"ok": True, "image": image, "image_mb": round(image_size / 1e6), "port": port,
                          **{k: round(v, 2) for k, v in timings.items()}, "top_ids": top}))
        ok = True
        return 0
    except (KubeTestFailure, requests.RequestException, subprocess.TimeoutExpired) as failure:
        print(f"kube-test FAILED: {failure}", file=sys.stderr)
        print(engine(args.engine, "pod", "ps", "--filter", f"name={name}", check_rc=False), file=sys.stderr)
        print(engine(args.engine, "ps", "-a", "--pod", "--filter", f"pod={name}", check_rc=False), file=sys.stderr)
        done = subprocess.run([args.engine, "logs", "--tail", "60", container], capture_output=True, text=True)
        print(f"--- container log (last 60 lines) ---\n{done.stdout}{done.stderr}", file=sys.stderr)
        print(f"--- pod spec: {pod_file.name} (kept) ---", file=sys.stderr)
        return 1
    finally:
        if played:
            engine(args.engine, "kube", "down", pod_file.name, check_rc=False, timeout=180)
            for v in volumes:  # the emptyDirs go with the pod (kube down removes them; make sure)
                if subprocess.run([args.engine, "volume", "exists", v]).returncode == 0:
                    print(f"  kube down left volume {v}; removing it", file=sys.stderr)
                    engine(args.engine, "volume", "rm", "--force", v, check_rc=False)
        server.stop()
        if ok:
            os.unlink(pod_file.name)


if __name__ == "__main__":
    sys.exit(main())
