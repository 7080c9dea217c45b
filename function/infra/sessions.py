"""Pooled HTTP sessions: keep-alive connections to the same host are reused across requests."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter


def new_session(pool_size: int, user_agent: str) -> requests.Session:
    """One pooled session: ``pool_size`` connections per host, our User-Agent on every request."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session
