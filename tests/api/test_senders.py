"""Bucket deliveries prove their sender before the function reads anything with its credentials.

Real stores on 127.0.0.1 (moto's S3 with IAM enforced, gcp-storage-emulator: tests/api/stores.py)
and stand-in signers with their own keys (standin/issuers.py): a Google-style certificates endpoint,
a cluster issuer's OIDC discovery and JWKS, SNS's signing certificate. Deliveries signed right are
classified; every forgery is refused with nothing read from either store, which the stores' own
request logs show (werkzeug's for moto, the emulator's). The trusted key locations are fields of a
Config the test builds: no environment variable can move them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import threading
import time

import functions_framework
import pytest
import requests_mock as requests_mock_module
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from function import app as service
from function.config import Config
from function.core.buckets import FINALIZED
from standin import hostile
from standin.issuers import SNS_CERT_PATH, ClusterIssuer, GoogleIssuer, SnsSigner, rsa_key, unsigned
from tests.api import stores
from tests.api.stores import (
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

TOKENS = ("old-minio-token-0123456789abcdef", "new-minio-token-fedcba9876543210")
PUSH_AUDIENCE = "https://birds.example.run.app/events"
PUSHER = "pubsub-push@my-project.iam.gserviceaccount.com"
SINK_AUDIENCE = "serving.knative.dev/service/birds/bird-classifier"
BROKER = "system:serviceaccount:birds:oidc-broker-default"


@pytest.fixture(scope="module")
def moto():
    with stores.moto_s3() as store:
        yield store


@pytest.fixture(scope="module")
def gcs():
    with stores.gcs_emulator() as base:
        yield base


@pytest.fixture(scope="module")
def google():
    with GoogleIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def cluster():
    with ClusterIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def sns():
    with SnsSigner() as signer:
        yield signer


def trust(monkeypatch, **overrides) -> None:
    """Serve with ``overrides`` on the Config read from the environment: the stand-ins' key locations."""
    read = Config.from_env.__func__

    def from_env(cls, environ=None):
        return dataclasses.replace(read(cls, environ), **overrides)

    monkeypatch.setattr(Config, "from_env", classmethod(from_env))


@pytest.fixture
def proven(env, moto, gcs, google, cluster, sns, tmp_path, monkeypatch):
    """The function with every proof configured, reading from both stores with its own credentials."""
    no_host_credentials(env, tmp_path)
    env.setenv("S3_ENDPOINT", moto["endpoint"])
    env.setenv("STORAGE_EMULATOR_HOST", gcs)
    key_id, secret = moto["keys"]["classifier"]
    env.setenv("AWS_ACCESS_KEY_ID", key_id)
    env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    env.setenv("EVENT_TOKENS", ",".join(TOKENS))
    env.setenv("EVENT_AUDIENCES", PUSH_AUDIENCE)
    env.setenv("EVENT_SERVICE_ACCOUNTS", PUSHER)
    env.setenv("EVENT_OIDC_ISSUER", cluster.issuer)
    env.setenv("EVENT_OIDC_AUDIENCES", SINK_AUDIENCE)
    env.setenv("EVENT_OIDC_SUBJECTS", BROKER)
    env.setenv("SNS_TOPIC_ARNS", TOPIC)
    trust(monkeypatch, google_certs_url=google.certs_url,
          sns_cert_url=re.escape(f"http://127.0.0.1:{sns.server.port}/") + r"SimpleNotificationService-[a-f0-9]+\.pem")
    service.reset()
    return env


def fresh_client(caplog=None):
    """The HTTP target rebuilt from the environment as the test has set it; the stores heard when ``caplog``."""
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    if caplog is not None:
        hear_stores(caplog)
    return client


@pytest.fixture
def client(proven):
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    assert service.serving().wait_until_ready(120).ready
    return client


STORE_LOGGERS = ("werkzeug", "gcp_storage_emulator")  # moto's server is werkzeug's


def hear_stores(caplog) -> None:
    """Let the stores' request logs through, once the serving app is built (its log set-up quiets werkzeug;
    it is built on first use, as the server's start hook or first request would)."""
    service.serving()
    for name in STORE_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)


