"""Private buckets read with the platform's credentials, against real third-party stores on 127.0.0.1.

* moto's S3 server (``moto.server.ThreadedMotoServer``) with IAM authentication switched on
  (``POST /moto-api/reset-auth`` with ``0``, moto's server-mode form of
  ``INITIAL_NO_AUTH_ACTION_COUNT=0``): every request must carry a valid SigV4 signature of a known
  access key, and that key's IAM user must be allowed ``s3:GetObject``.
* gcp-storage-emulator (no auth) for Cloud Storage object addressing, on every GCS event path.
* A stand-in metadata server (``GCE_METADATA_HOST``) and a stand-in Cloud Storage (``GCS_ENDPOINT``)
  that records the ``Authorization`` header: the read carries the token ADC got from the metadata server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import functions_framework
import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from function import app as service
from function.core.buckets import FINALIZED, PUBSUB_PUBLISHED
from standin import photos
from standin.server import Reply, StandInServer
from tests.api import stores
from tests.api.stores import (
    EVENT_TOKEN,
    HERON,
    KEY,
    ROBIN,
    SUBSCRIBE,
    TOPIC,
    no_host_credentials,
    object_resource,
    pubsub_message,
    s3_record,
    sns_envelope,
    sns_headers,
)
from tests.support import ROOT

pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-test.txt)")
pytest.importorskip("boto3", reason="boto3 (moto's dependency) is not installed")
pytest.importorskip("gcp_storage_emulator.server",
                    reason="gcp-storage-emulator is not installed (requirements-test.txt)")
pytest.importorskip("google.auth", reason="google-auth is not installed (requirements.txt)")
pytest.importorskip("botocore", reason="botocore is not installed (requirements.txt)")




def http_client():
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    assert service.serving().wait_until_ready(120).ready
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {EVENT_TOKEN}"  # every delivery: the token proof
    return client


def event_client():
    client = functions_framework.create_app(target="classify_event", source=str(ROOT / "main.py"),
                                            signature_type="cloudevent").test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {EVENT_TOKEN}"
    return client


def unsigned_sns(env) -> None:
    """SNS envelopes made here carry no signature: these tests are about unwrapping and the SubscribeURL
    checks, so the route is declared trusted; signatures are test_senders.py's."""
    env.setenv("EVENT_AUTH", "none")
    service.reset()


def everything_logged(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)


# -- S3: moto's server, authentication enforced ---------------------------------------------------------

@pytest.fixture(scope="module")
def moto() -> Iterator[dict]:
    with stores.moto_s3() as store:
        yield store


@pytest.fixture
def s3_env(env, moto, tmp_path):
    no_host_credentials(env, tmp_path)
    env.setenv("S3_ENDPOINT", moto["endpoint"])
    return env


def use_key(env, key_id: str, secret: str) -> None:
    env.setenv("AWS_ACCESS_KEY_ID", key_id)
    env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    service.reset()


def test_moto_enforces_authentication(moto):
    r = requests.get(f"{moto['endpoint']}/birds/heron.jpg", timeout=5)
    assert r.status_code == 403  # anonymous reads of the private bucket are refused: the setup is real


def test_a_private_s3_object_is_read_signed_and_classified(s3_env, moto, caplog):
    use_key(s3_env, *moto["keys"]["classifier"])
    caplog.set_level(logging.DEBUG)
    r = http_client().post("/", json={"Records": [s3_record(KEY)]})
    assert r.status_code == 200, r.get_data(as_text=True)
    (result,) = r.get_json()["results"]
    assert result["error"] is None, result
    assert result["predictions"][0]["id"] == ROBIN
    secret = moto["keys"]["classifier"][1]
    assert secret not in everything_logged(caplog) and secret not in r.get_data(as_text=True)


def test_a_wrong_secret_key_gets_access_denied_naming_the_key_id(s3_env, moto, caplog):
    key_id, _ = moto["keys"]["classifier"]
    use_key(s3_env, key_id, "not-the-secret-key-at-all")
    caplog.set_level(logging.DEBUG)
    r = http_client().post("/", json={"Records": [s3_record(KEY)]})
    (result,) = r.get_json()["results"]
    assert result["error"]["code"] == "access_denied"
    message = result["error"]["message"]
    assert f"access key {key_id[:8]}" in message and "s3:GetObject" in message and "HTTP 403" in message
    assert key_id not in message  # a prefix only
    assert "SignatureDoesNotMatch" in message
    assert "not-the-secret-key-at-all" not in everything_logged(caplog) + r.get_data(as_text=True)


