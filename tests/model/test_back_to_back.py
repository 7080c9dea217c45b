"""A one-shot run that finds a conversion under way (the cache entry's lock held by a converter).

The converter here is a thread of the test holding the entry's lock and announcing itself as
``python -m function.model`` does; flock locks belong to open files, so the loader's own probe and
wait see it as another process's. Nothing is timed: each test orders the two sides with events.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from function.infra import logs
from function.model import loader
from function.model.cache import ConvertedCache, UnderWay
from standin import hubmodel

URL = "https://hub.example/google/aiy/vision/classifier/birds_V1/1"  # never fetched: the cache decides


@pytest.fixture(scope="module")
def flatbuffer(tmp_path_factory) -> bytes:
    return hubmodel.colour_tflite(tmp_path_factory.mktemp("back-to-back") / "colour.tflite").read_bytes()


@pytest.fixture
def spec(tmp_path) -> loader.ModelSpec:
    return loader.ModelSpec(URL, "auto", str(tmp_path / "models"), warmup=False, convert_in_background=True)


class Notices(logging.Handler):
    """The run's notices, and an event for the one a test waits on."""

    def __init__(self, waiting_for: str):
        super().__init__()
        self.messages: list[str] = []
        self.waiting_for = waiting_for
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.waiting_for in record.getMessage():
            self.seen.set()


@contextmanager
def notices(waiting_for: str = "waiting for the LiteRT conversion") -> Iterator[Notices]:
    handler = Notices(waiting_for)
    logger = logging.getLogger(logs.NOTICE)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class Converter(threading.Thread):
    """Holds the entry's lock and announces ``expected_s``; stores ``flatbuffer`` (or nothing) on ``finish``."""

    def __init__(self, cache: ConvertedCache, expected_s: float, flatbuffer: bytes | None):
        super().__init__(daemon=True)
        self.cache, self.expected_s, self.flatbuffer = cache, expected_s, flatbuffer
        self.holding, self.finish = threading.Event(), threading.Event()

    def run(self) -> None:
        with (self.cache.locked(URL), self.cache.announced(URL, {"convert": self.expected_s}),
              self.cache.temp_file(URL) as tmp):
            self.holding.set()
            self.finish.wait(60)
            if self.flatbuffer is not None:
                tmp.write_bytes(self.flatbuffer)
                self.cache.store(URL, tmp, {"kind": "conversion"})

    def __enter__(self) -> Converter:
        self.start()
        assert self.holding.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish.set()
        self.join(10)


@pytest.fixture
def no_tensorflow(monkeypatch) -> list[str]:
    """Records a run's TensorFlow loads and detached converters instead of doing them."""
    calls: list[str] = []

    class FakeTensorFlowModel:
        runtime = "tensorflow"
        timings_ms: dict[str, float] = {}

    def tensorflow(spec, prefetcher):
        calls.append("tensorflow")
        return FakeTensorFlowModel()

    monkeypatch.setattr(loader, "_tensorflow", tensorflow)
    monkeypatch.setattr(loader, "_convert_detached", lambda spec, cache: calls.append("converter started"))
    return calls


def load_in_thread(spec: loader.ModelSpec) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["model"] = loader.load(spec)
        except Exception as exc:  # handed to the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_conversion_ending_sooner_than_tensorflow_would_is_waited_for_and_served_on_litert(
        spec, flatbuffer, no_tensorflow, monkeypatch):
    lent: list[int] = []
    monkeypatch.setattr(loader.procs, "lend_priority", lent.append)
    cache = ConvertedCache(spec.cache_dir)
    cache.record_timing("tensorflow_load_s", 30.0)  # what an earlier run's TensorFlow load took here
    with notices() as seen, Converter(cache, expected_s=20.0, flatbuffer=flatbuffer) as converter:
        thread, out = load_in_thread(spec)
        assert seen.seen.wait(30), seen.messages
        assert thread.is_alive()  # waiting on the converter's lock, not loading anything
        converter.finish.set()
        thread.join(30)
    model = out.get("model")
    assert model is not None, out.get("error")
    assert model.runtime == "litert" and "conversion_wait" in model.timings_ms
    assert no_tensorflow == []  # neither TensorFlow nor a second converter
    assert lent == [os.getpid()]  # the converter it waits for no longer runs on idle CPU only
    message = next(m for m in seen.messages if "waiting for the LiteRT conversion" in m)
    assert "started by an earlier run" in message and f"pid {os.getpid()}" in message  # the announced pid
    assert "convert" in message  # the phase it announced
    assert "~20 s" in message or "~19 s" in message  # the work it announced, less the CPU it has used since


def test_a_conversion_ending_later_than_tensorflow_would_is_left_alone_and_tensorflow_answers(
        spec, flatbuffer, no_tensorflow):
    cache = ConvertedCache(spec.cache_dir)
    cache.record_timing("tensorflow_load_s", 4.0)
    with notices("answering on TensorFlow") as seen, Converter(cache, expected_s=600.0, flatbuffer=flatbuffer):
        model = loader.load(spec)
    assert model.runtime == "tensorflow"
    assert no_tensorflow == ["tensorflow"]  # no second converter beside the one under way
    assert any("conversion under way" in m and "~600 s" in m for m in seen.messages), seen.messages


