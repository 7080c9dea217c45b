"""Results written back where people find them, against real third-party stores on 127.0.0.1.

* moto's S3 server with IAM authentication on (``/moto-api/reset-auth``): every write must carry a
  valid SigV4 signature of a key whose IAM user is allowed ``s3:PutObject`` on the results prefix.
* gcp-storage-emulator for Cloud Storage: documents uploaded through the JSON API, metadata patched.
* A stand-in Knative sink (``K_SINK``) that records the CloudEvents it is sent, or refuses them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from function.config import Config, ConfigError
from function.core import records
from function.core.buckets import FINALIZED, StorageObject
from function.errors import ResultNotWritten
from function.infra.stores import Outbox
from harness import free_port
from standin import photos
from tests.api import stores
from tests.api.stores import HERON, KEY, ROBIN
from tests.api.writes import StandInSink, check_record, event_client, http_client, no_host_credentials

pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-test.txt)")
boto3 = pytest.importorskip("boto3", reason="boto3 (moto's dependency) is not installed")
pytest.importorskip("gcp_storage_emulator.server",
                    reason="gcp-storage-emulator is not installed (requirements-test.txt)")
pytest.importorskip("botocore", reason="botocore is not installed (requirements.txt)")

RESULTS = "s3://results/out/"


# -- S3: moto's server, authentication enforced -----------------------------------------------------------

@pytest.fixture(scope="module")
def moto() -> Iterator[dict]:
    """moto's S3 + IAM: a private bucket of photos, an empty results bucket, and three IAM users --
    'classifier' (reads photos, writes results, tags photos), 'reader' (reads only), 'auditor' (all)."""
    policies = {
        "classifier": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectTagging", "s3:PutObjectTagging"],
                        "Resource": "arn:aws:s3:::birds/*"},
                       {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::results/out/*"}],
        "reader": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::birds/*"}],
        "auditor": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}],
    }
    with stores.moto_with_auth({}, policies, buckets=("birds", "results")) as moto:
        key_id, secret = moto["keys"]["auditor"]
        auditor = {**moto["client_kwargs"], "aws_access_key_id": key_id, "aws_secret_access_key": secret}
        yield {**moto, "s3": boto3.client("s3", **auditor), "iam": boto3.client("iam", **auditor)}


@pytest.fixture
def s3(env, moto, tmp_path):
    """Fresh photos, an empty results bucket, the service reading and writing as 'classifier'."""
    client = moto["s3"]
    for obj in client.list_objects_v2(Bucket="results").get("Contents", []):
        client.delete_object(Bucket="results", Key=obj["Key"])
    for name, class_id in ((KEY, ROBIN), ("heron.jpg", HERON)):
        client.put_object(Bucket="birds", Key=name, Body=photos.solid(photos.class_colour(class_id)),
                          ContentType="image/jpeg")
        client.delete_object_tagging(Bucket="birds", Key=name)
    no_host_credentials(env, tmp_path)
    env.setenv("S3_ENDPOINT", moto["endpoint"])
    env.setenv("RESULTS_URL", RESULTS)
    use_key(env, *moto["keys"]["classifier"])
    return client


def use_key(env, key_id: str, secret: str) -> None:
    env.setenv("AWS_ACCESS_KEY_ID", key_id)
    env.setenv("AWS_SECRET_ACCESS_KEY", secret)


def s3_record(key: str, bucket: str = "birds", etag: str = "0123abcd") -> dict:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": quote(key).replace("%20", "+"), "size": 1234, "eTag": etag}}}


def stored(client, bucket: str = "results") -> dict[str, dict]:
    """Every result document in the bucket, by key."""
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys}


def test_each_classified_s3_object_gets_one_document_at_the_prefix_bucket_and_name(s3, moto):
    r = http_client().post("/", json={"Records": [s3_record(KEY, etag="e1"), s3_record("heron.jpg", etag="e2")]})
    assert r.status_code == 200, r.get_data(as_text=True)
    docs = stored(s3)
    assert set(docs) == {f"out/birds/{KEY}.json", "out/birds/heron.jpg.json"}
    doc = docs[f"out/birds/{KEY}.json"]
    assert doc["results"] == [r.get_json()["results"][0]]  # the HTTP API's entry, as it is
    assert doc["results"][0]["predictions"][0]["id"] == ROBIN
    assert (doc["bucket"], doc["object"], doc["etag"], doc["generation"]) == ("birds", KEY, "e1", None)
    assert doc["model"] == os.environ["MODEL_URL"]
    assert abs((datetime.now(UTC) - datetime.fromisoformat(doc["classified_at"])).total_seconds()) < 120
    assert docs["out/birds/heron.jpg.json"]["results"][0]["predictions"][0]["id"] == HERON
    for each in docs.values():
        check_record(each)
    head = s3.head_object(Bucket="results", Key="out/birds/heron.jpg.json")
    assert head["ContentType"] == "application/json"  # a notification of the results bucket skips it unread


def test_a_redelivery_overwrites_the_document(s3):
    client = http_client()
    assert client.post("/", json={"Records": [s3_record(KEY)]}).status_code == 200
    s3.put_object(Bucket="birds", Key=KEY, Body=photos.solid(photos.class_colour(HERON)), ContentType="image/jpeg")
    assert client.post("/", json={"Records": [s3_record(KEY)]}).status_code == 200
    (doc,) = stored(s3).values()
    assert doc["results"][0]["predictions"][0]["id"] == HERON


def test_a_refused_delivery_writes_nothing(s3):
    r = http_client().post("/", json={"Records": [s3_record("a/../heron.jpg")]})
    assert r.status_code == 400
    assert stored(s3) == {}


@pytest.mark.parametrize("proof", [None, "Bearer not-the-token-0000000000000000"])
def test_a_delivery_that_does_not_prove_its_sender_writes_nothing(s3, env, proof):
    # Proofs on (the default outside these tests): a forged notification is refused before anything is read,
    # so nothing is written either; the same body with the token is classified and written.
    token = "results-test-token-0123456789abcd"
    env.setenv("EVENT_AUTH", "token")
    env.setenv("EVENT_TOKENS", token)
    client = http_client()
    r = client.post("/events", json={"Records": [s3_record(KEY)]}, headers={"Authorization": proof} if proof else {})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "sender_unproven"
    assert stored(s3) == {}
    r = client.post("/events", json={"Records": [s3_record(KEY)]}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert set(stored(s3)) == {f"out/birds/{KEY}.json"}


def test_a_photo_that_failed_for_good_gets_a_document_saying_why(s3, env):
    env.setenv("MAX_PHOTO_BYTES", "100")  # the photos are bigger: too_large, whoever delivers it again
    r = http_client().post("/", json={"Records": [s3_record("heron.jpg")]})
    assert r.status_code == 200
    (doc,) = stored(s3).values()
    assert doc["results"][0]["error"]["code"] == "too_large" and doc["results"][0]["predictions"] == []
    check_record(doc)


def test_a_photo_a_redelivery_may_read_gets_no_document_and_the_delivery_fails(s3, env):
    env.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens: a read that may work later
    message = {"message": {"data": base64.b64encode(json.dumps({"bucket": "birds", "name": "heron.jpg",
                                                                "contentType": "image/jpeg"}).encode()).decode(),
                           "attributes": {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1"}},
               "subscription": "projects/p/subscriptions/s"}
    headers, body = to_binary(CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished",
                                          "source": "//pubsub.googleapis.com/projects/p/topics/t"}, message))
    r = http_client().post("/", headers=headers, data=body)
    assert r.status_code == 503, r.get_data(as_text=True)
    assert stored(s3) == {}


def test_a_plain_push_body_naming_an_object_a_redelivery_may_read_fails_when_results_are_kept(s3, env):
    env.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens
    message = {"message": {"data": "", "attributes": {"eventType": "OBJECT_FINALIZE", "payloadFormat": "NONE",
                                                      "bucketId": "birds", "objectId": "heron.jpg"}},
               "subscription": "projects/p/subscriptions/s"}
    r = http_client().post("/", json=message)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "object_unavailable"
    assert stored(s3) == {}


def test_a_store_that_refuses_writes_fails_the_delivery_and_the_redelivery_succeeds(s3, moto, env):
    reader_id, reader_secret = moto["keys"]["reader"]
    use_key(env, reader_id, reader_secret)
    client = http_client()
    body = json.dumps({"Records": [s3_record("heron.jpg")]})
    r = client.post("/", data=body, content_type="application/json")
    assert r.status_code == 503 and "Retry-After" in r.headers, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["code"] == "result_not_written"
    assert "s3:PutObject" in err["message"] and f"access key {reader_id[:8]}" in err["message"]
    assert reader_secret not in r.get_data(as_text=True)
    assert stored(s3) == {}
    with allowed_to_write(moto, "reader"):
        r = client.post("/", data=body, content_type="application/json")  # the platform delivers it again
        assert r.status_code == 200, r.get_data(as_text=True)
    assert list(stored(s3)) == ["out/birds/heron.jpg.json"]


@contextlib.contextmanager
def allowed_to_write(moto, user: str) -> Iterator[None]:
    moto["iam"].put_user_policy(UserName=user, PolicyName="write-results", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::results/out/*"}]}))
    try:
        yield
    finally:
        moto["iam"].delete_user_policy(UserName=user, PolicyName="write-results")


def test_an_sns_delivery_whose_write_failed_is_done_again_not_answered_from_memory(s3, moto, env):
    use_key(env, *moto["keys"]["reader"])
    client = http_client()
    envelope = json.dumps({"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:1:uploads",
                           "Message": json.dumps({"Records": [s3_record("heron.jpg")]})})
    headers = {"x-amz-sns-message-type": "Notification", "Content-Type": "text/plain"}
    assert client.post("/", headers=headers, data=envelope).status_code == 503
    with allowed_to_write(moto, "reader"):
        r = client.post("/", headers=headers, data=envelope)
    assert r.status_code == 200 and "X-Duplicate-Delivery" not in r.headers
    assert list(stored(s3)) == ["out/birds/heron.jpg.json"]


def test_results_metadata_tags_the_s3_photo_and_keeps_its_own_tags(s3, env):
    env.setenv("RESULTS_METADATA", "true")
    s3.put_object_tagging(Bucket="birds", Key="heron.jpg",
                          Tagging={"TagSet": [{"Key": "camera", "Value": "hide 3"}]})
    assert http_client().post("/", json={"Records": [s3_record("heron.jpg")]}).status_code == 200
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="birds", Key="heron.jpg")["TagSet"]}
    doc = stored(s3)["out/birds/heron.jpg.json"]
    best = doc["results"][0]["predictions"][0]
    assert tags["camera"] == "hide 3"
    assert tags["bird-score"] == f"{best['score']:.3f}"
    assert tags["bird-label"] == best["label"].replace("'", "_")


# -- K_SINK: a stand-in sink --------------------------------------------------------------------------

def test_each_classified_object_is_sent_to_k_sink_as_a_cloudevent(s3, env):
    with StandInSink() as sink:
        env.setenv("K_SINK", sink.url)
        env.setenv("K_CE_OVERRIDES", json.dumps({"extensions": {"team": "birds"}}))
        client = http_client()
        records_body = {"Records": [s3_record(KEY, etag="e1"), s3_record("heron.jpg", etag="e2")]}
        assert client.post("/", json=records_body).status_code == 200
        assert client.post("/", json=records_body).status_code == 200  # a redelivery: the same ids again
    assert len(sink.received) == 4
    by_subject = {e.headers["ce-subject"]: e for e in sink.received[:2]}
    event = by_subject[f"objects/{KEY}"]
    assert event.headers["ce-type"] == records.EVENT_TYPE == "dev.birdclassifier.birds.classified"
    assert event.headers["ce-specversion"] == "1.0" and event.headers["ce-team"] == "birds"
    assert event.headers["content-type"] == "application/json"
    assert event.data == stored(s3)[f"out/birds/{KEY}.json"] | {"classified_at": event.data["classified_at"]}
    assert event.data["results"][0]["predictions"][0]["id"] == ROBIN
    check_record(event.data)
    assert sorted(e.headers["ce-id"] for e in sink.received[:2]) == sorted(e.headers["ce-id"]
                                                                           for e in sink.received[2:])


def test_the_reply_type_of_a_broker_delivery_is_the_sinks_event_type():
    from function.api import events

    assert events.REPLY_TYPE == records.EVENT_TYPE


def test_a_sink_that_fails_twice_gets_the_event_on_the_third_try(env, tmp_path, gcs):
    no_host_credentials(env, tmp_path)
    env.setenv("STORAGE_EMULATOR_HOST", gcs)
    with StandInSink(status=lambda n: 503 if n < 2 else 202) as sink:
        env.setenv("K_SINK", sink.url)
        r = http_client().post("/", json=pubsub_push("heron.jpg"))
        assert r.status_code == 200, r.get_data(as_text=True)
    assert sink.attempts == 3 and len(sink.received) == 1


def test_a_sink_that_keeps_failing_fails_the_delivery_and_the_redelivery_succeeds(env, tmp_path, gcs):
    no_host_credentials(env, tmp_path)
    env.setenv("STORAGE_EMULATOR_HOST", gcs)
    env.setenv("RESULTS_RETRIES", "1")
    down = True
    with StandInSink(status=lambda n: 500 if down else 202) as sink:
        env.setenv("K_SINK", sink.url)
        client = http_client()
        r = client.post("/", json=pubsub_push("heron.jpg"))
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "result_not_written"
        assert "K_SINK" in r.get_json()["error"]["message"] and sink.received == []
        down = False
        assert client.post("/", json=pubsub_push("heron.jpg")).status_code == 200
    assert len(sink.received) == 1


def test_a_sink_that_never_answers_fails_the_delivery_in_bounded_time(env, tmp_path, gcs):
    import socket

    no_host_credentials(env, tmp_path)
    env.setenv("STORAGE_EMULATOR_HOST", gcs)
    env.setenv("RESULTS_TIMEOUT_S", "1")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog) and never answers
        env.setenv("K_SINK", f"http://127.0.0.1:{silent.getsockname()[1]}/")
        client = http_client()
        started = time.monotonic()
        r = client.post("/", json=pubsub_push("heron.jpg"))
        assert r.status_code == 503 and time.monotonic() - started < 5


# -- Cloud Storage: gcp-storage-emulator -------------------------------------------------------------------

@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    """gcp-storage-emulator in memory: bucket 'birds' with two photos, an empty bucket 'results'."""
    with stores.gcs_emulator() as base:
        requests.post(f"{base}/storage/v1/b", params={"project": "p"}, json={"name": "results"},
                      timeout=10).raise_for_status()
        yield base


@pytest.fixture
def gcs_env(env, gcs, tmp_path):
    no_host_credentials(env, tmp_path)
    env.setenv("STORAGE_EMULATOR_HOST", gcs)
    env.setenv("RESULTS_URL", "gs://results/classified/")
    return env


def gcs_documents(base: str) -> dict[str, dict]:
    listing = requests.get(f"{base}/storage/v1/b/results/o", timeout=10).json().get("items", [])
    out = {}
    for item in listing:
        r = requests.get(f"{base}/download/storage/v1/b/results/o/{quote(item['name'], safe='')}",
                         params={"alt": "media"}, timeout=10)
        out[item["name"]] = json.loads(r.content)
        requests.delete(f"{base}/storage/v1/b/results/o/{quote(item['name'], safe='')}", timeout=10)
    return out


def object_resource(name: str, generation: str = "1") -> dict:
    return {"kind": "storage#object", "name": name, "bucket": "birds", "generation": generation,
            "contentType": "image/jpeg", "size": "1234"}


def pubsub_push(name: str) -> dict:
    data = base64.b64encode(json.dumps(object_resource(name)).encode()).decode()
    return {"message": {"data": data, "messageId": "1", "attributes": {
        "bucketId": "birds", "objectId": name, "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1"}},
            "subscription": "projects/p/subscriptions/bird-uploads-push"}


def test_an_eventarc_event_writes_the_document_to_the_emulator(gcs_env, gcs):
    gcs_documents(gcs)
    event = CloudEvent({"type": FINALIZED, "source": "//storage.googleapis.com/projects/_/buckets/birds",
                        "subject": f"objects/{KEY}"}, object_resource(KEY, generation="1700000000000001"))
    headers, body = to_binary(event)
    assert event_client().post("/", headers=headers, data=body).status_code == 200
    docs = gcs_documents(gcs)
    assert list(docs) == [f"classified/birds/{KEY}.json"]
    doc = docs[f"classified/birds/{KEY}.json"]
    assert doc["results"][0]["predictions"][0]["id"] == ROBIN
    assert (doc["bucket"], doc["object"], doc["generation"], doc["etag"]) == ("birds", KEY, "1700000000000001", None)
    check_record(doc)


def test_a_pubsub_push_writes_the_document_and_labels_the_photo(gcs_env, gcs):
    gcs_env.setenv("RESULTS_METADATA", "true")
    gcs_documents(gcs)
    assert http_client().post("/", json=pubsub_push("heron.jpg")).status_code == 200
    (doc,) = gcs_documents(gcs).values()
    best = doc["results"][0]["predictions"][0]
    assert best["id"] == HERON
    resource = requests.get(f"{gcs}/storage/v1/b/birds/o/heron.jpg", timeout=10).json()
    assert resource["metadata"] == {"bird-label": best["label"], "bird-score": f"{best['score']:.3f}"}


def test_the_event_target_fails_when_the_write_fails(gcs_env, gcs):
    gcs_env.setenv("RESULTS_URL", "gs://no-such-bucket/x/")  # the emulator answers 404
    headers, body = to_binary(CloudEvent({"type": FINALIZED, "source": "//storage.googleapis.com/b"},
                                         object_resource("heron.jpg")))
    assert event_client().post("/", headers=headers, data=body).status_code >= 500


# -- the parts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["http://bucket/x", "gs://", "gs://Upper/x", "s3://b../x", "gs://bucket/a//b/",
                                   "gs://bucket/../x/", "gs://bucket/x?y=1", "gs://bucket/" + "p/" * 200])
def test_a_results_url_that_names_no_one_folder_is_refused(value):
    with pytest.raises(ConfigError, match="RESULTS_URL"):
        Config.from_env({"RESULTS_URL": value})


def test_the_prefix_is_a_folder_whether_or_not_it_ends_in_a_slash():
    for value in ("gs://results/out", "gs://results/out/"):
        assert Config.from_env({"RESULTS_URL": value}).results_location().prefix == "out/"
    assert Config.from_env({"RESULTS_URL": "s3://results"}).results_location().prefix == ""


@pytest.mark.parametrize("env, match", [({"K_SINK": "broker:80"}, "K_SINK"),
                                        ({"K_CE_OVERRIDES": "{\"extensions\": {\"Bad-Name\": \"x\"}}"},
                                         "K_CE_OVERRIDES"),
                                        ({"RESULTS_METADATA": "true"}, "RESULTS_METADATA"),
                                        ({"RESULTS_PENDING": "0", "RESULTS_URL": RESULTS}, "RESULTS_PENDING")])
def test_result_settings_are_validated(env, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_env(env)


def test_a_key_is_under_the_prefix_and_one_per_object_even_when_the_name_is_long():
    location = Config.from_env({"RESULTS_URL": "gs://results/out/"}).results_location()
    assert records.key(location, StorageObject("birds", "a/b c.jpg")) == "out/birds/a/b c.jpg.json"
    long_a, long_b = "x/" * 508 + "a.jpg", "x/" * 508 + "b.jpg"  # 1021 bytes: a name may, a key may not
    key_a, key_b = (records.key(location, StorageObject("birds", n)) for n in (long_a, long_b))
    assert key_a.startswith("out/birds/.long/") and key_a != key_b and len(key_a.encode()) <= 1024


def test_the_outbox_refuses_past_its_bound_at_once():
    import threading

    release = threading.Event()
    outbox = Outbox(workers=1, limit=2)
    try:
        first, second = outbox.submit(release.wait), outbox.submit(release.wait)
        started = time.monotonic()
        with pytest.raises(ResultNotWritten, match="RESULTS_PENDING"):
            outbox.submit(release.wait)
        assert time.monotonic() - started < 1
        release.set()
        first.result(5), second.result(5)
        assert outbox.submit(lambda: 7).result(5) == 7
    finally:
        release.set()
        outbox.stop()


class RecordingSender:
    """Stands in for the Sender: records where each request would go."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def send(self, method: str, url: str, what: str, **kwargs) -> bytes:
        self.urls.append(url)
        return b"<Tagging><TagSet/></Tagging>"