def test_a_callers_url_to_the_same_store_stays_guarded_and_unsigned(s3_env, moto):
    use_key(s3_env, *moto["keys"]["classifier"])
    r = http_client().post("/", json={"urls": [f"{moto['endpoint']}/birds/heron.jpg"]})
    assert r.get_json()["results"][0]["error"]["code"] == "blocked_address"


def test_a_user_without_s3_get_object_gets_access_denied(s3_env, moto):
    use_key(s3_env, *moto["keys"]["intern"])
    (result,) = http_client().post("/", json={"Records": [s3_record("heron.jpg")]}).get_json()["results"]
    assert result["error"]["code"] == "access_denied" and "AccessDenied" in result["error"]["message"]


def test_without_credentials_the_read_is_anonymous_and_denied_clearly(s3_env):
    service.reset()
    (result,) = http_client().post("/", json={"Records": [s3_record("heron.jpg")]}).get_json()["results"]
    assert result["error"]["code"] == "access_denied"
    assert "anonymous (no credentials found)" in result["error"]["message"]


def test_an_sns_notification_envelope_is_unwrapped_and_classified(s3_env, moto):
    unsigned_sns(s3_env)
    use_key(s3_env, *moto["keys"]["classifier"])
    body = json.dumps(sns_envelope({"Records": [s3_record("heron.jpg")]}))
    r = http_client().post("/", headers=sns_headers(), data=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["results"][0]["predictions"][0]["id"] == HERON


def test_an_sns_raw_delivery_is_the_records_body(s3_env, moto):
    use_key(s3_env, *moto["keys"]["classifier"])
    body = json.dumps({"Records": [s3_record(KEY)]})
    r = http_client().post("/", headers=sns_headers(raw=True), data=body)
    assert r.status_code == 200 and r.get_json()["results"][0]["predictions"][0]["id"] == ROBIN


def test_s3s_test_event_is_acknowledged_without_a_fetch(s3_env):
    unsigned_sns(s3_env)
    message = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "birds"}
    r = http_client().post("/", headers=sns_headers(), data=json.dumps(sns_envelope(message)))
    assert r.status_code == 204


# -- SNS subscription confirmations: only listed topics, only SNS endpoints -----------------------------

def confirmation(topic: str = TOPIC, url: str = SUBSCRIBE) -> str:
    return json.dumps(sns_envelope("You have chosen to subscribe...", "SubscriptionConfirmation",
                                   TopicArn=topic, SubscribeURL=url, Token="tok"))


@pytest.fixture
def sns_client(env, tmp_path):
    no_host_credentials(env, tmp_path)
    env.setenv("SNS_TOPIC_ARNS", f"{TOPIC},arn:aws:sns:eu-west-1:123456789012:other")
    unsigned_sns(env)
    return http_client()


def test_a_listed_topics_confirmation_is_followed(sns_client, requests_mock):
    requests_mock.get(SUBSCRIBE, text="<ConfirmSubscriptionResponse/>")
    r = sns_client.post("/", headers=sns_headers("SubscriptionConfirmation"), data=confirmation())
    assert r.status_code == 200 and r.get_json() == {"confirmed": TOPIC}
    assert requests_mock.call_count == 1 and requests_mock.last_request.url == SUBSCRIBE


@pytest.mark.parametrize("topic, url", [
    ("arn:aws:sns:us-east-1:999999999999:someone-elses", SUBSCRIBE.replace(TOPIC, "arn:aws:sns:us-east-1:9:x")),
    (TOPIC, f"https://attacker.example/?Action=ConfirmSubscription&TopicArn={TOPIC}"),
    (TOPIC, f"http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}"),
    (TOPIC, f"https://sns.us-east-1.amazonaws.com.attacker.example/?Action=ConfirmSubscription&TopicArn={TOPIC}"),
    (TOPIC, "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:1:x"),
    (TOPIC, f"https://169.254.169.254/?Action=ConfirmSubscription&TopicArn={TOPIC}"),
])
def test_any_other_confirmation_is_refused_without_a_fetch(sns_client, requests_mock, topic, url):
    r = sns_client.post("/", headers=sns_headers("SubscriptionConfirmation"), data=confirmation(topic, url))
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "subscription_refused"
    assert requests_mock.call_count == 0  # nothing was fetched, not even the model's or the SubscribeURL


def test_a_confirmation_without_sns_headers_is_refused_without_a_fetch(sns_client, requests_mock):
    r = sns_client.post("/", json=json.loads(confirmation()))
    assert r.status_code == 400 and requests_mock.call_count == 0


