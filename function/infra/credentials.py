"""Credentials for bucket objects: a bearer token for Cloud Storage, SigV4 for S3 / MinIO.

:class:`StoreAuth` is the object fetcher's session ``auth``: each request to a configured store is signed
just before it is sent, and a retry afresh. ``google-auth`` alone finds Application Default Credentials
and refreshes the token; ``botocore`` alone has the AWS credential chain and SigV4; the storage clients
would add many packages for one GET. Each library is imported on the first object read of its kind and
looks for credentials once (an S3-only service never probes the GCE metadata server); none found means
anonymous reads. Secrets never leave this module: identities are an email or an access key id's first
characters, and a 401/403 becomes the photo error ``access_denied`` naming the permission to grant.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
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
# bucket.s3.amazonaws.com, bucket.s3.eu-west-1.amazonaws.com, s3.eu-west-1..., bucket.s3-eu-west-1... (legacy)
_AWS_S3_HOST = re.compile(r"(?:.+\.)?s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com")


def _origin(url: str) -> str:
    """``scheme://host:port/path``, normalised: what a configured endpoint and a request URL share."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}/"


class Signer:
    """Signs requests to one kind of store with credentials found once, on first use; ``write``: for
    result writes (the write scope, and "written" in the log)."""

    store = "the store"
    permission = ""  # what a read needs

    def __init__(self, write: bool = False) -> None:
        self._lock = threading.Lock()
        self._resolved = False
        self._credentials: Any = None
        self.use = "written" if write else "read"

    def _resolve(self) -> None:
        """Look the credentials up (once); none found leaves them None: anonymous requests."""

    def _ensure(self) -> None:
        if not self._resolved:
            with self._lock:
                if not self._resolved:
                    self._resolve()
                    self._resolved = True

    def sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        self._ensure()
        if self._credentials is not None:
            self._sign(request, region)

    def _sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        raise NotImplementedError

    def identity(self) -> str:
        """Who the requests are made as, safe to show: an email or an access key id's prefix."""
        return ANONYMOUS if self._credentials is None else self._who()

    def _who(self) -> str:
        raise NotImplementedError


class GoogleSigner(Signer):
    """Application Default Credentials, as a bearer token (refreshed by google-auth when due)."""

    store = "Cloud Storage"
    permission = GCS_PERMISSION

    def __init__(self, write: bool = False) -> None:
        super().__init__(write)
        self._transport: Any = None
        self.scope = GCS_WRITE_SCOPE if write else GCS_SCOPE

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

    def _sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        import google.auth.exceptions

        with self._lock:  # one refresh at a time; the token is reused until it is nearly expired
            try:
                self._credentials.before_request(self._transport, request.method, request.url, request.headers)
            except google.auth.exceptions.GoogleAuthError as exc:
                raise CredentialsUnavailable(f"could not get a token for {self.identity()} "
                                             f"from Application Default Credentials: {type(exc).__name__}") from None

    def _who(self) -> str:
        email = getattr(self._credentials, "service_account_email", None)
        if email and email != "default":
            return f"service account {email}"
        return f"the default credentials ({type(self._credentials).__name__})"


class AwsSigner(Signer):
    """The AWS credential chain and SigV4 (service ``s3``), as boto3 would sign a GetObject."""

    store = "S3"
    permission = S3_PERMISSION
    default_region = "us-east-1"

    def region(self) -> str:
        """The region requests are signed for when the URL does not say (``AWS_REGION``...)."""
        self._ensure()
        return self.default_region

    def _resolve(self) -> None:
        import botocore.session  # type: ignore[import-untyped]  # here, not at import: a service without S3 buckets never loads it

        session = botocore.session.get_session()
        self._credentials = session.get_credentials()
        self.default_region = session.get_config_variable("region") or "us-east-1"
        if self._credentials is None:
            log.info("no AWS credentials found (environment, web identity, instance profile); "
                     "S3 objects are %s anonymously", self.use)
        else:
            log.info("S3 objects are %s as %s (credentials from %s)", self.use, self.identity(),
                     getattr(self._credentials, "method", "?"))

    def _sign(self, request: requests.PreparedRequest, region: str | None) -> None:
        from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped]  # no stubs shipped
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]  # no stubs shipped

        frozen = self._credentials.get_frozen_credentials()  # refreshes temporary credentials when due
        # The body and the headers S3 wants signed (x-amz-*) or checks (Content-MD5, Content-Type) of a write.
        headers = {name: value for name, value in request.headers.items()
                   if name.lower().startswith("x-amz-") or name.lower() in ("content-md5", "content-type")}
        aws = AWSRequest(method=request.method, url=request.url, data=request.body,
                         headers={"User-Agent": request.headers.get("User-Agent", ""), **headers})
        S3SigV4Auth(frozen, "s3", region or self.default_region).add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"):
            if name in aws.headers:
                request.headers[name] = aws.headers[name]

    def _who(self) -> str:
        key_id = str(getattr(self._credentials, "access_key", "") or "")
        return f"access key {key_id[:8]}…" if key_id else "the default credentials"


Route = tuple[Signer | None, str | None]  # the signer a store's requests get, and the S3 region to sign for


class StoreAuth(AuthBase):
    """Signs requests by their origin: Cloud Storage (``storage.googleapis.com`` or ``GCS_ENDPOINT``) with a
    bearer token, S3 (``S3_ENDPOINT``, ``*.amazonaws.com``) with SigV4, the storage emulator not at all (as
    Google's clients do). Any 401/403 is the photo error ``access_denied``."""

    def __init__(self, google: Signer | None, aws: Signer | None, gcs_endpoints: list[str],
                 s3_endpoint: str | None, anonymous_endpoints: list[str]):
        self.aws = aws
        routes: list[tuple[str, Route]] = [(_origin(e), (None, None)) for e in anonymous_endpoints]
        routes += [(_origin(e), (google, None)) for e in gcs_endpoints]
        routes += [(_origin(s3_endpoint), (aws, None))] if s3_endpoint else []
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
            return self.aws, None if region in (None, "external-1") else region
        return None, None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        signer, region = self.route(request.url or "")
        if signer is not None:
            signer.sign(request, region)
        request.hooks["response"].append(_refusal_check(signer))
        return request


_ERROR_CODE = re.compile(rb"<Code>([A-Za-z.]{1,64})</Code>")


def _refusal_check(signer: Signer | None) -> Callable[..., requests.Response]:
    def check(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if response.status_code not in (401, 403):
            return response
        store = signer.store if signer else "the storage host"
        who = signer.identity() if signer else "anonymously"
        permission = signer.permission if signer else "read access"
        try:  # the store's error code (S3's <Code>) from at most 4 KB, never its message: a courtesy
            head = response.raw.read(4096, decode_content=True) if response.raw is not None else b""
        except Exception:
            head = b""
        match = _ERROR_CODE.search(head or b"")
        response.close()
        raise AccessDenied(f"{store} answered HTTP {response.status_code}"
                           f"{f' ({match.group(1).decode()})' if match else ''} to a read as {who}: grant it "
                           f"{permission} on the object's bucket (docs/deploy.md, Bucket access and notifications)")

    return check
