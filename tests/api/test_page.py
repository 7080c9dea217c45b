"""The web page at ``GET /``, as served (its behaviour in a browser: tests/test_browser.py)."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import functions_framework
import pytest

from tests.support import ROOT


@pytest.fixture
def client(env):
    return functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()


class Page(HTMLParser):
    """The parts of the page the tests look at: elements with their attributes, inline blocks."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.inline: dict[str, list[str]] = {"script": [], "style": []}
        self._open: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._open = tag if tag in self.inline else None

    def handle_data(self, data):
        if self._open:
            self.inline[self._open].append(data)
            self._open = None


@pytest.fixture
def page(client):
    r = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 200
    return r, Page(r.get_data(as_text=True))


def test_a_browser_gets_the_page_at_the_root(page):
    r, _ = page
    assert r.content_type == "text/html; charset=utf-8"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_clients_that_send_no_accept_header_get_the_page_too(client):
    assert client.get("/").mimetype == "text/html"


def test_the_page_runs_only_its_own_inline_script_and_style(page):
    r, parsed = page
    csp = dict(part.strip().split(" ", 1) for part in r.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        blocks = parsed.inline[tag]
        assert len(blocks) == 1
        digest = base64.b64encode(hashlib.sha256(blocks[0].encode()).digest()).decode()
        assert csp[directive] == f"'sha256-{digest}'"
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]


def test_the_page_loads_nothing_from_elsewhere(page):
    _, parsed = page
    for tag, attrs in parsed.elements:
        for name in ("src", "href"):
            assert not re.match(r"^(https?:)?//", attrs.get(name, "")), f"<{tag} {name}={attrs[name]}>"


def test_every_form_control_has_a_label(page):
    _, parsed = page
    labelled = {attrs["for"] for tag, attrs in parsed.elements if tag == "label" and "for" in attrs}
    controls = [(tag, attrs) for tag, attrs in parsed.elements if tag in ("input", "textarea", "select")]
    assert controls
    for tag, attrs in controls:
        assert attrs.get("id") in labelled or attrs.get("aria-label"), f"<{tag}> without a label"


def test_results_are_announced_and_the_page_fits_a_phone(page):
    _, parsed = page
    by_id = {attrs.get("id"): attrs for _, attrs in parsed.elements if attrs.get("id")}
    assert by_id["results"]["aria-live"] == "polite"
    assert by_id["status"]["role"] == "status"
    assert by_id["drop"]["role"] == "button" and by_id["drop"]["tabindex"] == "0"
    viewport = [a for t, a in parsed.elements if t == "meta" and a.get("name") == "viewport"]
    assert viewport and "width=device-width" in viewport[0]["content"]


def test_get_with_url_parameters_is_json_even_for_a_browser(client, server):
    r = client.get("/", query_string={"url": server.url("/none.jpg")}, headers={"Accept": "text/html"})
    assert r.mimetype == "application/json" and r.get_json()["results"][0]["error"]["code"] == "http_error"


def test_other_methods_on_the_root_are_still_405(client):
    assert client.put("/", headers={"Accept": "text/html"}).status_code == 405
