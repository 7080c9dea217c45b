"""One Service for HTTP callers and Trigger deliveries: CloudEvents and S3/MinIO notifications on /."""

from __future__ import annotations

import json
from urllib.parse import quote

import functions_framework
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from function import app as service
from function.api.events import REPLY_TYPE
from function.core.buckets import FINALIZED, StorageObject, s3_objects
from function.errors import Answer
from function.infra.deliveries import RecentDeliveries, delivery_key
from standin import photos
from tests.support import ROOT

TOKEN = "deliveries-test-token-0123456789"  # every delivery here proves its sender as a MinIO webhook does


@pytest.fixture
def bucket(server, env):
    """The stand-in plays the storage emulator; ``bucket(name, data)`` puts an object in 'birds'."""
    env.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{server.port}")
    env.setenv("S3_ENDPOINT", f"http://127.0.0.1:{server.port}/s3")
    env.setenv("K_SERVICE", "birds-test")
    env.setenv("STORAGE_CREDENTIALS", "anonymous")  # addressing only; credentials: test_buckets.py
    env.setenv("EVENT_TOKENS", TOKEN)  # proofs: test_senders.py

    def put(name: str, data: bytes, content_type: str = "image/jpeg", s3: bool = False) -> None:
        path = (f"/s3/birds/{quote(name)}" if s3 else
                f"/download/storage/v1/b/birds/o/{quote(name, safe='')}")
        server.add(path, data, content_type)

    return put


@pytest.fixture
def client(bucket):
    app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
    assert service.serving().wait_until_ready(120).ready
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"  # on every request: the token proof
    return client


_ids = iter(range(10_000))


def finalized(name: str, content_type: str = "image/jpeg", event_id: str | None = None) -> CloudEvent:
    return CloudEvent({"type": FINALIZED, "source": "//storage.googleapis.com/projects/_/buckets/birds",
                       "subject": f"objects/{name}", "id": event_id or f"evt-{next(_ids)}"},
                      {"bucket": "birds", "name": name, "contentType": content_type, "size": "100"})


