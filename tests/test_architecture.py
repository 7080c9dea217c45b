"""Imports flow one way: the contracts in pyproject.toml hold, and they fail on an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

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
])
def test_an_import_against_the_flow_breaks_a_contract(copy_of_the_package, module, line, broken):
    path = copy_of_the_package / "function" / module
    path.write_text(path.read_text() + f"\n\ndef _lazy():\n    {line}\n")  # lazy imports count too
    done = lint_imports(copy_of_the_package)
    assert done.returncode != 0
    assert broken in done.stdout and "BROKEN" in done.stdout
