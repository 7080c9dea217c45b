"""``python main.py``, run as a user runs it: a subprocess against the stand-in hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from standin import hubmodel, photos
from tests.api.writes import check_record
from tests.support import LABELS_PATH, MODEL_PATH, ROOT


@pytest.fixture
def run(server, hub_cache):
    env = dict(os.environ, MODEL_URL=server.url(MODEL_PATH), LABELS_URL=server.url(LABELS_PATH),
               TFHUB_CACHE_DIR=str(hub_cache), READ_TIMEOUT_S="3")

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    return run


def test_prints_top_3_species_per_photo_and_the_total_time(run, serve_photo, tmp_path):
    local = tmp_path / "wren.png"
    local.write_bytes(photos.solid(photos.class_colour(654), fmt="PNG"))
    r = run(serve_photo(123), str(local))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("/photos/123.jpg") and lines[4].endswith("wren.png")
    assert lines[1].split()[:3] == ["1.", *hubmodel.species_name(123).split()[:2]]
    assert lines[5].split()[1:3] == hubmodel.species_name(654).split()[:2]
    assert sum(line.strip().startswith(("1.", "2.", "3.")) for line in lines) == 6
    assert "2 photo(s), 0 failed, in" in r.stdout and "model download and load" in r.stdout


def test_json_prints_the_http_api_document(run, serve_photo):
    r = run("--json", "--top-k", "2", serve_photo(7))
    doc = json.loads(r.stdout)
    assert r.returncode == 0
    assert doc["results"][0]["url"].endswith("/photos/7.jpg")
    assert [p["id"] for p in doc["results"][0]["predictions"]][:1] == [7]
    assert len(doc["results"][0]["predictions"]) == 2
    assert {"fetch", "inference", "total", "wall"} <= set(doc["timings_ms"])


def test_exit_code_is_1_when_any_photo_failed(run, serve_photo, server):
    r = run(serve_photo(8), server.url("/missing.jpg"), "/no/such/file.jpg")
    assert r.returncode == 1
    assert "error http_error" in r.stdout and "error file_not_found" in r.stdout
    assert "3 photo(s), 2 failed" in r.stdout


def test_verbose_prints_the_phase_breakdown(run, serve_photo):
    r = run("-v", serve_photo(9))
    assert r.returncode == 0
    assert "where the time went" in r.stdout
    assert any(line.split()[:1] == ["inference"] for line in r.stdout.splitlines())


@pytest.mark.parametrize("args", [["--top-k", "0"], ["--top-k", "x"], ["--no-such-flag"]])
def test_bad_usage_exits_2(run, args):
    r = run(*args)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_bad_configuration_exits_2_naming_the_variable(run):
    r = run("x.jpg", TOP_K="many")
    assert r.returncode == 2 and "TOP_K" in r.stderr


def test_help_explains_options_with_an_example(run):
    r = run("--help")
    assert r.returncode == 0 and "--top-k" in r.stdout and "examples:" in r.stdout


def wait_for_conversion(cache: str) -> None:
    """Until the detached conversion's manifest is in the cache (polling a file another process writes)."""
    deadline = time.monotonic() + 120
    while not list(Path(cache).glob("litert/*/manifest.json")):
        assert time.monotonic() < deadline, (Path(cache) / "litert" / "convert.log").read_text()[-2000:]
        time.sleep(0.2)


def test_a_repeat_run_serves_the_cached_flatbuffer_without_importing_tensorflow(run, serve_photo, tmp_path):
    cache = str(tmp_path / "models")
    url = serve_photo(321)
    first = run(url, "--json", MODEL_CACHE_DIR=cache)
    assert first.returncode == 0, first.stderr[-2000:]
    # The first run answers on TensorFlow at once and converts for LiteRT in a detached process.
    assert "tf_import" in json.loads(first.stdout)["timings_ms"]
    wait_for_conversion(cache)
    again = run(url, "--json", MODEL_CACHE_DIR=cache, PYTHONPROFILEIMPORTTIME="1")
    assert again.returncode == 0, again.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time")}
    assert "ai_edge_litert" in imported
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "tensorflow_hub", "keras", "tf_keras")}
    doc = json.loads(again.stdout)
    assert doc["results"][0]["predictions"][0]["id"] == 321 and "cache_lookup" in doc["timings_ms"]