@pytest.mark.parametrize("mode", [to_binary, to_structured])
def test_a_delivery_is_answered_with_a_classified_cloudevent(client, bucket, mode):
    bucket("heron.jpg", photos.solid(photos.class_colour(246)))
    headers, body = mode(finalized("heron.jpg"))
    r = client.post("/", headers=headers, data=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    reply = from_http(dict(r.headers), r.get_data())
    assert reply["type"] == REPLY_TYPE
    assert reply["source"] == "/services/birds-test"
    assert reply["subject"] == "objects/heron.jpg"
    assert reply.data["results"][0]["predictions"][0]["id"] == 246
    assert "timings_ms" in reply.data


def test_a_redelivered_event_is_recognised_and_gets_the_same_reply(client, bucket, server):
    bucket("dup.jpg", photos.solid(photos.class_colour(13)))
    event = finalized("dup.jpg", event_id="same-id")
    first = client.post("/", headers=to_binary(event)[0], data=to_binary(event)[1])
    second = client.post("/", headers=to_binary(event)[0], data=to_binary(event)[1])
    assert first.status_code == second.status_code == 200
    assert second.headers["X-Duplicate-Delivery"] == "true"
    assert first.headers["ce-id"] == second.headers["ce-id"]
    assert server.hits["/download/storage/v1/b/birds/o/dup.jpg"] == 1


def test_an_object_that_is_not_an_image_is_a_4xx_so_the_broker_does_not_retry(client, bucket):
    bucket("notes.jpg", b"just text", "image/jpeg")
    for event in (finalized("notes.jpg"), finalized("notes.txt", "text/plain")):
        headers, body = to_binary(event)
        r = client.post("/", headers=headers, data=body)
        assert r.status_code == 422 and r.get_json()["error"]["code"] == "not_an_image"


def test_a_bad_event_is_400(client):
    event = CloudEvent({"type": FINALIZED, "source": "x", "id": "bad-1"}, {"name": "no-bucket.jpg"})
    headers, body = to_binary(event)
    r = client.post("/", headers=headers, data=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_event"


def test_a_malformed_cloudevent_is_400(client):
    r = client.post("/", data=b"{not json", content_type="application/cloudevents+json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_cloudevent"


def test_a_photo_host_that_is_down_is_a_5xx_so_the_broker_retries(client, bucket, server):
    server.add("/download/storage/v1/b/birds/o/busy.jpg", b"try later", "text/plain", status=503)
    headers, body = to_binary(finalized("busy.jpg"))
    r = client.post("/", headers=headers, data=body)
    assert r.status_code == 503 and "Retry-After" in r.headers


MINIO_NOTIFICATION = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "birds/garden/blue+tit.jpg",
    "Records": [
        {"eventName": "s3:ObjectCreated:Put",
         "s3": {"bucket": {"name": "birds"},
                "object": {"key": "garden%2Fblue+tit.jpg", "size": 1234, "contentType": "image/jpeg"}}},
        {"eventName": "s3:ObjectRemoved:Delete",
         "s3": {"bucket": {"name": "birds"}, "object": {"key": "old.jpg"}}},
        {"eventName": "ObjectCreated:Put",
         "s3": {"bucket": {"name": "birds"}, "object": {"key": "readme.txt", "contentType": "text/plain"}}},
    ],
}


def test_an_s3_notification_classifies_the_created_images(client, bucket):
    bucket("garden/blue tit.jpg", photos.solid(photos.class_colour(135)), s3=True)
    r = client.post("/", json=MINIO_NOTIFICATION)
    assert r.status_code == 200, r.get_json()
    (result,) = r.get_json()["results"]
    assert result["url"].endswith("/s3/birds/garden/blue%20tit.jpg")
    assert result["predictions"][0]["id"] == 135


def test_s3_keys_are_url_decoded_and_other_events_left_out():
    objects = s3_objects(MINIO_NOTIFICATION)
    assert [(o.name, o.content_type) for o in objects] == [("garden/blue tit.jpg", "image/jpeg"),
                                                            ("readme.txt", "text/plain")]
    assert objects[0].url(s3_endpoint="http://minio:9000") == "http://minio:9000/birds/garden/blue%20tit.jpg"
    assert StorageObject("b", "k", scheme="s3").url() == "https://b.s3.amazonaws.com/k"


def test_a_malformed_notification_is_400(client):
    r = client.post("/", data=json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}),
                    content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_notification"


def test_a_reused_id_naming_another_object_is_classified_not_answered_from_memory(client, bucket):
    bucket("first.jpg", photos.solid(photos.class_colour(13)))
    bucket("second.jpg", photos.solid(photos.class_colour(246)))
    replies = []
    for name in ("first.jpg", "second.jpg"):
        headers, body = to_binary(finalized(name, event_id="reused-id"))
        replies.append(client.post("/", headers=headers, data=body))
    assert [from_http(dict(r.headers), r.get_data()).data["results"][0]["predictions"][0]["id"]
            for r in replies] == [13, 246]
    assert "X-Duplicate-Delivery" not in replies[1].headers


def test_huge_event_ids_cost_a_digest_not_their_size(client):
    deliveries = service.serving()._deliveries
    for i in range(20):  # each refused with 400 (no bucket): remembered, as a final answer
        event = CloudEvent({"type": FINALIZED, "source": "x", "id": f"{i}-" + "i" * 500_000}, {"name": "x.jpg"})
        headers, body = to_structured(event)
        assert client.post("/", headers=headers, data=body).status_code == 400
    assert len(deliveries) >= 20 and deliveries.bytes < 20 * 2_000  # the answers and 32-byte keys only


def test_the_delivery_memory_is_bounded_in_bytes():
    memory = RecentDeliveries(lambda r: r.status >= 500, max_bytes=10_000, size=lambda r: len(r.body))
    for i in range(100):
        memory.run(delivery_key("s", str(i), b""), lambda: Answer(200, b"x" * 1_000))
    assert memory.bytes <= 10_000 and len(memory) < 10
    assert memory.run(delivery_key("s", "99", b""), lambda: Answer(200, b"new"))[1] is True  # the newest kept
    assert memory.run(delivery_key("s", "0", b""), lambda: Answer(200, b"new"))[1] is False  # the oldest gone


@pytest.mark.parametrize("size", ["1e400", '"12.5"', "12.5", "-1", "true", '"0x10"', '"1' + "0" * 30 + '"'])
def test_a_size_that_is_not_a_whole_number_is_a_4xx_not_a_500(client, server, size):
    body = f'{{"bucket": "birds", "name": "x.jpg", "contentType": "image/jpeg", "size": {size}}}'.encode()
    r = client.post("/", data=body, headers={"ce-specversion": "1.0", "ce-id": f"size-{size}", "ce-source": "x",
                                               "ce-type": FINALIZED, "Content-Type": "application/json"})
    assert r.status_code == 400 and "size" in r.get_json()["error"]["message"]
    records = f'{{"Records": [{{"eventName": "ObjectCreated:Put", "s3": {{"bucket": {{"name": "birds"}}, ' \
              f'"object": {{"key": "x.jpg", "size": {size}}}}}}}]}}'
    r = client.post("/", data=records, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_notification"


@pytest.mark.parametrize("bucket_name, name", [
    ("birds", "../../other-bucket/secret.jpg"), ("birds", "a/../../b.jpg"), ("birds", "a//b.jpg"),
    ("birds", "./x.jpg"), ("birds", "/x.jpg"), ("birds", "x/"), ("..", "x.jpg"), ("a..b", "x.jpg"),
    ("birds/../other", "x.jpg"), ("evil.example#", "x.jpg"), ("birds", "x\r\nHost: evil.jpg"),
])
def test_names_with_dot_or_empty_segments_are_refused_without_a_fetch(client, server, bucket_name, name):
    before = sum(server.hits.values())
    event = CloudEvent({"type": FINALIZED, "source": "x", "id": f"dots-{bucket_name}-{name}".encode().hex()},
                       {"bucket": bucket_name, "name": name, "contentType": "image/jpeg"})
    headers, body = to_binary(event)
    r = client.post("/", headers=headers, data=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_object_name"
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket_name},
                                                       "object": {"key": quote(name)}}}
    r = client.post("/", json={"Records": [record]})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_object_name"
    assert sum(server.hits.values()) == before


