"""Source addresses (receiver.netaddr): parsing, and the X-Forwarded-For walk behind trusted proxies."""

from __future__ import annotations

import ipaddress
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver import netaddr

PROXIES = (ip_network("10.0.0.0/8"), ip_network("2001:db8:1::/48"))

ADDRESSES = [
    ("192.0.2.1", "192.0.2.1"),
    ("  192.0.2.1\t", "192.0.2.1"),
    ("192.0.2.1:4711", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack socket's IPv4 peer
    ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::1"),  # the zone is dropped
    ("", None),
    ("unknown", None),  # RFC 7239
    ("_hidden", None),
    ("testclient", None),
    ("example.com", None),
    ("192.0.2", None),
    ("192.0.2.256", None),
    ("010.0.0.1", None),  # leading zeros: octal to some, decimal to others
    ("192.0.2.1:", None),
    ("192.0.2.1:http", None),
    ("192.0.2.1:65536", None),
    ("192.0.2.1:٨٠", None),  # non-ASCII digits
    ("192.0.2.1 192.0.2.2", None),
    ("[192.0.2.1]", None),  # brackets are for IPv6
    ("[2001:db8::1", None),
    ("[2001:db8::1]x", None),
    ("[2001:db8::1]:", None),
    ("2001:db8::1:443:1:2:3:4:5", None),
    ("1" * 200, None),
    ('192.0.2.1"', None),
    ("192.0.2.1/32", None),
]


@pytest.mark.parametrize(("text", "expected"), ADDRESSES)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = netaddr.parse_address(text)
    assert (parsed.compressed if parsed is not None else None) == expected


# peer, X-Forwarded-For headers (in order), trusted proxies, expected client
WALKS = [
    ("no proxy trusted: XFF is ignored", "198.51.100.7", ["203.0.113.9"], (), "198.51.100.7"),
    ("untrusted peer: XFF is ignored", "198.51.100.7", ["203.0.113.9"], PROXIES, "198.51.100.7"),
    ("trusted peer, one hop", "10.0.0.2", ["203.0.113.9"], PROXIES, "203.0.113.9"),
    ("trusted peer, no XFF: the proxy itself", "10.0.0.2", [], PROXIES, "10.0.0.2"),
    ("blank header is no header", "10.0.0.2", ["  "], PROXIES, "10.0.0.2"),
    ("spoofed entries left of the client are ignored", "10.0.0.2", ["1.1.1.1, 203.0.113.9"], PROXIES, "203.0.113.9"),
    ("trusted hops are skipped", "10.0.0.2", ["1.1.1.1, 203.0.113.9, 10.9.9.9, 10.1.1.1"], PROXIES, "203.0.113.9"),
    ("several headers form one list", "10.0.0.2", ["1.1.1.1", "203.0.113.9,10.1.1.1"], PROXIES, "203.0.113.9"),
    ("the last header is the nearest", "10.0.0.2", ["203.0.113.9", "1.1.1.1"], PROXIES, "1.1.1.1"),
    ("no spaces", "10.0.0.2", ["1.1.1.1,203.0.113.9"], PROXIES, "203.0.113.9"),
    ("tabs and spaces", "10.0.0.2", ["1.1.1.1 ,\t203.0.113.9 , 10.1.1.1 "], PROXIES, "203.0.113.9"),
    ("ports", "10.0.0.2", ["203.0.113.9:5060, 10.1.1.1:80"], PROXIES, "203.0.113.9"),
    ("IPv6 client", "10.0.0.2", ["[2001:db8:2::5]:1234"], PROXIES, "2001:db8:2::5"),
    ("IPv6 client, bare", "10.0.0.2", ["2001:db8:2::5"], PROXIES, "2001:db8:2::5"),
    ("IPv6 proxy", "2001:db8:1::1", ["203.0.113.9, 2001:db8:1::2"], PROXIES, "203.0.113.9"),
    ("IPv6 peer from the socket", "::ffff:10.0.0.2", ["203.0.113.9"], PROXIES, "203.0.113.9"),
    ("all trusted: the leftmost", "10.0.0.2", ["10.3.3.3, 10.1.1.1"], PROXIES, "10.3.3.3"),
    ("garbage nearest: unknown", "10.0.0.2", ["203.0.113.9, garbage"], PROXIES, None),
    ("garbage past the client: ignored", "10.0.0.2", ["garbage, 203.0.113.9"], PROXIES, "203.0.113.9"),
    ("garbage behind trusted hops: unknown", "10.0.0.2", ["203.0.113.9, nope, 10.1.1.1"], PROXIES, None),
    ("empty item: unknown", "10.0.0.2", ["203.0.113.9,"], PROXIES, None),
    ("empty item past the client: ignored", "10.0.0.2", [", 203.0.113.9"], PROXIES, "203.0.113.9"),
    ("unknown (RFC 7239): unknown", "10.0.0.2", ["unknown"], PROXIES, None),
    ("a hostname: unknown", "10.0.0.2", ["proxy.internal"], PROXIES, None),
    ("an unreadable peer: unknown", "testclient", ["203.0.113.9"], PROXIES, None),
    ("no peer (a Unix socket): unknown", None, ["203.0.113.9"], PROXIES, None),
    ("one trusted hop too many: unknown", "10.0.0.2", [", ".join(["203.0.113.9"] + ["10.1.1.1"] * 33)], PROXIES, None),
    ("as many as allowed", "10.0.0.2", [", ".join(["203.0.113.9"] + ["10.1.1.1"] * 32)], PROXIES, "203.0.113.9"),
]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"), [w[1:] for w in WALKS], ids=[w[0] for w in WALKS]
)
def test_client_address(
    peer: str | None, forwarded: list[str], trusted: tuple[netaddr.IPNetwork, ...], expected: str | None
) -> None:
    found = netaddr.client_address(peer, forwarded, trusted)
    assert (found.compressed if found is not None else None) == expected


