"""``python main.py`` as people use it: photo lists from files and stdin, the progress bar, --help.

Run as a subprocess against the stand-in hub, as tests/test_cli.py does; the progress bar is
checked on a real pseudo-terminal.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import threading

import pytest

from function.cli import PROGRESS_MIN_PHOTOS, ProgressBar, build_parser, show_progress
from standin import photos
from tests.support import LABELS_PATH, MODEL_PATH, ROOT

BAR = re.compile(r"photos +(\d+)/(\d+) \[([#.]+)\]")


@pytest.fixture
def cli(server, hub_cache):
    env = dict(os.environ, MODEL_URL=server.url(MODEL_PATH), LABELS_URL=server.url(LABELS_PATH),
               TFHUB_CACHE_DIR=str(hub_cache), READ_TIMEOUT_S="3")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], env=env, input=stdin,
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    def run_on_a_terminal(*args: str) -> tuple[int, str, str]:
        """Like ``run``, with stderr on a pseudo-terminal; returns (exit code, stdout, what the terminal got)."""
        main_fd, terminal_fd = pty.openpty()
        process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], env=env, cwd=ROOT,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal_fd)
        os.close(terminal_fd)
        screen = bytearray()

        def drain():  # keep reading, so the child never blocks on a full terminal buffer
            while True:
                try:
                    chunk = os.read(main_fd, 4096)
                except OSError:  # EIO: the child closed its end
                    return
                if not chunk:
                    return
                screen.extend(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        stdout, _ = process.communicate(timeout=300)
        reader.join(30)
        os.close(main_fd)
        return process.returncode, stdout.decode(), screen.decode(errors="replace")

    run.on_a_terminal = run_on_a_terminal
    return run


def first_lines(stdout: str) -> list[str]:
    """The photo lines of the table: ``[n] name``."""
    return [line for line in stdout.splitlines() if line.startswith("[")]


def test_photos_listed_in_a_file_follow_the_arguments(cli, serve_photo, server, tmp_path):
    listed = tmp_path / "birds.txt"
    gone = server.url("/gone.jpg")
    listed.write_text(f"# my garden\n{serve_photo(31)}\n\n   {gone}  \n/no/such/photo.jpg\n")
    r = cli(serve_photo(30), "--from", str(listed))
    assert r.returncode == 1, r.stderr
    assert [line.split()[1] for line in first_lines(r.stdout)] == [serve_photo(30), serve_photo(31), gone,
                                                                    "/no/such/photo.jpg"]
    # A failed photo gets one line that says what went wrong.
    errors = [line.strip() for line in r.stdout.splitlines() if line.strip().startswith("error ")]
    assert errors == ["error http_error: the photo host answered HTTP 404",
                      "error file_not_found: no such file: /no/such/photo.jpg"]
    # stderr is a pipe here, not a terminal: no progress bar in it, however many photos.
    assert not BAR.search(r.stderr) and "\r" not in r.stderr


def test_a_dash_reads_photos_from_standard_input(cli, serve_photo, tmp_path):
    local = tmp_path / "tit.png"
    local.write_bytes(photos.solid(photos.class_colour(35), fmt="PNG"))
    r = cli("--json", "-", stdin=f"{serve_photo(34)}\n{local}\n")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert results[0]["url"].endswith("/34.jpg") and results[1]["file"] == str(local)
    assert [x["predictions"][0]["id"] for x in results] == [34, 35]


def test_an_unreadable_list_is_bad_usage(cli, tmp_path):
    r = cli("--from", str(tmp_path / "nope.txt"))
    assert r.returncode == 2 and "cannot read the list" in r.stderr and "nope.txt" in r.stderr


def test_an_empty_list_is_bad_usage(cli):
    r = cli("-", stdin="\n# nothing here\n")
    assert r.returncode == 2 and "no photos" in r.stderr


def test_a_progress_bar_runs_on_a_terminal_while_photos_come_in(cli, serve_photo):
    urls = [serve_photo(c) for c in (40, 41, 42, 43, 44)]
    code, stdout, screen = cli.on_a_terminal(*urls)
    assert code == 0
    bars = BAR.findall(screen)
    assert bars and bars[-1] == ("5", "5", "#" * 24)
    assert [int(done) for done, _, _ in bars] == sorted(int(done) for done, _, _ in bars)
    assert "classifying..." in screen
    assert screen.rstrip(" ").endswith("\r"), "the bar is wiped when the results are in"
    assert len(first_lines(stdout)) == 5 and "photos " not in stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_progress_bar_for_a_few_photos_or_off_a_terminal():
    assert show_progress(Terminal(), PROGRESS_MIN_PHOTOS)
    assert not show_progress(Terminal(), PROGRESS_MIN_PHOTOS - 1)
    assert not show_progress(io.StringIO(), 100)


def test_no_progress_asks_for_no_bar():
    assert build_parser().parse_args(["--no-progress", "x.jpg"]).progress is False
    assert build_parser().parse_args(["x.jpg"]).progress is True


def test_the_bar_fills_up_then_is_wiped():
    screen = Terminal()
    bar = ProgressBar(screen)
    bar(1, 4)
    bar(4, 4)
    bar.close()
    drawn = screen.getvalue().split("\r")
    assert drawn[1].startswith("photos 1/4 [######..................]")
    assert drawn[2] == "photos 4/4 [########################] classifying..."
    assert drawn[3].strip() == "" and drawn[-1] == ""


def test_help_explains_every_option_and_shows_examples(cli):
    r = cli("--help")
    assert r.returncode == 0
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
        for flag in action.option_strings:
            assert flag in r.stdout
    assert "examples:" in r.stdout and "--from urls.txt" in r.stdout and "python main.py -" in r.stdout
    assert "exit status" in r.stdout
