"""The web page in a real browser: headless Chromium, driven by playwright-core, against the function
served on loopback with the test model.

Needs Debian's Chromium and Node's playwright-core: ``make browser-tools`` installs both (CI does).
Without them the test is skipped, except under CI, where it fails: CI installs them, so a missing
browser there is a broken install step, not a reason to pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import functions_framework
import pytest
from werkzeug.serving import make_server

from function import app as service
from standin import hubmodel, photos
from tests.support import ROOT

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def missing_tools() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}"
    if shutil.which("node") is None:
        return "no node on PATH"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "no playwright-core in tests/browser/node_modules"
    return None


@pytest.fixture
def browser_tools():
    why = missing_tools()
    if why:
        message = f"{why}; `make browser-tools` installs Chromium (apt) and playwright-core (npm)"
        if os.environ.get("CI"):
            pytest.fail(f"CI installs the browser tools, yet: {message}")
        pytest.skip(message)


@pytest.fixture
def served_function(env):
    """The HTTP target on 127.0.0.1, in this process (werkzeug's threaded server), with a warm model."""
    app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
    classifier = service.serving()
    assert classifier.wait_until_ready(120).ready
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_the_page_classifies_pasted_urls_and_a_chosen_photo(browser_tools, served_function, serve_photo,
                                                            server, tmp_path):
    upload = tmp_path / "wren.png"
    upload.write_bytes(photos.solid(photos.class_colour(654), size=(320, 240), fmt="PNG"))
    good, missing = serve_photo(123), server.url("/photos/gone.jpg")
    screenshot = tmp_path / "page.png"
    run = subprocess.run(["node", str(BROWSER_DIR / "page.mjs")], cwd=BROWSER_DIR, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "BASE_URL": served_function, "CHROMIUM": CHROMIUM,
                                           "PHOTO_URLS": json.dumps([good, missing]), "UPLOAD": str(upload),
                                           "SCREENSHOT": str(screenshot)})
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout.strip().splitlines()[-1])
    wren, bird, gone = shown["results"]

    # Files first, then URLs, each with its thumbnail, a label for it, and its top 3 as bars.
    assert [r["name"] for r in shown["results"]] == ["Photo 1: wren.png", f"Photo 2: {good}", f"Photo 3: {missing}"]
    assert wren["species"][0] == hubmodel.species_name(654) and bird["species"][0] == hubmodel.species_name(123)
    for r in (wren, bird):
        assert not r["failed"] and r["error"] is None and r["thumbLoaded"]
        assert len(r["species"]) == 3 and all(p.endswith("%") for p in r["percents"])
        assert [w.rstrip("%") for w in r["barWidths"]] == [p.rstrip("%") for p in r["percents"]]
    assert wren["alt"] == "Photo 1: wren.png"

    # The 404 is an error row beside the others.
    assert gone["failed"] and gone["species"] == []
    assert not gone["thumbLoaded"] and gone["alt"] == f"Photo 3: {missing} (cannot be shown)"
    assert "http_error" in gone["error"] and "404" in gone["error"]

    assert shown["summary"].startswith("3 photos, 1 failed") and "total time" in shown["summary"]
    assert shown["liveRegion"] == "polite"
    assert shown["pageWidth"] <= 390, "the page scrolls sideways on a phone"
    assert shown["chosenAfterDrop"] == ["dropped.png"]
    assert not [p for p in shown["problems"] if "page error" in p or "Content Security Policy" in p]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def lite_function(server, monkeypatch):
    """The function serving the real lite model by MODEL_URL alone, with Coral's common names from the test hub."""
    from tests.support import COMMON_NAMES, LITE_MODEL

    if not LITE_MODEL.is_file() or not COMMON_NAMES.is_file():
        pytest.skip(f"the real lite model and its common names are not in {LITE_MODEL.parent}")
    monkeypatch.setenv("MODEL_URL", str(LITE_MODEL))
    monkeypatch.delenv("LABELS_URL", raising=False)
    monkeypatch.setenv("COMMON_NAMES_URL", server.add("/coral/inat_bird_labels.txt", COMMON_NAMES.read_bytes(),
                                                      "text/plain"))
    monkeypatch.setenv("TRUSTED_HOSTS", "127.0.0.1")
    service.reset()
    app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
    assert service.serving().wait_until_ready(120).ready
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(10)
    service.reset()


def test_the_page_shows_common_names_first_and_says_when_no_bird_is_recognised(browser_tools, lite_function, server,
                                                                               tmp_path):
    upload = tmp_path / "red.png"
    upload.write_bytes(photos.solid((200, 30, 30), fmt="PNG"))  # the lite model's best class: its background
    photo = server.add("/photos/like-a-photo.jpg", photos.photo_like(224, 224, seed=1), "image/jpeg")
    run = subprocess.run(["node", str(BROWSER_DIR / "page.mjs")], cwd=BROWSER_DIR, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "BASE_URL": lite_function, "CHROMIUM": CHROMIUM,
                                           "PHOTO_URLS": json.dumps([photo]), "UPLOAD": str(upload),
                                           "SCREENSHOT": str(tmp_path / "page.png")})
    assert run.returncode == 0, run.stderr
    background, other = json.loads(run.stdout.strip().splitlines()[-1])["results"]
    assert background["unrecognised"] == "No bird recognised"
    assert background["species"][0] == "None"  # still listed, under the statement
    # Each species with a common name: the common name first, the Latin name under it, in its own element.
    names = [line.replace("\\xd7", "\u00d7") for line in
             (ROOT.parent / "shared" / "models" / "inat_bird_labels.txt").read_text().splitlines()]
    assert len(other["species"]) == len(other["common"]) == 3
    for species, common in zip(other["species"], other["common"], strict=True):
        if species == "None":  # the background: Coral's file gives it no common name
            assert common is None
            continue
        assert common.startswith("common > species: ")
        assert f"{species} ({common.split(': ', 1)[1]})" in names
