"""The body deadline: BODY_TIMEOUT_S at most, and much less for a short body of declared length."""

from __future__ import annotations

import pytest

from function.infra.limits import BODY_GRACE_S, BODY_MIN_RATE, body_seconds


@pytest.mark.parametrize(("length", "expected"), [
    (None, 60.0),  # chunked: no length to judge by, BODY_TIMEOUT_S
    (200, BODY_GRACE_S + 200 / BODY_MIN_RATE),  # a JSON request dripped at a byte a second is cut in ~5 s
    (1024 * 1024, BODY_GRACE_S + 16.0),  # MAX_REQUEST_BYTES of JSON: 21 s
    (64 * 1024 * 1024, 60.0),  # a big upload: never more than BODY_TIMEOUT_S
])
def test_a_body_may_take_the_grace_plus_its_length_at_the_minimum_rate_at_most_body_timeout(length, expected):
    assert body_seconds(length, 60.0) == pytest.approx(expected)
