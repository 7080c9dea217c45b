"""Credentials for reading bucket objects: a bearer token for Cloud Storage, SigV4 for S3 / MinIO.

Objects are read through the same kind of :class:`~function.infra.fetch.HttpFetcher` as photo URLs (same
size limit, deadline and retries); :class:`StoreAuth` is that fetcher's session's ``auth``, so each
request to a configured store is signed just before it is sent, and a retry is signed afresh.

Why these libraries and not the storage clients: ``google-auth`` (1.8 MB) alone finds Application
Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, Workload Identity and the metadata server,
``GCE_METADATA_HOST``) and refreshes the token; ``botocore`` alone (no boto3, no s3transfer) has
the standard AWS chain (environment keys, web identity / IRSA, container and instance profiles) and
SigV4. google-cloud-storage would add google-api-core, protobuf and grpc-adjacent packages for one
GET. Both libraries are imported on the first object read of their kind, never at start-up, and
each looks for credentials once: an S3-only service never probes the GCE metadata server, a
GCS-only one never loads botocore. No credentials found means anonymous reads (public objects).

The libraries read their own environment variables (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``GCE_METADATA_HOST``...), as tensorflow_hub reads ``TFHUB_CACHE_DIR``.

Secrets never leave this module: identities are described by the service account's email or the
first characters of the access key id, and a 401/403 from a store becomes the photo error
``access_denied`` naming that identity and the permission to grant.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from ..errors import AccessDenied, CredentialsUnavailable

log = logging.getLogger(__name__)

GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
GCS_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"  # result documents, metadata
GCS_PERMISSION = "storage.objects.get"
S3_PERMISSION = "s3:GetObject"
ANONYMOUS = "anonymous (no credentials found)"
# AWS virtual-hosted or path-style endpoints: bucket.s3.amazonaws.com, bucket.s3.eu-west-1.amazonaws.com,
# s3.eu-west-1.amazonaws.com, bucket.s3-eu-west-1.amazonaws.com (legacy).
_AWS_S3_HOST = re.compile(r"(?:.+\.)?s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com")


def _origin(url: str) -> str:
    """``scheme://host:port/path``, normalised: what a configured endpoint and a request URL share."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}/"


class Signer:
    """Signs requests to one kind of store with credentials found once, on first use."""

    store = "the store"
    permission = ""
    use = "read"  # what its requests do, for the log: "read", or "written" for result writes

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resolved = False

    def _resolve(self) -> None:
        """Look the credentials up (once); none found leaves them None: anonymous reads."""

    def _ensure(self) -> None:
        if not self._resolved:
            with self._lock:
                if not self._resolved:
                    self._resolve()
                    self._resolved = True

    def sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        raise NotImplementedError

    def identity(self) -> str:
        """Who the requests are made as, safe to show: an email or an access key id's prefix."""
        raise NotImplementedError


class GoogleSigner(Signer):
    """Application Default Credentials, as a bearer token (refreshed by google-auth when due)."""

    store = "Cloud Storage"
    permission = GCS_PERMISSION

    def __init__(self, scope: str = GCS_SCOPE, permission: str = GCS_PERMISSION) -> None:
        super().__init__()
        self._credentials: Any = None
        self._transport: Any = None
        self.scope, self.permission = scope, permission
        self.use = "read" if scope == GCS_SCOPE else "written"

    def _resolve(self) -> None:
        import google.auth  # here, not at import: a service without GCS buckets never loads it
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        try:
            credentials, _ = google.auth.default(scopes=[self.scope])
        except google.auth.exceptions.DefaultCredentialsError:
            log.info("no Google credentials found (Application Default Credentials); "
                     "Cloud Storage objects are %s anonymously", self.use)
            return
        # google-auth's own session: the metadata server is link-local, which the SSRF guard refuses.
        self._credentials, self._transport = credentials, Request()
        log.info("Cloud Storage objects are %s as %s", self.use, self.identity())

    def sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        self._ensure()
        if self._credentials is None:
            return
        import google.auth.exceptions

        with self._lock:  # one refresh at a time; the token is reused until it is nearly expired
            try:
                self._credentials.before_request(self._transport, request.method, request.url, request.headers)
            except google.auth.exceptions.GoogleAuthError as exc:
                raise CredentialsUnavailable(f"could not get a token for {self.identity()} "
                                             f"from Application Default Credentials: {type(exc).__name__}") from None

    def identity(self) -> str:
        if self._credentials is None:
            return ANONYMOUS
        email = getattr(self._credentials, "service_account_email", None)
        if email and email != "default":
            return f"service account {email}"
        return f"the default credentials ({type(self._credentials).__name__})"


