"""The object stores the bucket tests read from, started on 127.0.0.1, and the deliveries that name
their objects: helpers shared by test_buckets.py, test_senders.py and test_results.py.

* :func:`moto_with_auth`: moto's S3 + IAM server with authentication enforced, buckets and users as asked;
  :func:`moto_s3`: with a private bucket 'birds' and a reader.
* :func:`gcs_emulator`: gcp-storage-emulator in memory, bucket 'birds'.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from urllib.parse import quote

import pytest
import requests

from harness import free_port
from standin import photos

ROBIN, HERON = 321, 246
KEY = "incoming/yellow bird.jpg"
TOPIC = "arn:aws:sns:us-east-1:123456789012:bird-uploads"
SUBSCRIBE = f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok"
EVENT_TOKEN = "buckets-test-token-0123456789ab"  # what the deliveries of test_buckets.py prove their sender with


def no_host_credentials(env, tmp_path) -> None:
    """Only what a test sets is found: no ~/.aws, no gcloud ADC file, no instance metadata probes.

    And no TRUSTED_HOSTS: the stores' endpoints come from configuration, so the object fetcher may
    reach them on 127.0.0.1 while callers' photo URLs stay behind the SSRF guard.
    """
    env.delenv("TRUSTED_HOSTS", raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP"):
        env.delenv(name, raising=False)
    env.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    env.setenv("NO_GCE_CHECK", "true")
    env.setenv("EVENT_TOKENS", EVENT_TOKEN)  # deliveries prove their sender by token (test_senders.py: all proofs)


@contextmanager
def moto_with_auth(objects: Mapping[tuple[str, str], bytes],
                   policies: Mapping[str, list[dict] | None], buckets: Sequence[str] = ()) -> Iterator[dict]:
    """moto's S3 + IAM on 127.0.0.1 with authentication enforced: private buckets holding ``objects``
    ((bucket, key) -> a JPEG), ``buckets`` more, and one IAM user per entry of ``policies`` with those
    statements (None: no policy at all). Yields the endpoint, each user's keys, and the client settings
    to make boto3 clients with (``client_kwargs``, without keys)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-test.txt)")
    boto3 = pytest.importorskip("boto3", reason="boto3 (moto's dependency) is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's accounts live in the process, not the server: start from none, whatever an earlier module made.
    requests.post(f"{endpoint}/moto-api/reset", timeout=5).raise_for_status()
    settings = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    admin = {**settings, "aws_access_key_id": "AKIAADMINADMINADMIN1", "aws_secret_access_key": "admin-secret"}
    iam, s3 = boto3.client("iam", **admin), boto3.client("s3", **admin)
    for bucket in dict.fromkeys([b for b, _ in objects] + list(buckets)):
        s3.create_bucket(Bucket=bucket)  # private: no bucket policy, no ACL grants
    for (bucket, key), body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg")
    keys = {}
    for user, statements in policies.items():
        iam.create_user(UserName=user)
        if statements is not None:
            iam.put_user_policy(UserName=user, PolicyName="policy", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": statements}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    previous = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5).json()
    try:
        yield {"endpoint": endpoint, "keys": keys, "client_kwargs": settings}
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth",
                      data=str(previous["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]).encode(), timeout=5)
        requests.post(f"{endpoint}/moto-api/reset", timeout=5)  # and leave none
        server.stop()


@contextmanager
def moto_s3() -> Iterator[dict]:
    """A private bucket 'birds' with two photos, a reader allowed s3:GetObject, a user without it."""
    objects = {("birds", KEY): photos.solid(photos.class_colour(ROBIN)),
               ("birds", "heron.jpg"): photos.solid(photos.class_colour(HERON))}
    read = [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::birds/*"}]
    with moto_with_auth(objects, {"classifier": read, "intern": None}) as moto:
        yield moto


@contextmanager
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator on a free loopback port, in memory, bucket 'birds' holding two photos."""
    emulator = pytest.importorskip("gcp_storage_emulator.server",
                                   reason="gcp-storage-emulator is not installed (requirements-test.txt)")
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="birds")
    server.start()
    base = f"http://127.0.0.1:{port}"
    for name, class_id in ((KEY, ROBIN), ("heron.jpg", HERON)):
        r = requests.post(f"{base}/upload/storage/v1/b/birds/o", params={"uploadType": "media", "name": name},
                          data=photos.solid(photos.class_colour(class_id)), headers={"Content-Type": "image/jpeg"},
                          timeout=10)
        r.raise_for_status()
    try:
        yield base
    finally:
        server.stop()


def s3_record(key: str, bucket: str = "birds", size: object = 1234) -> dict:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": quote(key).replace("%20", "+"), "size": size, "eTag": "x"}}}


def sns_envelope(message: dict | str, kind: str = "Notification", **extra) -> dict:
    return {"Type": kind, "MessageId": f"m-{kind}-{len(json.dumps(message))}",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:bird-uploads", "Subject": "Amazon S3 Notification",
            "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": "2026-11-28T06:00:00.000Z", "SignatureVersion": "1", "Signature": "c2ln",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe", **extra}


def sns_headers(kind: str = "Notification", raw: bool = False) -> dict:
    headers = {"x-amz-sns-message-type": kind, "x-amz-sns-topic-arn": "arn:aws:sns:us-east-1:123456789012:bird-uploads",
               "Content-Type": "text/plain; charset=UTF-8", "User-Agent": "Amazon Simple Notification Service Agent"}
    if raw:
        headers["x-amz-sns-rawdelivery"] = "true"
    return headers


def object_resource(name: str, content_type: str = "image/jpeg") -> dict:
    return {"kind": "storage#object", "id": f"birds/{name}/1", "name": name, "bucket": "birds",
            "generation": "1", "contentType": content_type, "size": "1234", "timeCreated": "2026-11-28T06:00:00Z"}


def pubsub_message(name: str, event_type: str = "OBJECT_FINALIZE", payload: str = "JSON_API_V1") -> dict:
    data = base64.b64encode(json.dumps(object_resource(name)).encode()).decode() if payload == "JSON_API_V1" else ""
    return {"message": {"data": data, "messageId": "1234567890", "message_id": "1234567890",
                        "publishTime": "2026-11-28T06:00:00.000Z", "publish_time": "2026-11-28T06:00:00.000Z",
                        "attributes": {"bucketId": "birds", "objectId": name, "eventType": event_type,
                                       "payloadFormat": payload, "notificationConfig":
                                       "projects/_/buckets/birds/notificationConfigs/1",
                                       "objectGeneration": "1", "eventTime": "2026-11-28T06:00:00Z"}},
            "subscription": "projects/p/subscriptions/bird-uploads-push"}