@pytest.mark.parametrize("region", ["x.attacker.example#", "eu-west-1.attacker.example/", "../../", ""])
def test_a_region_from_an_event_cannot_move_a_write_off_the_store(region):
    from urllib.parse import urlsplit

    from function.infra.stores import S3Store

    sender = RecordingSender()
    S3Store(sender, None, None).label("birds", "garden/robin.jpg", {"bird-label": "x"}, region)
    assert [urlsplit(u).hostname for u in sender.urls] == ["birds.s3.us-east-1.amazonaws.com"] * 2


# -- Cloud Storage behind ADC: the write carries the token ADC got from a stand-in metadata server ------

TOKEN = "ya29.stand-in-write-token-that-must-never-be-logged"


@pytest.fixture
def metadata(monkeypatch) -> Iterator[str]:
    """GCE's metadata server, as far as ADC uses it; its host, as GCE_METADATA_HOST names it."""
    from standin.server import Reply, StandInServer

    server = StandInServer()
    root = "/computeMetadata/v1/instance/service-accounts/default"

    def flavoured(body: str, content_type: str = "application/json"):
        def handle(req) -> Reply:
            if req.headers.get("Metadata-Flavor") != "Google":
                return Reply(b"Missing Metadata-Flavor header", 403, "text/plain")
            return Reply(body.encode(), 200, content_type, {"Metadata-Flavor": "Google"})
        return handle

    server.add("/", flavoured("", "text/plain"))
    server.add(f"{root}/", flavoured(json.dumps({"email": "birds@p.iam.gserviceaccount.com", "aliases": ["default"],
                                                 "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})))
    server.add(f"{root}/email", flavoured("birds@p.iam.gserviceaccount.com", "text/plain"))
    server.add(f"{root}/token", flavoured(json.dumps({"access_token": TOKEN, "expires_in": 3599,
                                                      "token_type": "Bearer"})))
    server.add("/computeMetadata/v1/project/project-id", flavoured("p", "text/plain"))
    with server:
        host = f"127.0.0.1:{server.port}"
        for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP"):
            monkeypatch.setenv(name, host)
        monkeypatch.delenv("NO_GCE_CHECK", raising=False)
        from google.auth.compute_engine import _metadata

        # Both read once, when google-auth is imported, by whichever test imports it first.
        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", host)
        monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", False)
        yield host


def test_a_gcs_write_carries_the_token_adc_got_and_names_the_object_in_the_upload(s3, env, metadata, caplog):
    with StandInSink(status=lambda n: 200) as gcs_api:  # Cloud Storage's upload endpoint, recording
        env.setenv("GCS_ENDPOINT", gcs_api.url.rstrip("/"))
        env.setenv("RESULTS_URL", "gs://results/out/")
        r = http_client().post("/", json={"Records": [s3_record("heron.jpg")]})
        assert r.status_code == 200, r.get_data(as_text=True)
    (upload,) = gcs_api.received
    assert upload.headers["authorization"] == f"Bearer {TOKEN}"
    parts = upload.body.split(b"\r\n\r\n")
    resource = json.loads(parts[1].split(b"\r\n--")[0])
    assert resource == {"name": "out/birds/heron.jpg.json", "contentType": "application/json",
                        "cacheControl": "no-cache"}
    document = json.loads(parts[2].split(b"\r\n--")[0])
    assert document["results"][0]["predictions"][0]["id"] == HERON
    assert TOKEN not in caplog.text
