"""Imports flow one way: the contracts in pyproject.toml hold, and they fail on an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import functions_framework
import pytest

from tests.support import ROOT
from tests.walk import walk

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "function", tmp_path / "function", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make lint installs it)")
def test_the_package_keeps_its_import_contracts(copy_of_the_package):
    done = lint_imports(copy_of_the_package)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make lint installs it)")
@pytest.mark.parametrize(("module", "line", "broken"), [
    ("core/photos.py", "from ..api import http  # noqa", "One direction of flow"),  # core reaching up to api
    ("infra/cpu.py", "from .. import app  # noqa", "One direction of flow"),  # infra reaching up to app
    ("core/labels.py", "from ..model import batching  # noqa", "One direction of flow"),  # siblings
    ("model/batching.py", "import flask  # noqa", "transport-free"),
    ("core/photos.py", "import requests  # noqa", "The core does no transport"),  # fetching belongs to infra
    ("core/buckets.py", "import socket  # noqa", "The core does no transport"),
])
def test_an_import_against_the_flow_breaks_a_contract(copy_of_the_package, module, line, broken):
    path = copy_of_the_package / "function" / module
    path.write_text(path.read_text() + f"\n\ndef _lazy():\n    {line}\n")  # lazy imports count too
    done = lint_imports(copy_of_the_package)
    assert done.returncode != 0
    assert broken in done.stdout and "BROKEN" in done.stdout


def test_a_classification_request_goes_down_once_and_comes_back_once(env, serve_photo):
    # Before the one-door layout the HTTP module was entered 6 times by one request (it called the events,
    # uploads and parsing modules and the fan-out itself); now: from the target, back from parsing the
    # request, back from the app's verb.
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    client.post("/", json={"urls": [serve_photo(3)]})  # warm: the model's load is not the request's walk
    response, path = walk(lambda: client.post("/", json={"urls": [serve_photo(5), serve_photo(7)]}))
    assert response.status_code == 200
    assert path.entries("function/api/http.py") <= 3, path.stays
    assert path.entries("function/core/classifier.py") <= 3, path.stays
    down = [m for m in path.stays if m not in ("main.py", "function/infra/limits.py")]
    assert down.index("function/app.py", down.index("function/api/http.py")) < down.index("function/core/classifier.py")
    assert path.returns <= 15, path.stays
