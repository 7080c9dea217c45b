"""The CloudEvent target: storage-bucket events, in binary and structured mode."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import functions_framework
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from function import app as service
from function.core.buckets import FINALIZED, StorageObject, storage_object
from function.errors import EventError
from standin import photos
from tests.support import ROOT


@pytest.fixture
def emulator(server, env):
    """Point the function at the stand-in as a storage emulator; returns a 'put object' helper.

    These events carry no proof of their sender: the route is declared trusted (``EVENT_AUTH=none``),
    as for a cluster-local Service; what proofs the target takes is tests/api/test_senders.py's.
    """
    env.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{server.port}")
    env.setenv("EVENT_AUTH", "none")

    def put(bucket: str, name: str, data: bytes, content_type: str = "image/jpeg") -> None:
        server.add(f"/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}", data, content_type)

    return put


@pytest.fixture
def client(emulator):
    app = functions_framework.create_app(target="classify_event", source=str(ROOT / "main.py"),
                                         signature_type="cloudevent")
    return app.test_client()


def finalized(bucket: str, name: str, content_type: str = "image/jpeg", size: object = "1234", **extra):
    attributes = {"type": FINALIZED, "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
                  "subject": f"objects/{name}"}
    data = {"bucket": bucket, "name": name, "contentType": content_type, "size": size, **extra}
    return CloudEvent(attributes, data)


def post(client, event, mode: str):
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return client.post("/", headers=headers, data=body)


def records(caplog, message: str):
    return [r for r in caplog.records if message in r.getMessage()]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_finalized_photo_is_classified_and_logged(client, emulator, caplog, mode):
    emulator("birds", "uploads/2026/robin 1.jpg", photos.solid(photos.class_colour(321)))
    caplog.set_level(logging.INFO, logger="function")
    r = post(client, finalized("birds", "uploads/2026/robin 1.jpg"), mode)
    assert r.status_code == 200
    assert service.serving()._model.get().runtime == "litert"  # the CloudEvent target serves on LiteRT
    (rec,) = records(caplog, "classified gs://birds/uploads/2026/robin 1.jpg")
    assert rec.fields["bucket"] == "birds" and rec.fields["object"] == "uploads/2026/robin 1.jpg"
    assert rec.fields["predictions"][0]["id"] == 321
    assert len(rec.fields["predictions"]) == 3 and all("label" in p and "score" in p for p in rec.fields["predictions"])


def test_size_may_be_a_number(client, emulator, caplog):
    emulator("b", "x.png", photos.solid(photos.class_colour(5), fmt="PNG"), "image/png")
    caplog.set_level(logging.INFO, logger="function")
    assert post(client, finalized("b", "x.png", "image/png", size=2048), "binary").status_code == 200
    assert records(caplog, "classified gs://b/x.png")


def test_an_object_that_is_not_an_image_by_content_type_is_skipped(client, emulator, caplog):
    caplog.set_level(logging.INFO, logger="function")
    r = post(client, finalized("b", "notes.txt", "text/plain"), "binary")
    assert r.status_code == 200
    (rec,) = records(caplog, "skipped gs://b/notes.txt")
    assert rec.levelno == logging.INFO


def test_an_object_that_is_not_an_image_by_content_is_skipped(client, emulator, caplog):
    emulator("b", "fake.jpg", b"%PDF-1.4 not a photo", "image/jpeg")
    caplog.set_level(logging.INFO, logger="function")
    assert post(client, finalized("b", "fake.jpg"), "structured").status_code == 200
    (rec,) = records(caplog, "skipped gs://b/fake.jpg")
    assert rec.levelno == logging.INFO


def test_a_missing_object_fails_without_retry(client, emulator, caplog):
    caplog.set_level(logging.INFO, logger="function")
    assert post(client, finalized("b", "gone.jpg"), "binary").status_code == 200
    assert records(caplog, "could not classify gs://b/gone.jpg")


def test_other_event_types_are_ignored(client, caplog):
    caplog.set_level(logging.INFO, logger="function")
    event = CloudEvent({"type": "google.cloud.storage.object.v1.deleted", "source": "//storage"},
                       {"bucket": "b", "name": "x.jpg"})
    assert post(client, event, "binary").status_code == 200
    assert records(caplog, "event ignored")


def test_object_url_quotes_the_name():
    obj = StorageObject("my-bucket", "a b/ü#1.jpg")
    assert obj.url() == "https://storage.googleapis.com/my-bucket/a%20b/%C3%BC%231.jpg"
    assert obj.url("localhost:9023") == (
        "http://localhost:9023/download/storage/v1/b/my-bucket/o/a%20b%2F%C3%BC%231.jpg?alt=media")
    assert obj.url("https://gcs.local/").startswith("https://gcs.local/download/storage/v1/b/")


@pytest.mark.parametrize("data, why", [
    ({"name": "x.jpg"}, "bucket"),
    ({"bucket": "b"}, "name"),
    ({"bucket": "b", "name": "x", "size": "big"}, "size"),
    ({"bucket": "b", "name": "x", "size": float("inf")}, "size"),
    ({"bucket": "b", "name": "x", "size": 12.5}, "size"),
    ({"bucket": "b", "name": "x", "size": True}, "size"),
    ({"bucket": "b", "name": "a/../x.jpg"}, "segment"),
    ({"bucket": "b/..", "name": "x.jpg"}, "bucket"),
    ("not json", "JSON"),
    ([1, 2], "object"),
])
def test_bad_event_data_is_an_event_error(data, why):
    with pytest.raises(EventError, match=why):
        storage_object(FINALIZED, data if not isinstance(data, str) else data.encode())


def test_a_size_of_1e400_is_an_event_error_not_an_overflow():
    with pytest.raises(EventError, match="size"):
        storage_object(FINALIZED, b'{"bucket": "b", "name": "x.jpg", "size": 1e400}')


def test_a_size_of_1e400_is_acknowledged_by_the_cloudevent_target(client, caplog):
    caplog.set_level(logging.INFO, logger="function")
    body = b'{"bucket": "b", "name": "x.jpg", "contentType": "image/jpeg", "size": 1e400}'
    r = client.post("/", data=body, headers={"ce-specversion": "1.0", "ce-id": "1", "ce-source": "x",
                                              "ce-type": FINALIZED, "Content-Type": "application/json"})
    assert r.status_code == 200 and records(caplog, "event ignored")


def test_event_data_may_arrive_as_json_bytes():
    obj = storage_object(FINALIZED, json.dumps({"bucket": "b", "name": "n", "size": "7"}).encode())
    assert obj == StorageObject("b", "n", None, 7)
