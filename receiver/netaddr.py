"""Source addresses: CIDR lists, and which address a request came from. Pure functions, no I/O.

An application may accept pushes only from some networks (``applications.allowed_sources``).
Behind a load balancer or reverse proxy the socket peer is the proxy, so the client is read from
``X-Forwarded-For``, but only as far as proxies we trust wrote it: the header is walked from the
right (the hop nearest to us), skipping addresses of trusted proxies, and only when the socket
peer is itself a trusted proxy. The first address that is not a trusted proxy is the client.
Anything to its left was written by the client and is ignored. An entry that is not an address
makes the client unknown, and an unknown client is in no allow-list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# The platform's push addresses as Huawei's FAQ "What Is the Callback Address? How Do I Set This
# Address?" (sms_faq_0093) lists them: "for example", so not promised complete or current; the API
# pages say to ask the operations manager for the current list (docs/protocol.md, Source
# addresses and TLS).
NAMED_SOURCES: dict[str, tuple[str, ...]] = {
    "huawei": ("117.78.29.0/24", "124.70.27.0/24", "124.71.67.0/24", "123.60.96.0/24", "119.8.109.0/24"),
}

MAX_SOURCES = 100  # per application: each push is checked against every one
MAX_FORWARDED_HOPS = 32  # trusted proxies walked in X-Forwarded-For before the client is "unknown"
_MAX_ITEM = 100  # characters: longer than any address with brackets, zone and port


def parse_network(text: str) -> IPNetwork:
    """A CIDR (``10.0.0.0/8``, ``2001:db8::/32``) or a single address (a /32 or /128).
    Raises ValueError, for host bits set too (``10.0.0.1/8``: a typo more often than not)."""
    value = text.strip()
    if not value or "%" in value:
        raise ValueError(f"{text!r} is not an IP network")
    try:
        network = ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"{text!r} is not an IP network ({error})") from None
    if isinstance(network, IPv6Network) and network.prefixlen >= 96 and network.network_address.ipv4_mapped:
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8: peers are compared as IPv4, so written as IPv6 it would never match
        return IPv4Network((network.network_address.ipv4_mapped, network.prefixlen - 96))
    return network


def parse_sources(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks as given on the command line: CIDRs, or a name from :data:`NAMED_SOURCES`
    (expanded, so the stored list does not change if ours does). Duplicates are dropped."""
    networks: list[IPNetwork] = []
    for value in values:
        named = NAMED_SOURCES.get(value.strip().lower())
        for text in named or (value,):
            network = parse_network(text)
            if network not in networks:
                networks.append(network)
    if len(networks) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} networks")
    return tuple(networks)


@lru_cache(maxsize=4096)  # the same few peers and proxies, request after request
def parse_address(text: str) -> IPAddress | None:
    """One address as a socket or a proxy gives it, or None if it is none: ``192.0.2.1``,
    ``192.0.2.1:4711``, ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:4711``. An
    IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, a dual-stack socket) is the IPv4 address; an
    IPv6 zone (``%eth0``) is dropped. ``unknown`` and obfuscated identifiers (RFC 7239) are None."""
    value = text.strip(" \t")
    if not value or len(value) > _MAX_ITEM:
        return None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not _port(rest)):
            return None
        want: type[IPAddress] | None = IPv6Address
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        if not _port(":" + port):
            return None
        want = IPv4Address
    else:
        host, want = value, None
    try:
        address = ip_address(host)
    except ValueError:
        return None
    if want is not None and not isinstance(address, want):
        return None
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return IPv6Address(int(address))
    return address


def _port(text: str) -> bool:
    digits = text[1:]
    return text.startswith(":") and 0 < len(digits) <= 5 and digits.isascii() and digits.isdigit() and int(digits) < 65536


def within(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def allowed(client: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    """May ``client`` push? Every source may when ``networks`` is empty; an unknown one never otherwise."""
    if not networks:
        return True
    return client is not None and within(client, networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the socket ``peer``, or, when the peer is a trusted proxy, the first
    address of ``forwarded_for`` from the right that is not a trusted proxy. ``forwarded_for`` is
    every ``X-Forwarded-For`` header's value, in the order received (they form one list).
    None when it cannot be told: an unreadable peer or entry, or more than
    :data:`MAX_FORWARDED_HOPS` trusted proxies in a row."""
    address = parse_address(peer) if peer is not None else None
    if address is None or not trusted or not within(address, trusted):
        return address
    items = [item for value in forwarded_for if value.strip(" \t") for item in value.split(",")]
    for hops, item in enumerate(reversed(items)):
        if hops > MAX_FORWARDED_HOPS:
            return None
        address = parse_address(item)
        if address is None or not within(address, trusted):
            return address
    return address  # every hop a trusted proxy: the leftmost one sent it (or the peer, if none)