# -- Cloud Storage: gcp-storage-emulator on every GCS path -----------------------------------------------

@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    with stores.gcs_emulator() as base:
        yield base


@pytest.fixture
def gcs_env(env, gcs, tmp_path):
    no_host_credentials(env, tmp_path)
    env.setenv("STORAGE_EMULATOR_HOST", gcs)
    return env


def pubsub_event(name: str, event_type: str = "OBJECT_FINALIZE", payload: str = "JSON_API_V1") -> CloudEvent:
    return CloudEvent({"type": PUBSUB_PUBLISHED, "id": f"ps-{name}-{event_type}",
                       "source": "//pubsub.googleapis.com/projects/p/topics/bird-uploads"},
                      pubsub_message(name, event_type, payload))


def test_eventarc_finalized_event_is_classified_from_the_emulator(gcs_env, caplog):
    caplog.set_level(logging.INFO, logger="function")
    event = CloudEvent({"type": FINALIZED, "source": "//storage.googleapis.com/projects/_/buckets/birds",
                        "subject": f"objects/{KEY}"}, object_resource(KEY))
    headers, body = to_binary(event)
    assert event_client().post("/", headers=headers, data=body).status_code == 200
    (rec,) = [r for r in caplog.records if r.getMessage().startswith(f"classified gs://birds/{KEY}")]
    assert rec.fields["predictions"][0]["id"] == ROBIN


@pytest.mark.parametrize("payload", ["JSON_API_V1", "NONE"])
def test_a_pubsub_cloudevent_is_classified_from_the_emulator(gcs_env, caplog, payload):
    caplog.set_level(logging.INFO, logger="function")
    headers, body = to_binary(pubsub_event("heron.jpg", payload=payload))
    assert event_client().post("/", headers=headers, data=body).status_code == 200
    (rec,) = [r for r in caplog.records if r.getMessage().startswith("classified gs://birds/heron.jpg")]
    assert rec.fields["predictions"][0]["id"] == HERON


