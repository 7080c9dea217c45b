"""Who sent a bucket delivery: each platform's proof, verified before the function uses its credentials
(README, "Who may deliver"): Google-signed ID tokens (Pub/Sub push, Eventarc), SNS message signatures,
shared secrets (MinIO's webhook ``auth_token``, SNS raw delivery's basic auth) and Knative Eventing's OIDC
tokens. SNS's certificates are fetched only from SNS's own endpoints (PyPI's SNS validators are
unmaintained and hard-code the host). Keys are kept for their ``max-age``; libraries load on first need.

No accepted proof is :class:`~function.errors.SenderUnproven` (401), a sender not listed
:class:`~function.errors.SenderNotAllowed` (403), both with a reason from a fixed set, never the proof;
keys that cannot be fetched are :class:`~function.errors.SenderKeysUnavailable` (503: the broker retries).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import requests
import urllib3

from ..config import Config
from ..errors import SenderKeysUnavailable, SenderNotAllowed, SenderUnproven
from .deadlines import Deadlines
from .fetch import CutOff

log = logging.getLogger(__name__)

GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CLOCK_SKEW_S = 30  # between the signer's clock and this one
MAX_KEY_DOCUMENT_BYTES = 256 * 1024  # a JWKS, a discovery document, a PEM certificate: a few KB each
# An unknown key id refetches the JWKS (rotated keys) at most this often: made-up key ids cannot hammer the issuer.
JWKS_REFRESH_S = 60.0
JWKS_DEFAULT_MAX_AGE_S = 300.0
JWKS_MAX_AGE_CAP_S = 3600.0
OIDC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]  # never "none", never HMAC
SNS_CERTS_KEPT = 16  # SNS signs with one certificate per region at a time
# A certificate URL that held no usable certificate is refused without a fetch for this long, and an unknown
# URL is fetched at most this often: forged deliveries naming new URLs cannot make SNS's hosts be hammered.
SNS_CERT_REFUSED_S = 600.0
SNS_CERT_FETCH_INTERVAL_S = 1.0
SNS_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
SNS_OPTIONAL = {"Subject"}
_MAX_AGE = re.compile(r"max-age=(\d+)")
_NAMES = {"cloudevent": "CloudEvent delivery", "pubsub": "Pub/Sub push", "sns": "SNS message",
          "s3": "S3 / MinIO notification"}


def unproven(envelope: str, reason: str, why: str) -> SenderUnproven:
    return SenderUnproven.of(envelope, reason, f"{_NAMES.get(envelope, envelope)} refused: {why}")


def not_allowed(envelope: str, why: str) -> SenderNotAllowed:
    return SenderNotAllowed.of(envelope, "not_allowed", f"{_NAMES.get(envelope, envelope)} refused: {why}")


class Senders:
    """The proofs this configuration accepts, and the keys that verify them (cached for the process)."""

    def __init__(self, config: Config, deadlines: Deadlines | None = None):
        self.proofs = config.event_proofs()
        deadlines = deadlines or Deadlines()
        self.trusted_route = self.proofs == ("none",)
        # Only the proofs EVENT_AUTH lists: a secret left in EVENT_TOKENS proves nothing once "token" is not.
        self._tokens = tuple(token.encode() for token in config.event_tokens) if "token" in self.proofs else ()
        timeout = config.event_keys_timeout_s
        self._google = (GoogleTokens(config.event_audiences, config.event_service_accounts, config.google_certs_url,
                                     timeout) if "google" in self.proofs else None)
        self._sns = (SnsSignatures(config.sns_topic_arns, config.sns_cert_url, timeout, deadlines)
                     if "sns" in self.proofs else None)
        self._cluster = (ClusterTokens(config, timeout, deadlines) if "oidc" in self.proofs and config.event_oidc_issuer
                         else None)
        if self.trusted_route:
            log.warning("EVENT_AUTH=none: bucket deliveries are taken without proof of their sender; this route "
                        "must be reachable only by the platform (a cluster-local Service, IAM in front)")
        elif not self.proofs:  # INFO: the command line builds an app too, and takes no deliveries
            log.info("no EVENT_AUTH proof is configured: every bucket delivery is refused (README, "
                     "'Who may deliver')")

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: which proofs are taken, and whether the route is declared trusted instead."""
        return {"proofs": [p for p in self.proofs if p != "none"], "trusted_route": self.trusted_route}

    def check(self, envelope: str, headers: Mapping[str, str], signed: Mapping[str, Any] | None = None) -> str:
        """Who sent the delivery (for logs), or an error. ``signed``: an SNS envelope (signed itself); every
        other delivery proves its sender in its ``Authorization`` header."""
        if self.trusted_route:
            return "trusted route (EVENT_AUTH=none)"
        if signed is not None:
            if self._sns is None:
                raise unproven(envelope, "not_accepted", "SNS signatures are not among the proofs EVENT_AUTH "
                               f"takes ({self._accepted()})")
            return self._sns.verify(envelope, signed)
        scheme, credential = _authorization(headers)
        if not credential:
            raise unproven(envelope, "no_proof", f"it carries no proof of its sender (Authorization header); "
                           f"accepted: {self._accepted()}")
        if scheme == "basic":
            return self._token(envelope, _basic_password(credential))
        if scheme != "bearer":
            raise unproven(envelope, "malformed", "the Authorization scheme is neither Bearer nor Basic")
        if credential.count(".") != 2 or self._matching_token(credential):  # a shared secret, or ours shaped like a JWT
            return self._token(envelope, credential)
        claims = _unverified_claims(credential)
        if claims is None:
            raise unproven(envelope, "malformed", "its bearer token is not a well-formed JWT")
        issuer = claims.get("iss")
        if issuer in GOOGLE_ISSUERS and self._google is not None:
            return self._google.verify(envelope, credential)
        if self._cluster is not None and issuer == self._cluster.issuer:
            return self._cluster.verify(envelope, credential)
        raise unproven(envelope, "issuer", f"its token's issuer is not one EVENT_AUTH takes ({self._accepted()})")

    def _token(self, envelope: str, presented: str) -> str:
        if not self._tokens:
            raise unproven(envelope, "not_accepted", f"shared tokens are not among the proofs EVENT_AUTH takes "
                           f"({self._accepted()})")
        matched = self._matching_token(presented)
        if not matched:
            raise unproven(envelope, "token", "its token is not one of EVENT_TOKENS")
        return f"EVENT_TOKENS #{matched}"

    def _matching_token(self, presented: str) -> int:
        """Which of ``EVENT_TOKENS`` (1-based) ``presented`` is, or 0. Every one is compared, in constant
        time, so the time says nothing of which matched or how much."""
        given = presented.encode("utf-8", "surrogateescape")
        matched = 0
        for i, token in enumerate(self._tokens, 1):
            if hmac.compare_digest(given, token):
                matched = i
        return matched

    def _accepted(self) -> str:
        return ", ".join(self.proofs) or "none configured: set EVENT_AUTH and its settings"