def test_a_conversion_under_way_that_ends_without_a_flatbuffer_leaves_the_run_on_tensorflow(
        spec, no_tensorflow):
    cache = ConvertedCache(spec.cache_dir)
    with notices() as seen, Converter(cache, expected_s=1.0, flatbuffer=None) as converter:
        thread, out = load_in_thread(spec)
        assert seen.seen.wait(30), seen.messages
        converter.finish.set()
        thread.join(30)
    assert getattr(out.get("model"), "runtime", None) == "tensorflow", out
    assert no_tensorflow == ["tensorflow"]
    assert any("ended without a flatbuffer" in m for m in seen.messages)


def test_with_no_conversion_under_way_the_run_starts_one_and_answers_on_tensorflow(spec, no_tensorflow):
    with notices() as seen:
        model = loader.load(spec)
    assert model.runtime == "tensorflow"
    assert no_tensorflow == ["converter started", "tensorflow"]
    assert ConvertedCache(spec.cache_dir).timing("tensorflow_load_s") is not None  # for the next run's choice
    assert not seen.seen.is_set()


def test_the_lock_probe_reports_the_announcement_and_nobody_once_released(tmp_path, flatbuffer):
    cache = ConvertedCache(tmp_path)
    assert cache.under_way(URL) is None
    with Converter(cache, expected_s=12.5, flatbuffer=flatbuffer):
        found = cache.under_way(URL)
        assert found is not None and found.expected_s == {"convert": 12.5} and found.pid == os.getpid()
        assert found.phase == "convert" and found.phase_cpu_s is not None
        assert 0 < found.remaining_s() <= 12.5
        assert found.remaining_s(cpu_now=found.phase_cpu_s + 100) == 0.0
    assert cache.under_way(URL) is None
    assert cache.lookup(URL) is not None and not (cache.entry_dir(URL) / "converting.json").exists()


def test_the_detached_converter_starts_at_once_on_idle_cpu(spec, monkeypatch, tmp_path):
    started: list[list[str]] = []
    monkeypatch.setattr(loader.subprocess, "Popen", lambda command, **kw: started.append(command))
    loader._convert_detached(spec, ConvertedCache(spec.cache_dir))
    (command,) = started
    assert command[1:4] == ["-m", "function.model", URL]
    assert "--idle" in command
    assert command[command.index("--module-from") + 1] == str(os.getpid())  # this run's download is used
    assert Path(command[command.index("--cache-dir") + 1]) == Path(spec.cache_dir)


PHASES = {"import": 4.0, "convert": 2.5, "verify": 1.5}


def test_the_work_left_is_counted_in_the_converters_cpu_seconds_not_in_wall_time():
    under_way = UnderWay(pid=None, started=1000.0, expected_s=PHASES, phase="convert", phase_cpu_s=10.0)
    # 1 s of CPU into a 2.5 s phase, with verify still to come; however long ago it started.
    assert under_way.remaining_s(cpu_now=11.0, now=1000.0) == pytest.approx(3.0)
    assert under_way.remaining_s(cpu_now=11.0, now=1_000_000.0) == pytest.approx(3.0)
    # A phase over its figure counts as done, not as negative work.
    assert under_way.remaining_s(cpu_now=20.0) == pytest.approx(1.5)


def test_a_converter_starved_on_idle_cpu_has_all_its_work_left_and_the_run_answers_on_tensorflow(
        spec, flatbuffer, no_tensorflow, monkeypatch):
    cache = ConvertedCache(spec.cache_dir)
    cache.record_timing("tensorflow_load_s", 6.0)
    # Announced long ago (wall clock), but it has had no CPU since: all 8 s of its work are left.
    starved = UnderWay(pid=12345, started=0.0, expected_s=PHASES, phase="import", phase_cpu_s=0.5)
    monkeypatch.setattr(ConvertedCache, "under_way", lambda self, handle: starved)
    monkeypatch.setattr(loader.procs, "cpu_seconds", lambda pid: 0.5)
    monkeypatch.setattr("function.model.cache.procs.cpu_seconds", lambda pid: 0.5)
    with notices("answering on TensorFlow") as seen:
        model = loader.load(spec)
    assert model.runtime == "tensorflow" and no_tensorflow == ["tensorflow"]
    assert any("~8 s" in m for m in seen.messages), seen.messages


def test_an_announcement_without_phases_is_counted_down_by_the_wall_clock():
    under_way = UnderWay(pid=None, started=100.0, expected_s={"convert": 10.0})
    assert under_way.remaining_s(now=104.0) == pytest.approx(6.0)
    assert UnderWay(pid=None, started=0.0, expected_s={}).remaining_s() is None


def test_a_converter_far_slower_than_it_announced_is_waited_for_only_so_long_then_tensorflow_answers(
        spec, flatbuffer, no_tensorflow, monkeypatch):
    monkeypatch.setattr(loader, "WAIT_SLACK", 0.0)
    monkeypatch.setattr(loader, "WAIT_EXTRA_S", 0.2)  # the bound, whatever the converter announced
    cache = ConvertedCache(spec.cache_dir)
    cache.record_timing("tensorflow_load_s", 30.0)
    with notices("is taking longer than it said") as seen, Converter(cache, expected_s=1.0, flatbuffer=flatbuffer):
        model = loader.load(spec)  # the converter never finishes while this run waits
        assert cache.under_way(URL) is not None  # left to go on, for the next run
    assert model.runtime == "tensorflow" and no_tensorflow == ["tensorflow"]
    assert seen.seen.is_set(), seen.messages