@given(st.lists(st.text(max_size=60), max_size=5))
def test_client_address_never_fails_on_any_header(headers: list[str]) -> None:
    found = netaddr.client_address("10.0.0.2", headers, PROXIES)
    assert found is None or isinstance(found, ipaddress.IPv4Address | ipaddress.IPv6Address)


ALLOWED = [
    ("empty list: any source", "192.0.2.1", (), True),
    ("empty list: even an unknown one", None, (), True),
    ("inside", "117.78.29.200", ("117.78.29.0/24",), True),
    ("outside", "117.78.30.1", ("117.78.29.0/24",), False),
    ("unknown source, a list", None, ("0.0.0.0/0",), False),
    ("IPv6 inside", "2001:db8::9", ("192.0.2.0/24", "2001:db8::/32"), True),
    ("IPv4 against IPv6 only", "192.0.2.1", ("::/0",), False),
    ("single address", "192.0.2.1", ("192.0.2.1",), True),
    ("an IPv4 network written IPv4-mapped", "10.1.2.3", ("::ffff:10.0.0.0/104",), True),
    ("an IPv4 address written IPv4-mapped", "10.1.2.3", ("::ffff:10.1.2.3",), True),
    ("outside an IPv4-mapped network", "11.1.2.3", ("::ffff:10.0.0.0/104",), False),
]


@pytest.mark.parametrize(("client", "networks", "expected"), [a[1:] for a in ALLOWED], ids=[a[0] for a in ALLOWED])
def test_allowed(client: str | None, networks: tuple[str, ...], expected: bool) -> None:
    address = ip_address(client) if client else None
    assert netaddr.allowed(address, netaddr.parse_sources(networks)) is expected


def test_parse_sources_expands_huawei_and_drops_duplicates() -> None:
    networks = netaddr.parse_sources(["HUAWEI", "117.78.29.0/24", " 2001:db8::/32 ", "192.0.2.7"])
    assert [n.compressed for n in networks] == [
        "117.78.29.0/24", "124.70.27.0/24", "124.71.67.0/24", "123.60.96.0/24", "119.8.109.0/24",
        "2001:db8::/32", "192.0.2.7/32",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "huawe", "", "10.0.0.0/33", "fe80::/10%eth0", "example.com"])
def test_parse_sources_refuses_what_is_no_network(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        netaddr.parse_sources([bad])


def test_at_most_so_many_sources() -> None:
    with pytest.raises(ValueError, match="at most"):
        netaddr.parse_sources([f"10.0.{i // 256}.{i % 256}" for i in range(netaddr.MAX_SOURCES + 1)])