def _authorization(headers: Mapping[str, str]) -> tuple[str, str]:
    value = next((v for name, v in headers.items() if name.lower() == "authorization"), "")
    scheme, _, credential = value.strip().partition(" ")
    return scheme.lower(), credential.strip()


def _basic_password(credential: str) -> str:
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""
    return decoded.partition(":")[2]


def _unverified_claims(token: str) -> dict[str, Any] | None:
    """What a JWT claims, unverified (None if malformed): only to pick its keys or say why it failed."""
    import jwt

    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None


def _max_age(headers: Mapping[str, str], default: float) -> float:
    match = _MAX_AGE.search(headers.get("Cache-Control", ""))
    return min(float(match.group(1)), JWKS_MAX_AGE_CAP_S) if match else default


def _bounded_get(cut: CutOff, url: str, timeout: float,
                 **kwargs: Any) -> tuple[bytes, Mapping[str, str]]:
    """A key document's body and headers: no redirects, a bounded body, the connection shut down at
    ``timeout`` whatever it is waiting for (connect, headers, body); any failure is a 503."""
    try:
        with cut.within(timeout) as watch, cut.session.get(url, timeout=timeout, allow_redirects=False,
                                                           stream=True, **kwargs) as response:
            body = b""
            while len(body) <= MAX_KEY_DOCUMENT_BYTES and (chunk := response.raw.read1(16384, decode_content=True)):
                body += chunk
        if watch.fired:  # the shutdown can look like the end of the body
            raise requests.Timeout("the key document took longer than its timeout to arrive")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:  # the body broken off too
        raise SenderKeysUnavailable(f"could not fetch the keys that verify deliveries: {type(exc).__name__}") from None
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise KeyDocumentMissing(f"the keys that verify deliveries are not there: HTTP {response.status_code}")
    if response.status_code != 200 or len(body) > MAX_KEY_DOCUMENT_BYTES:
        raise SenderKeysUnavailable(f"the keys that verify deliveries could not be had: HTTP {response.status_code}")
    return body, response.headers