def test_a_repeat_run_prints_no_runtime_noise(run, serve_photo, tmp_path):
    cache = str(tmp_path / "models")
    url = serve_photo(322)
    assert run(url, MODEL_CACHE_DIR=cache).returncode == 0
    wait_for_conversion(cache)
    quiet = run(url, MODEL_CACHE_DIR=cache)
    assert quiet.returncode == 0
    assert quiet.stderr == ""  # no TensorFlow start-up lines, no LiteRT delegate notice


def test_runtime_tensorflow_serves_the_hub_module_on_tensorflow(run, serve_photo):
    done = run(serve_photo(323), "--runtime", "tensorflow", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["results"][0]["predictions"][0]["id"] == 323
    assert "tf_import" in doc["timings_ms"]  # the TensorFlow runtime's own load phases


def test_a_run_while_a_conversion_holds_the_cache_waits_for_it_says_so_and_never_imports_tensorflow(
        run, serve_photo, server, tmp_path):
    cache = tmp_path / "models"
    flatbuffer = hubmodel.colour_tflite(tmp_path / "colour.tflite")
    # Another process converting: it holds the entry's lock and announces a conversion about to end.
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys
from function.model.cache import ConvertedCache
cache, url = ConvertedCache({str(cache)!r}), {server.url(MODEL_PATH)!r}
with cache.locked(url), cache.announced(url, expected_s={{"verify": 1.0}}), cache.temp_file(url) as tmp:
    print("holding", flush=True)
    sys.stdin.readline()
    tmp.write_bytes(open({str(flatbuffer)!r}, "rb").read())
    cache.store(url, tmp, {{"kind": "conversion"}})
"""], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        env = dict(os.environ, MODEL_URL=server.url(MODEL_PATH), LABELS_URL=server.url(LABELS_PATH),
                   MODEL_CACHE_DIR=str(cache), READ_TIMEOUT_S="3", PYTHONPROFILEIMPORTTIME="1")
        cli = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--json", serve_photo(324)], env=env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr = []
        for line in cli.stderr:  # the run says what it does before it blocks on the lock
            stderr.append(line)
            if "waiting for the LiteRT conversion started by an earlier run" in line:
                break
        assert cli.poll() is None, "".join(stderr)[-2000:]
        holder.stdin.write("done\n")
        holder.stdin.flush()
        out, rest = cli.communicate(timeout=120)
        stderr.append(rest)
    finally:
        holder.kill()
    assert cli.returncode == 0, "".join(stderr)[-2000:]
    doc = json.loads(out)
    assert doc["results"][0]["predictions"][0]["id"] == 324 and "conversion_wait" in doc["timings_ms"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in "".join(stderr).splitlines()
                if line.startswith("import time")}
    assert "ai_edge_litert" in imported
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "tensorflow_hub", "keras", "tf_keras")}


def test_write_results_writes_the_result_document_beside_each_local_photo(run, serve_photo, tmp_path):
    wren, robin = tmp_path / "wren.png", tmp_path / "robin.jpg"
    wren.write_bytes(photos.solid(photos.class_colour(654), fmt="PNG"))
    robin.write_bytes(photos.solid(photos.class_colour(321)))
    (tmp_path / "robin.jpg.json").write_text("an earlier run's document")
    r = run("--write-results", "--json", str(wren), str(robin), serve_photo(7))
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    for photo, entry in ((wren, answer["results"][0]), (robin, answer["results"][1])):
        doc = json.loads(Path(f"{photo}.json").read_text())
        assert doc["results"] == [entry]  # the HTTP API's entry, as --json prints it
        assert doc["model"] and doc["classified_at"]
        check_record(doc)
    assert json.loads((tmp_path / "wren.png.json").read_text())["results"][0]["predictions"][0]["id"] == 654
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robin.jpg", "robin.jpg.json", "wren.png", "wren.png.json"]
    assert "1 photo URL(s) have no folder" in r.stderr


def test_without_write_results_nothing_is_written(run, tmp_path):
    wren = tmp_path / "wren.png"
    wren.write_bytes(photos.solid(photos.class_colour(654), fmt="PNG"))
    assert run(str(wren)).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["wren.png"]


def test_write_results_writes_nothing_for_a_path_with_no_file(run, tmp_path):
    r = run("--write-results", str(tmp_path / "missing.jpg"))
    assert r.returncode == 1 and "error file_not_found" in r.stdout
    assert list(tmp_path.iterdir()) == []