class AwsSigner(Signer):
    """The AWS credential chain and SigV4 (service ``s3``), as boto3 would sign a GetObject."""

    store = "S3"
    permission = S3_PERMISSION

    def __init__(self, default_region: str | None = None, permission: str = S3_PERMISSION) -> None:
        super().__init__()
        self._credentials: Any = None
        self.default_region = default_region
        self.permission = permission
        self.use = "read" if permission == S3_PERMISSION else "written"

    def region(self) -> str:
        """The region requests are signed for when the URL does not say (``AWS_REGION``...)."""
        self._ensure()
        return self.default_region or "us-east-1"

    def _resolve(self) -> None:
        import botocore.session  # type: ignore[import-untyped]  # here, not at import: a service without S3 buckets never loads it

        session = botocore.session.get_session()
        self._credentials = session.get_credentials()
        self.default_region = self.default_region or session.get_config_variable("region") or "us-east-1"
        if self._credentials is None:
            log.info("no AWS credentials found (environment, web identity, instance profile); "
                     "S3 objects are %s anonymously", self.use)
        else:
            log.info("S3 objects are %s as %s (credentials from %s)", self.use, self.identity(),
                     getattr(self._credentials, "method", "?"))

    def sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        self._ensure()
        if self._credentials is None:
            return
        from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped]  # no stubs shipped
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]  # no stubs shipped

        frozen = self._credentials.get_frozen_credentials()  # refreshes temporary credentials when due
        # The body and the headers S3 wants signed (x-amz-*) or checks (Content-MD5, Content-Type) of a write.
        headers = {name: value for name, value in request.headers.items()
                   if name.lower().startswith("x-amz-") or name.lower() in ("content-md5", "content-type")}
        aws = AWSRequest(method=request.method, url=request.url, data=request.body,
                         headers={"User-Agent": request.headers.get("User-Agent", ""), **headers})
        S3SigV4Auth(frozen, "s3", region or self.default_region or "us-east-1").add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"):
            if name in aws.headers:
                request.headers[name] = aws.headers[name]

    def identity(self) -> str:
        if self._credentials is None:
            return ANONYMOUS
        key_id = str(getattr(self._credentials, "access_key", "") or "")
        return f"access key {key_id[:8]}…" if key_id else "the default credentials"


@dataclass(frozen=True)
class Route:
    """Which signer a store's requests get, and the region to sign for (S3)."""

    signer: Signer | None
    region: str | None = None


class StoreAuth(AuthBase):
    """A session ``auth`` for the object fetcher: signs requests to configured stores.

    Routes by the request's origin (scheme, host, port): Cloud Storage (``storage.googleapis.com``
    or ``GCS_ENDPOINT``) gets a bearer token, S3 endpoints (``S3_ENDPOINT``, ``*.amazonaws.com``)
    get SigV4; the storage emulator is read anonymously, as Google's clients do. Any 401/403 is
    answered with the photo error ``access_denied``.
    """

    def __init__(self, google: Signer | None, aws: Signer | None, gcs_endpoints: list[str],
                 s3_endpoint: str | None, anonymous_endpoints: list[str]):
        self.google, self.aws = google, aws
        routes = [(_origin(e), Route(None)) for e in anonymous_endpoints]
        routes += [(_origin(e), Route(google)) for e in gcs_endpoints]
        routes += [(_origin(s3_endpoint), Route(aws))] if s3_endpoint else []
        # The longest prefix wins: an S3 endpoint under a path of the emulator's host is still S3.
        self._routes = sorted(routes, key=lambda r: len(r[0]), reverse=True)

    def route(self, url: str) -> Route:
        where = _origin(url.split("?", 1)[0])
        for prefix, route in self._routes:
            if where.startswith(prefix):
                return route
        host = urlsplit(url).hostname or ""
        match = _AWS_S3_HOST.fullmatch(host)
        if match and url.startswith("https://"):
            region = match.group("region")
            return Route(self.aws, None if region in (None, "external-1") else region)
        return Route(None)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        route = self.route(request.url or "")
        if route.signer is not None:
            route.signer.sign(request, route.region)
        request.hooks["response"].append(_refusal_check(route))
        return request


_ERROR_CODE = re.compile(rb"<Code>([A-Za-z.]{1,64})</Code>")


def _refusal_check(route: Route) -> Callable[..., requests.Response]:
    def check(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if response.status_code not in (401, 403):
            return response
        signer = route.signer
        store = signer.store if signer else "the storage host"
        who = signer.identity() if signer else "anonymously"
        permission = signer.permission if signer else "read access"
        detail = _store_code(response)
        response.close()
        raise AccessDenied(f"{store} answered HTTP {response.status_code}"
                           f"{f' ({detail})' if detail else ''} to a read as {who}: grant it {permission} "
                           "on the object's bucket (docs/deploy.md, Bucket access and notifications)")

    return check


def _store_code(response: requests.Response) -> str | None:
    """The store's error code (S3's ``<Code>``), from at most 4 KB of the answer; never its message."""
    try:
        head = response.raw.read(4096, decode_content=True) if response.raw is not None else b""
    except Exception:  # the code is a courtesy; the status says enough
        return None
    match = _ERROR_CODE.search(head or b"")
    return match.group(1).decode() if match else None
