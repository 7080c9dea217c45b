"""Properties of the SSRF guard's address classification and of request parsing (hypothesis).

The guard is checked against a reference written here from the IANA special-purpose registries,
independent of Python's ``ipaddress`` flags: an address is public exactly when the reference says
so, including addresses embedded in IPv6 (IPv4-mapped, NAT64, 6to4, Teredo). Every numeric
spelling of a 127/8 address resolves, through the same ``getaddrinfo`` the guard calls, to an
address the guard refuses. Request parsing raises nothing but ``RequestError`` for any JSON or
any bytes, and accepts every well-formed request.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from function.api.parsing import parse_json_body
from function.config import Config
from function.core.buckets import Notification
from function.errors import BlockedAddress, RequestError
from function.infra.guard import AddressPolicy, classify_address

BOUNDED = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def nets(*cidrs: str) -> list:
    return [ipaddress.ip_network(c) for c in cidrs]


# -- the reference ------------------------------------------------------------------------------

V4_NOT_PUBLIC = nets(
    "0.0.0.0/8",  # "this network", with the unspecified address
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, the cloud metadata server
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # documentation
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, with the broadcast address
)
V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")  # everything outside is loopback, link-local, ULA...
V6_NOT_PUBLIC_IN_GLOBAL = nets("2001::/23", "2001:db8::/32", "3fff::/20")  # IETF, documentation (x2)
MAPPED, NAT64 = ipaddress.ip_network("::ffff:0:0/96"), ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR, TEREDO = ipaddress.ip_network("2002::/16"), ipaddress.ip_network("2001::/32")


def v4_public(ip: ipaddress.IPv4Address) -> bool:
    return not any(ip in net for net in V4_NOT_PUBLIC)


def v6_public(ip: ipaddress.IPv6Address) -> bool:
    """Public IPv6: global unicast outside the special blocks, or an embedded public IPv4."""
    value = int(ip)
    if ip in MAPPED or ip in NAT64:
        return v4_public(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if ip in SIX_TO_FOUR:
        return v4_public(ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))
    if ip in TEREDO:  # the client's address, stored inverted in the last 32 bits
        return v4_public(ipaddress.IPv4Address(~value & 0xFFFFFFFF))
    return ip in V6_GLOBAL_UNICAST and not any(ip in net for net in V6_NOT_PUBLIC_IN_GLOBAL)


def reference_public(ip) -> bool:
    return v4_public(ip) if ip.version == 4 else v6_public(ip)


# -- strategies ---------------------------------------------------------------------------------


def within(networks: list) -> st.SearchStrategy:
    """An address inside one of ``networks``, often at its edges."""
    return st.sampled_from(networks).flatmap(
        lambda net: st.one_of(st.sampled_from([0, net.num_addresses - 1]), st.integers(0, net.num_addresses - 1))
        .map(lambda offset, net=net: net.network_address + offset))


# Public neighbours of the blocks, so that the edges are tested from both sides.
V4_EDGES = nets("9.255.255.0/24", "11.0.0.0/24", "100.63.255.0/24", "100.128.0.0/24", "126.255.255.0/24",
                "128.0.0.0/24", "169.253.255.0/24", "169.255.0.0/24", "172.15.255.0/24", "172.32.0.0/24",
                "192.167.255.0/24", "192.169.0.0/24", "198.17.255.0/24", "198.20.0.0/24", "223.255.255.0/24",
                "8.8.8.0/24", "1.1.1.0/24")
ipv4 = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), within(V4_NOT_PUBLIC), within(V4_EDGES))
V6_SPECIAL = nets("::/127", "fe80::/10", "fec0::/10", "fc00::/7", "ff00::/8", "100::/64", "64:ff9b:1::/48",
                  "2001:db8::/32", "2001::/23", "3fff::/20", "5f00::/16", "2000::/3", "2606:4700::/32",
                  "1fff:ffff:ffff:ffff::/64", "4000::/64")


def wrappings(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """``v4`` inside IPv6: IPv4-mapped, NAT64, 6to4 and Teredo (as the client address)."""
    n = int(v4)
    return [ipaddress.IPv6Address(int(MAPPED.network_address) | n),
            ipaddress.IPv6Address(int(NAT64.network_address) | n),
            ipaddress.IPv6Address(int(SIX_TO_FOUR.network_address) | (n << 80)),
            ipaddress.IPv6Address(int(TEREDO.network_address) | (~n & 0xFFFFFFFF))]


ipv6 = st.one_of(st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address), within(V6_SPECIAL),
                 ipv4.flatmap(lambda v4: st.sampled_from(wrappings(v4))))


# -- classification -----------------------------------------------------------------------------


@BOUNDED
@given(ip=st.one_of(ipv4, ipv6))
def test_an_address_is_refused_exactly_when_the_reference_says_it_is_not_public(ip):
    why = classify_address(ip)
    assert (why is None) == reference_public(ip), f"{ip}: guard says {why!r}"
    assert classify_address(str(ip)) == why  # the string form is judged the same


@BOUNDED
@given(ip=within(V4_NOT_PUBLIC))
def test_every_non_public_ipv4_stays_refused_in_every_ipv6_wrapping(ip):
    for wrapped in wrappings(ip):
        assert classify_address(wrapped) is not None, f"{wrapped} wraps {ip}"


@BOUNDED
@given(ip=st.one_of(ipv4, ipv6), trusted=st.one_of(ipv4, ipv6), prefix=st.integers(0, 128))
def test_a_trusted_network_exempts_its_addresses_and_nothing_else(ip, trusted, prefix):
    network = ipaddress.ip_network(f"{trusted}/{min(prefix, trusted.max_prefixlen)}", strict=False)
    policy = AddressPolicy.from_trusted([str(network)])
    refusal = policy.refusal("photos.example.org", str(ip))
    if ip.version == network.version and ip in network:
        assert refusal is None
    else:
        assert refusal == classify_address(ip)


# -- spellings of loopback --------------------------------------------------------------------


def spellings(ip: ipaddress.IPv4Address) -> list[str]:
    """The forms inet_aton accepts for one 127/8 address: integer, hex, octal, and the short forms."""
    n = int(ip)
    a, b, c, d = ip.packed
    return [str(n), hex(n), f"0{n:o}", f"127.{n & 0xFFFFFF}", f"127.{b}.{(c << 8) | d}", f"0x7f.{hex(n & 0xFFFFFF)}",
            f"0177.0{b:o}.0{c:o}.0{d:o}", f"0x7f.0x{b:x}.0x{c:x}.0x{d:x}", f"0x7F.{b}.0{c:o}.0x{d:X}",
            f"::ffff:{ip}", f"::ffff:{n >> 16:x}:{n & 0xFFFF:x}", f"0:0:0:0:0:ffff:{ip}", f"[::ffff:{ip}]"]


loopback4 = st.integers(0, 2**24 - 1).map(lambda n: ipaddress.IPv4Address((127 << 24) | n))


@BOUNDED
@given(ip=loopback4)
def test_every_numeric_spelling_of_a_loopback_address_resolves_to_a_refused_address(ip):
    policy = AddressPolicy()  # nothing trusted
    for spelling in spellings(ip):
        host = spelling.strip("[]")
        # numeric only: a spelling the resolver did not take as an address would go to DNS instead
        infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        for info in infos:
            assert classify_address(info[4][0]) == "loopback", (spelling, info[4][0])
        with pytest.raises(BlockedAddress) as refused:
            policy.vet(spelling, 80)
        assert refused.value.why == "loopback"


@pytest.mark.parametrize("spelling", ["::1", "0:0:0:0:0:0:0:1", "0000:0000::0001", "[::1]", "localhost"])
def test_ipv6_and_named_loopback_are_refused(spelling):
    with pytest.raises(BlockedAddress):
        AddressPolicy().vet(spelling, 80)


# -- request parsing ----------------------------------------------------------------------------

CONFIG = Config(max_urls=8, max_top_k=20, top_k=3)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)), max_leaves=12)
# Documents shaped like requests (the keys the parser looks at) with values of any type.
KEYS = st.sampled_from(["urls", "url", "top_k", "Records", "eventName", "s3", "bucket", "object", "key", "size"])
request_like = st.recursive(
    st.one_of(json_scalars, st.lists(st.text(max_size=30), max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=10), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=12)


def outcome(body: bytes) -> None:
    """Parse; a RequestError is an answer, anything else escaping is the bug this file looks for."""
    try:
        parsed = parse_json_body(body, CONFIG)
    except RequestError as err:
        assert err.status in (400, 413, 415) and err.code and err.message
        return
    if isinstance(parsed, Notification):  # a bucket notification posted as a body: the objects it names
        assert len(parsed.objects) <= CONFIG.max_urls
        return
    assert 1 <= parsed.top_k <= CONFIG.max_top_k
    assert len(parsed.sources) <= CONFIG.max_urls


@BOUNDED
@given(body=st.binary(max_size=200))
def test_any_bytes_parse_or_give_a_request_error(body):
    outcome(body)


@BOUNDED
@given(doc=st.one_of(json_values, request_like))
def test_any_json_value_parses_or_gives_a_request_error(doc):
    outcome(json.dumps(doc).encode())


@BOUNDED
@given(top_k=st.one_of(json_values, st.text(alphabet="0123456789+- .e²٣\u00a0", max_size=12)))
def test_any_top_k_parses_or_gives_invalid_top_k(top_k):
    try:
        parsed = parse_json_body(json.dumps({"urls": ["http://a/x.jpg"], "top_k": top_k}).encode(), CONFIG)
    except RequestError as err:
        assert err.code == "invalid_top_k"
        return
    assert 1 <= parsed.top_k <= CONFIG.max_top_k


urls = st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=CONFIG.max_urls)
top_ks = st.one_of(st.none(), st.integers(1, CONFIG.max_top_k),
                   st.integers(1, CONFIG.max_top_k).map(str), st.integers(1, CONFIG.max_top_k).map(float))


@BOUNDED
@given(urls=urls, top_k=top_ks, single=st.booleans())
def test_every_well_formed_request_is_accepted_as_sent(urls, top_k, single):
    assume(not (single and len(urls) > 1))
    doc: dict = {"url": urls[0]} if single else {"urls": urls}
    if top_k is not None:
        doc["top_k"] = top_k
    parsed = parse_json_body(json.dumps(doc).encode(), CONFIG)
    assert [s.ref for s in parsed.sources] == [u.strip() for u in urls]
    assert all(s.kind == "url" for s in parsed.sources)
    assert parsed.top_k == (CONFIG.top_k if top_k is None else int(top_k))