@pytest.fixture
def store_reads(caplog):
    """How many object reads moto's S3 and the GCS emulator have logged so far; refuses to count while
    their request logs are silenced, so a zero is never for want of hearing."""
    hear_stores(caplog)

    def count() -> int:
        assert all(logging.getLogger(name).isEnabledFor(logging.INFO) for name in STORE_LOGGERS)
        assert caplog.handler.level <= logging.INFO
        lines = [r.getMessage() for r in caplog.records if r.name.startswith(("werkzeug", "gcp_storage_emulator"))]
        return sum(1 for line in lines if "GET /birds/" in line or "GET /download/storage/v1/b/birds/" in line)

    return count


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def finalized(name: str) -> CloudEvent:
    return CloudEvent({"type": FINALIZED, "source": "//storage.googleapis.com/projects/_/buckets/birds",
                       "subject": f"objects/{name}", "id": f"evt-{time.monotonic_ns()}"}, object_resource(name))


def records(name: str = KEY) -> dict:
    return {"Records": [s3_record(name)]}


def refusals(client) -> str:
    return "\n".join(line for line in client.get("/metrics").get_data(as_text=True).splitlines()
                     if line.startswith("bird_delivery_refusals_total"))


def logged(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)


# -- signed right: classified -------------------------------------------------------------------------------

@pytest.mark.parametrize("token", TOKENS)
def test_a_minio_webhook_with_any_listed_token_is_classified(client, store_reads, token):
    r = client.post("/events", json=records(), headers=bearer(token))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["results"][0]["predictions"][0]["id"] == ROBIN
    assert store_reads() == 1  # the store's log sees the read: the refusals' zero below means something


def test_sns_raw_delivery_proves_itself_with_basic_auth(client, store_reads):
    basic = base64.b64encode(f"sns:{TOKENS[0]}".encode()).decode()
    r = client.post("/events", data=json.dumps(records("heron.jpg")),
                    headers={**sns_headers(raw=True), "Authorization": f"Basic {basic}"})
    assert r.status_code == 200 and r.get_json()["results"][0]["predictions"][0]["id"] == HERON


def test_a_pubsub_push_with_googles_id_token_is_classified_and_the_certs_fetched_once(client, google, store_reads):
    fetched = google.server.hits["/oauth2/v1/certs"]
    for _ in range(2):
        token = google.token(PUSH_AUDIENCE, PUSHER)
        r = client.post("/events", json=pubsub_message("heron.jpg"), headers=bearer(token))
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.get_json()["results"][0]["predictions"][0]["id"] == HERON
    assert google.server.hits["/oauth2/v1/certs"] == fetched + 1  # kept for its Cache-Control max-age
    assert store_reads() == 2


def test_a_knative_delivery_with_the_clusters_token_is_classified_and_the_jwks_fetched_once(client, cluster):
    fetched = cluster.server.hits["/keys"]
    for path in ("/events", "/"):  # the root still takes deliveries, under the same rule
        headers, body = to_binary(finalized(KEY))
        r = client.post(path, headers={**headers, **bearer(cluster.token(SINK_AUDIENCE, BROKER))}, data=body)
        assert r.status_code == 200, r.get_data(as_text=True)
        assert json.loads(r.get_data())["results"][0]["predictions"][0]["id"] == ROBIN
    assert cluster.server.hits["/keys"] == fetched + 1


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_sns_notification_signed_by_sns_is_classified(client, sns, version):
    doc = sns.signed(sns_envelope(records("heron.jpg")), version)
    r = client.post("/events", headers=sns_headers(), data=json.dumps(doc))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["results"][0]["predictions"][0]["id"] == HERON


def confirmation(sns, **changes) -> str:
    doc = sns_envelope("You have chosen to subscribe...", "SubscriptionConfirmation", SubscribeURL=SUBSCRIBE,
                       Token="tok")
    signed = sns.signed(doc)
    return json.dumps({**signed, **changes})