class KeyDocumentMissing(SenderKeysUnavailable):
    """A 4xx: for a URL the delivery chose (SNS's SigningCertURL) that proves nothing, for a configured one a 503."""


class GoogleTokens:
    """Pub/Sub push and Eventarc: the ID token Google signs for the subscription's service account."""

    def __init__(self, audiences: tuple[str, ...], accounts: frozenset[str], certs_url: str, timeout: float):
        self._audiences, self._accounts, self._certs_url, self._timeout = list(audiences), accounts, certs_url, timeout
        self._request: Any = None  # google-auth's transport, built on first use
        self._lock = threading.Lock()

    def _transport(self) -> Any:
        with self._lock:
            if self._request is None:
                from cachecontrol import CacheControl
                from google.auth.transport.requests import Request

                # CacheControl keeps Google's certificates for their max-age (hours), so a delivery costs no
                # fetch; the timeout replaces google-auth's 120 s.
                self._request = functools.partial(Request(CacheControl(requests.Session())), timeout=self._timeout)
            return self._request

    def verify(self, envelope: str, token: str) -> str:
        import google.auth.exceptions
        from google.oauth2 import id_token

        try:
            claims = id_token.verify_token(token, self._transport(), audience=self._audiences,
                                           certs_url=self._certs_url, clock_skew_in_seconds=CLOCK_SKEW_S)
        except google.auth.exceptions.TransportError:
            raise SenderKeysUnavailable("could not fetch Google's certificates to verify the delivery") from None
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            reason = _claims_reason(token, self._audiences)
            raise unproven(envelope, reason, f"its Google ID token does not verify ({reason})") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:  # verify_token checks no issuer; the routing read it unverified
            raise unproven(envelope, "issuer", "its ID token is not issued by Google")
        email = claims.get("email")
        if claims.get("email_verified") is not True or email not in self._accounts:
            raise not_allowed(envelope, f"its ID token names {str(email)[:120]!r}, not a service account listed "
                              "in EVENT_SERVICE_ACCOUNTS")
        return str(email)


def _claims_reason(token: str, audiences: list[str]) -> str:
    """Why a token that failed verification failed, from what it claims (for logs and metrics only)."""
    claims = _unverified_claims(token)
    if claims is None:
        return "malformed"
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp < time.time() - CLOCK_SKEW_S:
        return "expired"
    aud = claims.get("aud")
    if not (aud in audiences or (isinstance(aud, list) and set(aud) & set(audiences))):
        return "audience"
    return "signature"


