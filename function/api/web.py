"""The documents the HTTP target serves besides results: the web page and the OpenAPI contract.

Each is read from disk once, on first use. The page is one HTML file with its CSS and JavaScript
inline; its Content-Security-Policy allows exactly those blocks (by hash) and photos as thumbnails.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from pathlib import Path

import flask

PAGE_PATH = Path(__file__).resolve().parent / "static" / "index.html"
SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"


def _hashes(tag: str, html: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def content_security_policy(html: str) -> str:
    """Nothing runs or styles the page but its own inline blocks; it talks only to this origin.
    Thumbnails are the photos themselves: pasted URLs (any http/https host) or chosen files (``blob:``)."""
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


@functools.cache
def _page() -> tuple[bytes, str]:
    page = PAGE_PATH.read_bytes()
    return page, content_security_policy(page.decode())


@functools.cache
def _spec_json() -> bytes:
    import yaml  # here: the contract is read on its first request, not on a cold start's path

    with open(SPEC_PATH, encoding="utf-8") as f:
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return json.dumps(spec, separators=(",", ":")).encode()


def wants_page(request: flask.Request) -> bool:
    """A browser (or anything that takes HTML) asking ``GET /`` without photos gets the page; a client
    that asks for JSON only keeps getting the 400 that says how to ask for results."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best != "application/json"


def page_response() -> flask.Response:
    page, csp = _page()
    response = flask.Response(page, 200, mimetype="text/html")
    response.headers.update({
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # thumbnails are fetched from photo hosts
        "Cache-Control": "no-cache",
    })
    return response


def openapi_response() -> flask.Response:
    response = flask.Response(_spec_json(), 200, mimetype="application/json")
    response.headers["Access-Control-Allow-Origin"] = "*"  # for API explorers on other origins
    return response
