"""The harness the tests and the benchmark share: a leaf, and what it reads from /proc is the tree's."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time

from harness import free_port, image_env, memory_mb, tree
from tests.support import ROOT

SLEEPER = ("import subprocess, sys, time; "
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "print(child.pid, flush=True); time.sleep(60)")


def test_the_harness_imports_only_the_standard_library():
    imported = set()
    for path in (ROOT / "harness").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_a_free_port_can_be_bound():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_a_tree_is_the_process_and_its_children_and_its_memory_sums_them():
    parent = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        # The child is listed once forked, and has memory of its own once its exec is through (in between,
        # /proc shows it with no RSS).
        while child not in tree(parent.pid) or memory_mb(child)["rss_mb"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert tree(parent.pid)[0] == parent.pid
        both, alone = memory_mb(parent.pid), memory_mb(child)
        assert both["rss_mb"] > alone["rss_mb"] > 0
        assert 0 < both["pss_mb"] <= both["rss_mb"]  # the pages they share are counted once
        assert both["hwm_mb"] >= both["rss_mb"]
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the group this test started, by its id
        parent.wait(10)


def test_the_image_settings_are_the_final_stage_s_but_its_paths():
    env = image_env()
    assert env["WORKERS"] and env["THREADS"] and env["MALLOC_ARENA_MAX"]
    assert not {"PORT", "MODEL_URL", "LABELS_URL", "MODEL_CACHE_DIR"} & set(env)
    assert not any(k.startswith(("PIP_", "PYTHON")) for k in env)
