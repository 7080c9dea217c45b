"""Stand-in signers of bucket deliveries, each with keys made here, serving what the function fetches
to verify them, on 127.0.0.1:

* :class:`GoogleIssuer`: Google's certificates endpoint (``{kid: PEM certificate}``, with Google's
  ``Cache-Control``) and ID tokens as Pub/Sub push and Eventarc send them.
* :class:`ClusterIssuer`: a Kubernetes service-account issuer as Knative Eventing's OIDC uses it:
  OIDC discovery, JWKS, and tokens for a sink's audience.
* :class:`SnsSigner`: SNS's signing certificate and signed envelopes (SignatureVersion 1 and 2).

Each counts what was fetched from it (``server.hits``), so tests see that keys are cached.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .server import Reply, StandInServer

GOOGLE_CERTS_PATH = "/oauth2/v1/certs"
SNS_CERT_PATH = "/SimpleNotificationService-0123456789abcdef.pem"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key: rsa.RSAPrivateKey, name: str) -> bytes:
    """A self-signed PEM certificate for ``key``, valid from an hour ago for a day."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def unsigned(claims: dict[str, Any], kid: str = "k1") -> str:
    """A JWT with ``alg: none`` and no signature, as a forger would send."""
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{part(claims)}."


class _Issuer:
    def __init__(self) -> None:
        self.key = rsa_key()
        self.kid = uuid.uuid4().hex
        self.server = StandInServer()

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def sign(self, claims: dict[str, Any], key: rsa.RSAPrivateKey | None = None, kid: str | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})


class GoogleIssuer(_Issuer):
    """Google's ID tokens: ``iss`` accounts.google.com, ``aud`` the push endpoint, ``email`` the account."""

    def __init__(self) -> None:
        super().__init__()
        self.server.add(GOOGLE_CERTS_PATH, json.dumps({self.kid: certificate(self.key, "google").decode()}),
                        "application/json", headers={"Cache-Control": "public, max-age=19000, must-revalidate"})

    @property
    def certs_url(self) -> str:
        return self.server.url(GOOGLE_CERTS_PATH)

    def token(self, audience: str, email: str, *, expires_in: float = 3600, verified: bool = True,
              issuer: str = "https://accounts.google.com", key: rsa.RSAPrivateKey | None = None) -> str:
        now = int(time.time())
        return self.sign({"iss": issuer, "aud": audience, "azp": "1234567890", "sub": "1234567890",
                          "email": email, "email_verified": verified, "iat": now - 60, "exp": int(now + expires_in)},
                         key)


class ClusterIssuer(_Issuer):
    """A cluster's service-account issuer: discovery at ``/.well-known/openid-configuration``, keys at ``/keys``."""

    def __init__(self) -> None:
        super().__init__()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        self.server.add("/.well-known/openid-configuration",
                        lambda req: _json({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/keys",
                                           "id_token_signing_alg_values_supported": ["RS256"]}))
        self.server.add("/keys", json.dumps({"keys": [jwk]}), "application/json",
                        headers={"Cache-Control": "max-age=600"})

    @property
    def issuer(self) -> str:
        return self.server.url("")

    def token(self, audience: str, subject: str, *, expires_in: float = 3600, issuer: str | None = None,
              key: rsa.RSAPrivateKey | None = None) -> str:
        now = int(time.time())
        return self.sign({"iss": issuer or self.issuer, "aud": [audience], "sub": subject, "iat": now - 60,
                          "nbf": now - 60, "exp": int(now + expires_in)}, key)


class SnsSigner(_Issuer):
    """SNS's signing certificate, served at a ``SimpleNotificationService-*.pem`` path, and its signatures."""

    def __init__(self) -> None:
        super().__init__()
        self.server.add(SNS_CERT_PATH, certificate(self.key, "sns.amazonaws.com"), "application/x-x509-ca-cert")

    @property
    def cert_url(self) -> str:
        return self.server.url(SNS_CERT_PATH)

    def signed(self, doc: dict[str, Any], version: str = "1", cert_url: str | None = None,
               key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        """``doc`` with SNS's SignatureVersion, SigningCertURL and Signature over its signed fields."""
        fields = (("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type") if doc["Type"] == "Notification"
                  else ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"))
        text = "".join(f"{name}\n{doc[name]}\n" for name in fields if name in doc).encode()
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(text, padding.PKCS1v15(), digest)
        return {**doc, "SignatureVersion": version, "SigningCertURL": cert_url or self.cert_url,
                "Signature": base64.b64encode(signature).decode()}


def _json(doc: dict[str, Any]) -> Reply:
    return Reply(json.dumps(doc).encode(), 200, "application/json", {"Cache-Control": "max-age=600"})