def test_a_signed_confirmation_is_followed_and_a_forged_one_is_not(client, sns):
    with requests_mock_module.Mocker(real_http=True) as mocker:  # the certificate still comes from its server
        mocker.get(SUBSCRIBE, text="<ConfirmSubscriptionResponse/>")
        forged = client.post("/events", headers=sns_headers("SubscriptionConfirmation"),
                             data=confirmation(sns, Message="tampered"))
        assert forged.status_code == 401 and forged.get_json()["error"]["code"] == "sender_unproven"
        assert not [h for h in mocker.request_history if h.url == SUBSCRIBE]
        r = client.post("/events", headers=sns_headers("SubscriptionConfirmation"), data=confirmation(sns))
        assert r.status_code == 200 and r.get_json() == {"confirmed": TOPIC}
        assert [h.url for h in mocker.request_history if h.url == SUBSCRIBE] == [SUBSCRIBE]


def test_the_cloudevent_target_takes_a_proven_delivery_and_refuses_the_rest(proven, cluster, store_reads, caplog):
    target = functions_framework.create_app(target="classify_event", source=str(ROOT / "main.py"),
                                            signature_type="cloudevent").test_client()
    caplog.set_level(logging.INFO, logger="function")
    hear_stores(caplog)
    headers, body = to_binary(finalized("heron.jpg"))
    refused = target.post("/", headers=headers, data=body)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "sender_unproven"
    assert store_reads() == 0
    r = target.post("/", headers={**headers, **bearer(cluster.token(SINK_AUDIENCE, BROKER))}, data=body)
    assert r.status_code == 200
    assert [rec for rec in caplog.records if rec.getMessage().startswith("classified gs://birds/heron.jpg")]
    assert store_reads() == 1


# -- forged: refused, nothing read --------------------------------------------------------------------------

def _records(headers):
    return "/events", {**headers, "Content-Type": "application/json"}, json.dumps(records())


def _push(headers):
    return "/events", {**headers, "Content-Type": "application/json"}, json.dumps(pubsub_message("heron.jpg"))


def _cloudevent(headers, path="/"):
    ce_headers, body = to_binary(finalized(KEY))
    return path, {**ce_headers, **headers}, body


def _sns(doc):
    return "/events", sns_headers(), json.dumps(doc)


def _other_key_google(g, c, s):
    return _push(bearer(g.token(PUSH_AUDIENCE, PUSHER, key=rsa_key())))