@pytest.mark.parametrize("source", [7.185527973767424e16, ["a"], {"b": 1}, None])
def test_a_structured_event_whose_attributes_are_not_strings_is_refused_not_a_500(client, source):
    # Found by the contract fuzzer: a JSON number as `source` reached a log line that measured its length.
    body = json.dumps({"specversion": "1.0", "id": "x1", "source": source,
                       "type": "google.cloud.storage.object.v1.finalized",
                       "data": {"bucket": "birds", "name": "a.jpg"}})
    r = client.post("/", data=body, headers={"Content-Type": "application/cloudevents+json"})
    assert 400 <= r.status_code < 500, r.get_data(as_text=True)


@pytest.mark.parametrize("field", ["specversion", "type", "source", "id"])
def test_a_structured_event_with_a_list_for_an_attribute_is_answered_not_a_crash(client, field):
    # The SDK's parser raised TypeError ("unhashable type") for a list as specversion: a 500 (found by the fuzzer).
    event = {"specversion": "1.0", "type": "google.cloud.storage.object.v1.finalized", "source": "//x",
             "id": "1", "data": {"bucket": "b", "name": "n.jpg"}, field: ["1.0"]}
    r = client.post("/events", data=json.dumps(event), content_type="application/cloudevents+json")
    assert 400 <= r.status_code < 500, r.get_data(as_text=True)
    if field == "specversion":
        assert r.get_json()["error"]["code"] == "invalid_cloudevent"
