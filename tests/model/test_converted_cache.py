"""The converted-model cache: verified by sha256, written atomically, one conversion across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from function.errors import ConversionError, ModelCacheError
from function.model import convert, handles
from function.model.cache import ConvertedCache, fetch_tflite, file_sha256
from function.model.convert import cached
from standin import hubmodel, photos

ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = "/google/aiy/vision/classifier/birds_V1/1"  # the frozen colour model, served by tests/conftest.py


def python(code: str, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, cwd=ROOT)


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    return out


@pytest.fixture
def cache(tmp_path) -> ConvertedCache:
    return ConvertedCache(tmp_path / "cache")


@pytest.fixture
def handle(server) -> str:
    return server.url(MODULE_PATH)


def test_a_conversion_is_stored_with_a_manifest_that_describes_it(cache, handle):
    path = cached(cache, handle)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert path == cache.root / handles.key(handle) / "model.tflite"
    assert manifest["source"] == handle
    assert manifest["sha256"] == file_sha256(path) and manifest["size"] == path.stat().st_size
    assert manifest["max_abs_diff"] <= 1e-5
    assert (manifest["signature"], manifest["input_name"], manifest["output_name"]) == ("default", "images",
                                                                                        "default")
    assert manifest["tensorflow_version"] and manifest["converter"].startswith("tensorflow ")
    assert manifest["created"].endswith("Z")
    assert sorted(p.name for p in path.parent.iterdir()) == ["lock", "manifest.json", "model.tflite"]


def test_a_second_process_loads_the_cached_flatbuffer_without_importing_tensorflow(cache, handle):
    cached(cache, handle)
    out = finish(python(f"""
        import sys
        import numpy as np
        from function.model.cache import ConvertedCache
        from function.model.litert import LiteRTModel
        path = ConvertedCache({str(cache.root.parent)!r}).lookup({handle!r})
        assert path is not None, "cache miss"
        model = LiteRTModel(path)
        batch = np.zeros((2, 224, 224, 3), np.uint8)
        batch[1] = 255
        print(model.predict(batch).argmax(axis=1).tolist())
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
    """))
    ranked = [hubmodel.expected_ranking(c)[0] for c in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))]
    assert out.strip() == str(ranked)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda data: data[:-1000], "truncated"),
    (lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], "sha256"),
])
def test_a_damaged_cached_file_is_a_miss_removed_and_rebuilt(cache, handle, damage, reason):
    path = cached(cache, handle)
    good = path.read_bytes()
    path.write_bytes(damage(good))
    assert cache.lookup(handle) is None
    assert reason in (cache.last_miss or "")
    assert not path.exists() and not (path.parent / "manifest.json").exists()
    rebuilt = cached(cache, handle)
    assert rebuilt.read_bytes() == good and cache.lookup(handle) == rebuilt


def test_a_cached_file_without_its_manifest_is_not_trusted(cache, handle):
    path = cached(cache, handle)
    (path.parent / "manifest.json").unlink()
    assert cache.lookup(handle) is None
    assert not path.exists()


def test_a_conversion_that_fails_midway_leaves_no_file_behind(cache, handle, monkeypatch):
    def crash(source, out_path, quiet=True, on_phase=None, **_):
        Path(out_path).write_bytes(b"half a flatbuffer")
        raise ConversionError("the converter crashed")

    monkeypatch.setattr(convert, "convert", crash)
    with pytest.raises(ConversionError, match="crashed"):
        cached(cache, handle)
    entry = cache.entry_dir(handle)
    assert sorted(p.name for p in entry.iterdir()) == ["lock"]
    assert cache.lookup(handle) is None


def test_two_processes_converting_at_once_convert_once_and_leave_one_good_file(server, tmp_path, model_tarball):
    handle = server.add("/models/colour-race/1", model_tarball, "application/x-tar")
    cache_dir = tmp_path / "cache"
    code = f"""
        from function.model.cache import ConvertedCache
        from function.model.convert import cached
        print(cached(ConvertedCache({str(cache_dir)!r}), {handle!r}))
    """
    # Each with its own TF Hub cache: a module download means that process converted.
    processes = [python(code, TFHUB_CACHE_DIR=str(tmp_path / f"hub-{i}")) for i in range(2)]
    outputs = [finish(p).strip() for p in processes]
    cache = ConvertedCache(cache_dir)
    assert outputs[0] == outputs[1] == str(cache.model_path(handle))
    assert server.hits["/models/colour-race/1"] == 1
    assert sorted(p.name for p in cache.entry_dir(handle).iterdir()) == ["lock", "manifest.json", "model.tflite"]
    assert cache.lookup(handle) is not None
    # The converter's CPU seconds per phase, for the next announcement (the process imported TensorFlow itself).
    assert all((cache.timing(f"conversion_{phase}_cpu_s") or 0) > 0 for phase in ("import", "convert", "verify"))


def test_a_converter_announces_each_phase_with_its_cpu_time_and_the_work_each_should_take(cache, handle,
                                                                                         monkeypatch):
    seen = []
    cache.record_timing("conversion_convert_cpu_s", 7.5)  # an earlier conversion's figure replaces the default

    def fake(source, out_path, quiet=True, on_phase=None, **_):
        for phase in ("import", "convert", "verify"):
            on_phase(phase)
            seen.append(cache.under_way(handle))
        Path(out_path).write_bytes(b"flatbuffer")
        raise ConversionError("stop here")

    monkeypatch.setattr(convert, "convert", fake)
    with pytest.raises(ConversionError):
        cached(cache, handle)
    assert [u.phase for u in seen] == ["import", "convert", "verify"]
    assert all(u.pid == os.getpid() and u.phase_cpu_s is not None for u in seen)
    assert list(seen[0].expected_s) == ["import", "convert", "verify"]
    assert seen[0].expected_s["convert"] == 7.5
    assert seen[0].expected_s["import"] == convert.DEFAULT_PHASE_CPU_S["import"]
    assert cache.under_way(handle) is None and not (cache.entry_dir(handle) / "converting.json").exists()


def test_a_tflite_url_is_downloaded_once_verified_and_downloaded_again_if_damaged(server, tmp_path):
    data = hubmodel.colour_tflite(tmp_path / "colour.tflite").read_bytes()
    url = server.add("/models/colour-download.tflite", data)
    first = fetch_tflite(url, tmp_path / "cache")
    assert fetch_tflite(url, tmp_path / "cache") == first
    assert first.read_bytes() == data and server.hits["/models/colour-download.tflite"] == 1
    manifest = json.loads((first.parent / "manifest.json").read_text())
    assert (manifest["kind"], manifest["source"], manifest["size"]) == ("download", url, len(data))
    first.write_bytes(data[:-10])
    assert fetch_tflite(url, tmp_path / "cache").read_bytes() == data
    assert server.hits["/models/colour-download.tflite"] == 2


def test_a_failed_download_raises_and_caches_nothing(server, tmp_path):
    url = server.url("/models/missing.tflite")
    with pytest.raises(ModelCacheError, match="missing.tflite"):
        fetch_tflite(url, tmp_path / "cache")
    cache = ConvertedCache(tmp_path / "cache")
    assert cache.lookup(url) is None
    assert sorted(p.name for p in cache.entry_dir(url).iterdir()) == ["lock"]


def test_lookup_never_imports_tensorflow(tmp_path):
    out = finish(python(f"""
        import sys
        from function.model.cache import ConvertedCache, fetch_tflite
        from function.model.handles import is_tflite
        print(ConvertedCache({str(tmp_path)!r}).lookup("https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1"))
        print("tensorflow" in sys.modules)
    """))
    assert out.split() == ["None", "False"]


def test_the_converted_model_scores_like_the_colour_model(cache, handle):
    from function.model.litert import LiteRTModel

    batch = np.zeros((3, 224, 224, 3), np.uint8)
    for i, k in enumerate([5, 350, 963]):
        batch[i] = photos.class_colour(k)
    assert LiteRTModel(cached(cache, handle)).predict(batch).argmax(axis=1).tolist() == [5, 350, 963]


def test_a_file_written_in_place_is_readable_by_other_users(tmp_path):
    """The image's build (root) writes the model that its service user (uid 10001) reads."""
    from function.model.cache import write_atomic

    target = tmp_path / "model.tflite"
    write_atomic(target, b"flatbuffer")
    assert target.read_bytes() == b"flatbuffer"
    assert target.stat().st_mode & 0o044 == 0o044
    converted_cache, handle = ConvertedCache(tmp_path / "cache"), "https://example.test/model"
    converted_cache.entry_dir(handle).mkdir(parents=True)
    with converted_cache.temp_file(handle) as converted:
        assert converted.stat().st_mode & 0o044 == 0o044  # the converted model's file, before it is stored