def test_a_pubsub_cloudevent_delivered_to_the_http_target_gets_a_reply(gcs_env):
    headers, body = to_binary(pubsub_event(KEY))
    r = http_client().post("/", headers=headers, data=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert json.loads(r.get_data())["results"][0]["predictions"][0]["id"] == ROBIN


def test_a_plain_pubsub_push_body_is_classified(gcs_env):
    r = http_client().post("/", json=pubsub_message("heron.jpg"))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["results"][0]["predictions"][0]["id"] == HERON


@pytest.mark.parametrize("event_type", ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"])
def test_other_pubsub_event_types_are_acknowledged_without_a_fetch(env, tmp_path, server, event_type):
    no_host_credentials(env, tmp_path)
    env.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{server.port}")  # the stand-in counts every request
    client = http_client()
    before = sum(server.hits.values())
    assert client.post("/", json=pubsub_message("heron.jpg", event_type)).get_json()["results"] == []
    headers, body = to_binary(pubsub_event("heron.jpg", event_type))
    r = client.post("/", headers=headers, data=body)
    assert r.status_code == 204 and event_type in r.headers["X-Skipped"]
    assert event_client().post("/", headers=headers, data=body).status_code == 200
    assert sum(server.hits.values()) == before


# -- Cloud Storage behind ADC: a stand-in metadata server and a stand-in GCS that checks the token -------

TOKEN = "ya29.stand-in-token-that-must-never-be-logged"
SERVICE_ACCOUNT = "bird-classifier@my-project.iam.gserviceaccount.com"


@pytest.fixture
def metadata() -> Iterator[StandInServer]:
    """GCE's metadata server, as far as ADC uses it: the Metadata-Flavor check, email, token."""
    server = StandInServer()
    root = "/computeMetadata/v1/instance/service-accounts/default"

    def flavoured(body: bytes | str, content_type: str = "application/json"):
        def handle(req) -> Reply:
            if req.headers.get("Metadata-Flavor") != "Google":
                return Reply(b"Missing Metadata-Flavor header", 403, "text/plain")
            data = body.encode() if isinstance(body, str) else body
            return Reply(data, 200, content_type, {"Metadata-Flavor": "Google"})
        return handle

    server.add("/", flavoured("", "text/plain"))
    server.add(f"{root}/", flavoured(json.dumps({"email": SERVICE_ACCOUNT, "aliases": ["default"],
                                                 "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})))
    server.add(f"{root}/email", flavoured(SERVICE_ACCOUNT, "text/plain"))
    server.add(f"{root}/token", flavoured(json.dumps({"access_token": TOKEN, "expires_in": 3599,
                                                      "token_type": "Bearer"})))
    server.add("/computeMetadata/v1/project/project-id", flavoured("my-project", "text/plain"))
    with server:
        yield server


@pytest.fixture
def private_gcs() -> Iterator[tuple[StandInServer, list]]:
    """Cloud Storage's JSON API media download, for bearers of TOKEN only; records Authorization."""
    seen: list[str | None] = []
    server = StandInServer()

    def handle(class_id: int):
        def serve(req) -> Reply:
            seen.append(req.headers.get("Authorization"))
            if req.headers.get("Authorization") != f"Bearer {TOKEN}":
                return Reply(json.dumps({"error": {"code": 403, "message": "caller does not have "
                                                   "storage.objects.get access"}}).encode(), 403, "application/json")
            return Reply(photos.solid(photos.class_colour(class_id)), 200, "image/jpeg")
        return serve

    server.add(f"/download/storage/v1/b/birds/o/{quote(KEY, safe='')}", handle(ROBIN))
    with server:
        yield server, seen


@pytest.fixture
def adc_env(env, tmp_path, metadata, private_gcs, monkeypatch):
    no_host_credentials(env, tmp_path)
    env.delenv("NO_GCE_CHECK")
    host = f"127.0.0.1:{metadata.port}"
    env.setenv("GCE_METADATA_HOST", host)
    env.setenv("GCE_METADATA_IP", host)
    env.setenv("GCS_ENDPOINT", f"http://127.0.0.1:{private_gcs[0].port}")
    from google.auth.compute_engine import _metadata

    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", host)  # read once, when google-auth is imported
    service.reset()
    return env


def test_a_gcs_read_carries_the_token_adc_got_from_the_metadata_server(adc_env, private_gcs, metadata, caplog):
    caplog.set_level(logging.DEBUG)
    headers, body = to_binary(pubsub_event(KEY))
    r = http_client().post("/", headers=headers, data=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert json.loads(r.get_data())["results"][0]["predictions"][0]["id"] == ROBIN
    assert private_gcs[1] == [f"Bearer {TOKEN}"]
    assert metadata.hits["/computeMetadata/v1/instance/service-accounts/default/token"] == 1
    assert TOKEN not in everything_logged(caplog) and TOKEN not in r.get_data(as_text=True)


def test_a_gcs_refusal_names_the_service_account_and_the_permission(adc_env, private_gcs, caplog):
    caplog.set_level(logging.DEBUG)
    private_gcs[0].add(f"/download/storage/v1/b/birds/o/{quote('someone-elses.jpg', safe='')}",
                       b'{"error": {"code": 403}}', "application/json", status=403)
    r = http_client().post("/", json=pubsub_message("someone-elses.jpg"))
    (result,) = r.get_json()["results"]
    assert result["error"]["code"] == "access_denied"
    assert SERVICE_ACCOUNT in result["error"]["message"] and "storage.objects.get" in result["error"]["message"]
    assert TOKEN not in everything_logged(caplog) + r.get_data(as_text=True)


# -- Cold start and settings --------------------------------------------------------------------------

def test_the_auth_libraries_load_on_the_first_object_read_of_their_kind_not_at_start():
    probe = """
import sys
from function.app import App
from function.config import Config
app = App(Config(s3_endpoint="http://127.0.0.1:9", gcs_endpoint="http://127.0.0.1:9"))
app.stop()
print(sorted(m for m in ("botocore", "google.auth") if m in sys.modules))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name, value, why", [
    ("SNS_TOPIC_ARNS", "bird-uploads", "SNS_TOPIC_ARNS"),
    ("SNS_TOPIC_ARNS", "arn:aws:sns:us-east-1:1:a,https://evil", "SNS_TOPIC_ARNS"),
    ("STORAGE_CREDENTIALS", "mine", "STORAGE_CREDENTIALS"),
    ("S3_ENDPOINT", "minio:9000", "S3_ENDPOINT"),
    ("GCS_ENDPOINT", "ftp://x", "GCS_ENDPOINT"),
])
def test_bucket_settings_are_validated(name, value, why):
    from function.config import Config, ConfigError

    with pytest.raises(ConfigError, match=why):
        Config.from_env({name: value})


def test_sns_topics_are_a_comma_separated_list():
    from function.config import Config

    config = Config.from_env({"SNS_TOPIC_ARNS": f" {TOPIC} , arn:aws:sns:eu-west-1:1:b ,"})
    assert config.sns_topic_arns == {TOPIC, "arn:aws:sns:eu-west-1:1:b"}