FORGERIES = {
    # name: (build(google, cluster, sns) -> (path, headers, body), status, envelope, reason)
    "records without proof": (lambda g, c, s: _records({}), 401, "s3", "no_proof"),
    "cloudevent without proof": (lambda g, c, s: _cloudevent({}), 401, "cloudevent", "no_proof"),
    "push without proof": (lambda g, c, s: _push({}), 401, "pubsub", "no_proof"),
    "records with a wrong token": (lambda g, c, s: _records(bearer("not-a-token-we-know-0123456789")), 401, "s3",
                                   "token"),
    "records with a wrong basic password": (lambda g, c, s: _records(
        {"Authorization": "Basic " + base64.b64encode(b"sns:guessed-password-000000").decode()}), 401, "s3", "token"),
    "push with an alg:none token": (lambda g, c, s: _push(bearer(unsigned(
        {"iss": "https://accounts.google.com", "aud": PUSH_AUDIENCE, "email": PUSHER, "email_verified": True,
         "exp": int(time.time()) + 600}, g.kid))), 401, "pubsub", "signature"),
    "cloudevent with an alg:none token": (lambda g, c, s: _cloudevent(bearer(unsigned(
        {"iss": c.issuer, "aud": [SINK_AUDIENCE], "sub": BROKER, "exp": int(time.time()) + 600}, c.kid))),
        401, "cloudevent", "signature"),
    "push for another audience": (lambda g, c, s: _push(bearer(g.token("https://elsewhere.example/", PUSHER))),
                                  401, "pubsub", "audience"),
    "push with an expired token": (lambda g, c, s: _push(bearer(g.token(PUSH_AUDIENCE, PUSHER, expires_in=-600))),
                                   401, "pubsub", "expired"),
    "push from another service account": (lambda g, c, s: _push(bearer(g.token(
        PUSH_AUDIENCE, "intruder@other-project.iam.gserviceaccount.com"))), 403, "pubsub", "not_allowed"),
    "push with an unverified email": (lambda g, c, s: _push(bearer(g.token(PUSH_AUDIENCE, PUSHER, verified=False))),
                                      403, "pubsub", "not_allowed"),
    "push signed with another key": (_other_key_google, 401, "pubsub", "signature"),
    "push from another issuer": (lambda g, c, s: _push(bearer(g.token(PUSH_AUDIENCE, PUSHER,
                                                                      issuer="https://issuer.example"))),
                                 401, "pubsub", "issuer"),
    "cloudevent for another audience": (lambda g, c, s: _cloudevent(bearer(c.token("other-sink", BROKER))),
                                        401, "cloudevent", "audience"),
    "cloudevent with an expired token": (lambda g, c, s: _cloudevent(bearer(c.token(SINK_AUDIENCE, BROKER,
                                                                                     expires_in=-600))),
                                         401, "cloudevent", "expired"),
    "cloudevent signed with another key": (lambda g, c, s: _cloudevent(bearer(c.token(SINK_AUDIENCE, BROKER,
                                                                                       key=rsa_key()))),
                                           401, "cloudevent", "signature"),
    "cloudevent from another sender": (lambda g, c, s: _cloudevent(bearer(c.token(
        SINK_AUDIENCE, "system:serviceaccount:default:curious"))), 403, "cloudevent", "not_allowed"),
    "cloudevent to /events with a garbled token": (lambda g, c, s: _cloudevent(bearer("a.b.c"), "/events"),
                                                   401, "cloudevent", "malformed"),
    "sns with a bad signature": (lambda g, c, s: _sns({**s.signed(sns_envelope(records())), "Message": json.dumps(
        {"Records": [s3_record("heron.jpg")]})}), 401, "sns", "signature"),
    "sns signed with another key": (lambda g, c, s: _sns(s.signed(sns_envelope(records()), key=rsa_key())),
                                    401, "sns", "signature"),
    "sns with a certificate from another host": (lambda g, c, s: _sns(s.signed(
        sns_envelope(records()), cert_url=f"http://localhost:{s.server.port}{SNS_CERT_PATH}")), 401, "sns", "cert_url"),
    "sns from another topic": (lambda g, c, s: _sns(s.signed(sns_envelope(
        records(), TopicArn="arn:aws:sns:us-east-1:999999999999:someone-elses"), "2")), 403, "sns", "not_allowed"),
    "sns with a made-up signature": (lambda g, c, s: _sns(sns_envelope(records())), 401, "sns", "cert_url"),
    "sns raw delivery without proof": (lambda g, c, s: ("/events", sns_headers(raw=True), json.dumps(records())),
                                       401, "sns", "no_proof"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_delivery_is_refused_with_nothing_read(client, google, cluster, sns, store_reads, caplog, name):
    build, status, envelope, reason = FORGERIES[name]
    path, headers, body = build(google, cluster, sns)
    caplog.set_level(logging.DEBUG, logger="function")
    sns_certs = sns.server.hits[SNS_CERT_PATH]
    r = client.post(path, headers=headers, data=body)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == ("sender_unproven" if status == 401 else "sender_not_allowed")
    assert store_reads() == 0
    if reason == "cert_url":
        assert sns.server.hits[SNS_CERT_PATH] == sns_certs  # the other host's URL was not fetched either
    (record,) = [rec for rec in caplog.records if rec.getMessage().startswith("delivery refused")]
    assert record.fields["envelope"] == envelope and record.fields["reason"] == reason
    assert f'bird_delivery_refusals_total{{envelope="{envelope}",reason="{reason}"}} 1.0' in refusals(client)
    proof = headers.get("Authorization", "").partition(" ")[2]
    for secret in (*TOKENS, *([proof] if proof else [])):
        assert secret not in logged(caplog) and secret not in r.get_data(as_text=True)


def test_keys_that_cannot_be_fetched_are_a_503_the_broker_retries(proven, google, monkeypatch, store_reads,
                                                                   caplog):
    trust(monkeypatch, google_certs_url=google.server.url("/no-certs-here"))  # the certificates endpoint fails
    client = fresh_client(caplog)
    r = client.post("/events", json=pubsub_message("heron.jpg"), headers=bearer(google.token(PUSH_AUDIENCE, PUSHER)))
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "sender_keys_unavailable"
    assert "Retry-After" in r.headers
    assert store_reads() == 0
    assert 'reason="keys_unavailable"} 1.0' in refusals(client)


def test_a_proven_delivery_leaves_its_token_out_of_logs_and_answers(client, caplog):
    caplog.set_level(logging.DEBUG, logger="function")
    r = client.post("/events", json=records(), headers=bearer(TOKENS[1]))
    assert r.status_code == 200
    assert TOKENS[1] not in logged(caplog) and TOKENS[1] not in r.get_data(as_text=True)


def test_only_the_proofs_event_auth_lists_are_taken(proven, store_reads, caplog):
    proven.setenv("EVENT_AUTH", "google,oidc,sns")  # EVENT_TOKENS is still set: it proves nothing now
    client = fresh_client(caplog)
    r = client.post("/events", json=records(), headers=bearer(TOKENS[0]))
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "sender_unproven"
    assert store_reads() == 0
    assert client.get("/readyz").get_json()["event_auth"]["proofs"] == ["google", "oidc", "sns"]


def test_the_photo_api_needs_no_proof(proven, serve_photo):
    proven.setenv("TRUSTED_HOSTS", "127.0.0.1")  # the stand-in photo host is on loopback
    client = fresh_client()
    r = client.post("/", json={"urls": [serve_photo(40)]})
    assert r.status_code == 200 and r.get_json()["results"][0]["predictions"][0]["id"] == 40


def test_photos_are_not_taken_at_the_delivery_path(client, serve_photo):
    r = client.post("/events", json={"urls": [serve_photo(40)]}, headers=bearer(TOKENS[0]))
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_notification"


def test_the_delivery_path_says_it_takes_posts_only(client):
    r = client.get("/events")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert r.headers["Allow"] == "POST"


# -- what the configuration declares ------------------------------------------------------------------------

def test_without_proofs_configured_every_delivery_is_refused(env, moto, tmp_path, store_reads, caplog):
    no_host_credentials(env, tmp_path)
    env.delenv("EVENT_TOKENS")
    env.setenv("S3_ENDPOINT", moto["endpoint"])
    client = fresh_client(caplog)
    r = client.post("/", json=records(), headers=bearer(TOKENS[0]))
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "sender_unproven"
    assert store_reads() == 0
    assert service.serving().readiness().status["event_auth"] == {"proofs": [], "trusted_route": False}


def test_event_auth_none_declares_the_route_trusted_loudly(env, moto, tmp_path, store_reads, caplog):
    no_host_credentials(env, tmp_path)
    env.setenv("S3_ENDPOINT", moto["endpoint"])
    env.setenv("EVENT_AUTH", "none")
    key_id, secret = moto["keys"]["classifier"]
    env.setenv("AWS_ACCESS_KEY_ID", key_id)
    env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.INFO, logger="function")  # not above INFO: the stores' request logs are INFO
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    service.serving()  # the start: gunicorn's post_worker_init in the image, the first request here
    assert [r for r in caplog.records if "EVENT_AUTH=none" in r.getMessage() and r.levelno == logging.WARNING]
    hear_stores(caplog)
    ready = client.get("/readyz")
    assert ready.get_json()["event_auth"] == {"proofs": [], "trusted_route": True}
    r = client.post("/events", json=records())
    assert r.status_code == 200 and r.get_json()["results"][0]["predictions"][0]["id"] == ROBIN
    assert store_reads() == 1


@pytest.mark.parametrize("settings, why", [
    ({"EVENT_AUTH": "google"}, "EVENT_AUDIENCES and EVENT_SERVICE_ACCOUNTS"),
    ({"EVENT_AUTH": "oidc", "EVENT_OIDC_ISSUER": "https://kubernetes.default.svc"}, "EVENT_OIDC_AUDIENCES"),
    ({"EVENT_AUTH": "sns"}, "SNS_TOPIC_ARNS"),
    ({"EVENT_AUTH": "token"}, "EVENT_TOKENS"),
    ({"EVENT_AUTH": "none,token", "EVENT_TOKENS": TOKENS[0]}, "none"),
    ({"EVENT_AUTH": "hmac"}, "hmac"),
    ({"EVENT_TOKENS": "short"}, "16 characters"),
    ({"EVENT_OIDC_ISSUER": "http://kubernetes.default.svc"}, "https"),
    ({"EVENT_SERVICE_ACCOUNTS": "pubsub-push"}, "service account emails"),
])
def test_event_auth_settings_are_validated(settings, why):
    from function.config import ConfigError

    with pytest.raises(ConfigError, match=why):
        Config.from_env(settings)


def test_the_proofs_taken_are_the_configured_ones_and_key_locations_come_from_no_variable():
    config = Config.from_env({"EVENT_TOKENS": TOKENS[0], "SNS_TOPIC_ARNS": TOPIC,
                              "GOOGLE_CERTS_URL": "http://attacker.example/certs",
                              "SNS_CERT_URL": "http://attacker.example/.*"})
    assert config.event_proofs() == ("sns", "token")
    assert config.google_certs_url == "https://www.googleapis.com/oauth2/v1/certs"
    assert re.fullmatch(config.sns_cert_url, "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc1.pem")
    assert not re.fullmatch(config.sns_cert_url, "https://sns.eu-west-1.amazonaws.com.attacker.example/x.pem")
    assert TOKENS[0] not in repr(config)


@pytest.mark.parametrize(("served", "status"), [(None, 404), (b"not a certificate", 200)])
def test_a_certificate_url_on_sns_pattern_that_holds_no_certificate_proves_nothing_and_is_not_fetched_again(
        client, sns, store_reads, served, status):
    # Anyone can name such a URL; its host saying "no such file", or serving something that is no
    # certificate, is not an outage of the keys (503, retried forever) but a delivery that proves nothing.
    path = f"/SimpleNotificationService-{'0' * 15}{status}.pem"
    if served is not None:
        sns.server.add(path, served, "application/x-pem-file")
    url = f"http://127.0.0.1:{sns.server.port}{path}"
    doc = sns.signed(sns_envelope(records("heron.jpg")), "2", cert_url=url)
    for _ in range(2):
        r = client.post("/events", headers=sns_headers(), data=json.dumps(doc))
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "sender_unproven", r.get_data(as_text=True)
    assert sns.server.hits[path] == 1  # remembered: the second delivery fetched nothing
    assert store_reads() == 0
    assert 'reason="cert"} 2.0' in refusals(client)


def test_a_key_document_sent_a_byte_at_a_time_is_given_up_on_not_waited_for(proven, sns, store_reads, caplog):
    # Each byte comes well within the read timeout; the whole certificate never would. The fetch is bounded
    # as a whole (EVENT_KEYS_TIMEOUT_S), so the delivery is a 503 the broker retries, not a thread held.
    stop = threading.Event()
    path = "/SimpleNotificationService-00000000000000000000.pem"
    sns.server.add(path, hostile.trickle(stop, max_s=120.0))
    proven.setenv("EVENT_KEYS_TIMEOUT_S", "1")
    client = fresh_client(caplog)
    doc = sns.signed(sns_envelope(records("heron.jpg")), "2", cert_url=f"http://127.0.0.1:{sns.server.port}{path}")
    try:
        r = client.post("/events", headers=sns_headers(), data=json.dumps(doc))
    finally:
        stop.set()
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "sender_keys_unavailable", r.get_data(as_text=True)
    assert store_reads() == 0


@pytest.mark.parametrize("drip", [hostile.status_drip, hostile.header_drip])
def test_a_key_host_that_drips_its_status_or_headers_is_cut_off_at_the_timeout(proven, sns, store_reads, caplog, drip):
    # Each byte comes well within the read timeout, and the body has not begun: only a deadline on the
    # connection itself (EVENT_KEYS_TIMEOUT_S) ends the wait, long before the host would give up.
    stop = threading.Event()
    path = "/SimpleNotificationService-00000000000000000001.pem"
    sns.server.add(path, drip(stop, max_s=60.0))
    proven.setenv("EVENT_KEYS_TIMEOUT_S", "1")
    client = fresh_client(caplog)
    doc = sns.signed(sns_envelope(records("heron.jpg")), "2", cert_url=f"http://127.0.0.1:{sns.server.port}{path}")
    started = time.monotonic()
    try:
        r = client.post("/events", headers=sns_headers(), data=json.dumps(doc))
    finally:
        stop.set()
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "sender_keys_unavailable", r.get_data(as_text=True)
    assert time.monotonic() - started < 20, "the delivery waited for the key host, not for EVENT_KEYS_TIMEOUT_S"
    assert store_reads() == 0