class ClusterTokens:
    """A Broker's or Channel's deliveries with Knative's OIDC feature on: a JWT from the cluster issuer."""

    def __init__(self, config: Config, timeout: float, deadlines: Deadlines):
        assert config.event_oidc_issuer
        self.issuer = config.event_oidc_issuer
        self._audiences, self._subjects = list(config.event_oidc_audiences), config.event_oidc_subjects
        self._ca_file, self._token_file = config.event_oidc_ca_file, config.event_oidc_token_file
        self._timeout = timeout
        self._cut = CutOff(requests.Session(), deadlines)
        self._lock = threading.Lock()
        self._keys: Any = None  # a PyJWKSet
        self._fetched, self._expires = 0.0, 0.0

    def verify(self, envelope: str, token: str) -> str:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unproven(envelope, "malformed", "its bearer token is not a well-formed JWT") from None
        if header.get("alg") not in OIDC_ALGORITHMS:
            raise unproven(envelope, "signature", f"its token's algorithm {str(header.get('alg'))[:20]!r} is not "
                           "one an OIDC issuer signs with")
        key = self._key(envelope, header.get("kid"))
        try:
            claims = jwt.decode(token, key, algorithms=OIDC_ALGORITHMS, audience=self._audiences, issuer=self.issuer,
                                leeway=CLOCK_SKEW_S, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise unproven(envelope, "expired", "its OIDC token has expired") from None
        except jwt.InvalidAudienceError:
            raise unproven(envelope, "audience", "its OIDC token is for another audience") from None
        except jwt.MissingRequiredClaimError:
            raise unproven(envelope, "malformed", "its OIDC token lacks exp, iss, aud or sub") from None
        except jwt.PyJWTError:
            raise unproven(envelope, "signature", "its OIDC token's signature does not verify") from None
        subject = claims.get("sub")
        if subject not in self._subjects:
            raise not_allowed(envelope, f"its OIDC token's subject {str(subject)[:200]!r} is not listed in "
                              "EVENT_OIDC_SUBJECTS")
        return str(subject)

    def _key(self, envelope: str, kid: object) -> Any:
        with self._lock:
            now = time.monotonic()
            if self._keys is None or now >= self._expires:
                self._refresh(now)
            found = self._find(kid)
            if found is None and now - self._fetched >= JWKS_REFRESH_S:  # the issuer may have rotated its keys
                self._refresh(now)
                found = self._find(kid)
        if found is None:
            raise unproven(envelope, "signature", "its OIDC token is signed with a key the issuer does not publish")
        return found

    def _find(self, kid: object) -> Any:
        for key in self._keys.keys:
            if key.key_id == kid and key.public_key_use in ("sig", None):
                return key
        return None

    def _refresh(self, now: float) -> None:
        import jwt

        kwargs: dict[str, Any] = {"verify": self._ca_file or True}
        if self._token_file:
            try:
                with open(self._token_file, encoding="utf-8") as f:  # re-read: the kubelet rotates it
                    kwargs["headers"] = {"Authorization": f"Bearer {f.read().strip()}"}
            except OSError as exc:
                raise SenderKeysUnavailable(f"EVENT_OIDC_TOKEN_FILE cannot be read: {exc.strerror}") from None
        discovery, _ = _bounded_get(self._cut, f"{self.issuer.rstrip('/')}/.well-known/openid-configuration",
                                    self._timeout, **kwargs)
        try:
            doc = json.loads(discovery)
            jwks_uri = doc["jwks_uri"] if doc.get("issuer") == self.issuer else None
        except (ValueError, KeyError, TypeError, AttributeError):
            jwks_uri = None
        if not isinstance(jwks_uri, str):
            raise SenderKeysUnavailable("the OIDC discovery document does not name this issuer and its jwks_uri")
        jwks, headers = _bounded_get(self._cut, jwks_uri, self._timeout, **kwargs)
        try:
            self._keys = jwt.PyJWKSet.from_dict(json.loads(jwks))
        except (ValueError, TypeError, jwt.PyJWTError):
            raise SenderKeysUnavailable("the issuer's JWKS holds no usable key") from None
        self._fetched, self._expires = now, now + _max_age(headers, JWKS_DEFAULT_MAX_AGE_S)


class SnsSignatures:
    """SNS's HTTP(S) deliveries: the envelope's signature, by the certificate SNS publishes for it."""

    def __init__(self, topics: frozenset[str], cert_url: str, timeout: float, deadlines: Deadlines):
        self._topics, self._cert_url, self._timeout = topics, re.compile(cert_url), timeout
        self._cut = CutOff(requests.Session(), deadlines)
        self._certs: OrderedDict[str, Any] = OrderedDict()  # URL -> public key, newest last
        self._refused: OrderedDict[str, float] = OrderedDict()  # URL -> when it held no usable certificate
        self._next_fetch = 0.0  # monotonic time before which no unknown URL is fetched
        self._lock = threading.Lock()

    def verify(self, envelope: str, doc: Mapping[str, Any]) -> str:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        kind = doc.get("Type")
        fields = SNS_SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
        hash_ = {"1": hashes.SHA1, "2": hashes.SHA256}.get(str(doc.get("SignatureVersion")))
        if fields is None or hash_ is None:
            raise unproven(envelope, "malformed", "it is not a signed SNS message (Type, SignatureVersion 1 or 2)")
        text = []
        for name in fields:
            value = doc.get(name)
            if value is None and name in SNS_OPTIONAL:
                continue
            if not isinstance(value, str):
                raise unproven(envelope, "malformed", f"its signed field {name} is missing or not text")
            text.append(f"{name}\n{value}\n")
        try:
            signature = base64.b64decode(str(doc.get("Signature") or ""), validate=True)
        except (binascii.Error, ValueError):
            signature = b""
        if not signature:
            raise unproven(envelope, "malformed", "its Signature is missing or not base64")
        url = doc.get("SigningCertURL")
        if not isinstance(url, str) or not self._cert_url.fullmatch(url):
            raise unproven(envelope, "cert_url", "its SigningCertURL is not a certificate on an SNS endpoint "
                           "(https://sns.REGION.amazonaws.com/...pem); nothing was fetched")
        key = self._public_key(envelope, url)
        try:
            key.verify(signature, "".join(text).encode(), padding.PKCS1v15(), hash_())
        except (InvalidSignature, TypeError, ValueError):
            raise unproven(envelope, "signature", "its signature does not verify") from None
        topic = doc.get("TopicArn")
        if topic not in self._topics:
            raise not_allowed(envelope, f"topic {str(topic)[:200]!r} is not listed in SNS_TOPIC_ARNS")
        return str(topic)

    def _public_key(self, envelope: str, url: str) -> Any:
        """The key of the certificate at ``url`` (on SNS's pattern), kept once fetched. Only failing to reach
        it is a 503; a URL holding no usable certificate proves nothing (401) and is not fetched again soon."""
        now = time.monotonic()
        with self._lock:
            key = self._certs.get(url)
            if key is not None:
                self._certs.move_to_end(url)
                return key
            refused = self._refused.get(url)
            if refused is not None and now - refused < SNS_CERT_REFUSED_S:
                raise unproven(envelope, "cert", "its SigningCertURL held no usable certificate")
            if now < self._next_fetch:
                raise SenderKeysUnavailable("an SNS signing certificate was fetched less than "
                                            f"{SNS_CERT_FETCH_INTERVAL_S:g} s ago; deliver again")
            self._next_fetch = now + SNS_CERT_FETCH_INTERVAL_S
        try:
            key = _rsa_key(_bounded_get(self._cut, url, self._timeout)[0])
        except KeyDocumentMissing:
            key = None
        with self._lock:
            kept: OrderedDict[str, Any] = self._refused if key is None else self._certs
            kept[url] = now if key is None else key
            while len(kept) > SNS_CERTS_KEPT:
                kept.popitem(last=False)
        if key is None:
            raise unproven(envelope, "cert", "its SigningCertURL held no usable certificate")
        return key


def _rsa_key(pem: bytes) -> Any:
    """The RSA key of a PEM certificate valid now, or None."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    now = time.time()
    if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
        return None
    key = cert.public_key()
    return key if isinstance(key, rsa.RSAPublicKey) else None


def sns_envelope(doc: Mapping[str, Any]) -> bool:
    """Whether a body is an SNS envelope (which carries its own signature) rather than a raw delivery."""
    return doc.get("Type") in SNS_SIGNED_FIELDS and "Signature" in doc
