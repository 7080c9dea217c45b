"""The documents the HTTP target serves besides results: the web page and the OpenAPI contract.

Both are read from disk once, on first use (:func:`documents`), so a request only copies bytes.
The page is one HTML file with its CSS and JavaScript inline; its Content-Security-Policy allows
exactly those inline blocks (by hash) and nothing from elsewhere but photos to show as thumbnails.
The contract is ``openapi.yaml`` at the repository root, served as JSON.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask

PAGE_PATH = Path(__file__).resolve().parent / "static" / "index.html"
SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"


def _hashes(tag: str, html: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def content_security_policy(html: str) -> str:
    """Nothing runs or styles the page but its own inline blocks; it talks only to this origin.

    Thumbnails are the photos themselves: from the pasted URLs (any http/https host) or from the
    chosen files (``blob:``).
    """
    return "; ".join([
        "default-src 'none'",
        f"script-src {_hashes('script', html)}",
        f"style-src {_hashes('style', html)}",
        "img-src http: https: blob:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ])


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    import yaml  # here: the contract is read on its first request, not on a cold start's path

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        spec: dict[str, Any] = yaml.load(f, Loader=loader)
        return spec


@dataclass(frozen=True)
class Documents:
    page: bytes
    page_csp: str
    spec_json: bytes

    @classmethod
    def load(cls, page_path: Path = PAGE_PATH, spec_path: Path = SPEC_PATH) -> Documents:
        page = page_path.read_bytes()
        return cls(page, content_security_policy(page.decode()),
                   json.dumps(load_spec(spec_path), separators=(",", ":")).encode())


@functools.cache
def documents() -> Documents:
    """The documents as shipped with the package: immutable, read on first use and kept."""
    return Documents.load()


def wants_page(request: flask.Request) -> bool:
    """A browser (or anything that takes HTML) asking ``GET /`` without photos gets the page; a client
    that asks for JSON only keeps getting the 400 that says how to ask for results."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best != "application/json"


def page_response() -> flask.Response:
    docs = documents()
    response = flask.Response(docs.page, 200, mimetype="text/html")
    response.headers.update({
        "Content-Security-Policy": docs.page_csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # thumbnails are fetched from photo hosts
        "Cache-Control": "no-cache",
    })
    return response


def openapi_response() -> flask.Response:
    response = flask.Response(documents().spec_json, 200, mimetype="application/json")
    response.headers["Access-Control-Allow-Origin"] = "*"  # for API explorers on other origins
    return response
