"""Signed pushes: verify the platform's ``Authorization: SDK-HMAC-SHA256 ...`` (docs/protocol.md, Signed pushes).

When push AK/SK authentication is on, the platform signs each push the way Huawei's API Gateway
SDKs sign requests:

    CanonicalRequest = METHOD \\n CanonicalURI \\n CanonicalQueryString \\n CanonicalHeaders \\n
                       SignedHeaders \\n hex(sha256(body))
    StringToSign     = "SDK-HMAC-SHA256" \\n X-Sdk-Date \\n hex(sha256(CanonicalRequest))
    Signature        = hex(HMAC-SHA256(SK, StringToSign))

This module rebuilds the canonical request from the request exactly as it arrived (raw path,
raw query, raw header bytes, raw body) and compares signatures in constant time. It is pure: the
request's parts and the clock come in as arguments; nothing here does I/O.

Two deliberate choices beyond the reference:

- The body must be covered. Huawei's SDKs may sign ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD``
  instead of the body hash; a push signed that way would let anyone holding one signed request
  swap its body, so such a header is accepted only when it is the body's actual SHA-256.
- A signed header that appears more than once is refused: which copy was signed is ambiguous.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"

# The exact pattern of Huawei's verification sample (docs/protocol.md, Signed pushes); ", " and "," both match.
AUTHORIZATION = re.compile(
    r"SDK-HMAC-SHA256\s+Access=([^,]+),\s?SignedHeaders=([^,]+),\s?Signature=(\w+)", re.ASCII
)
DATE_FORMAT = "%Y%m%dT%H%M%SZ"  # yyyyMMdd'T'HHmmss'Z'
_DATE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


MAX_DETAIL = 300


class SignatureError(Exception):
    """The push is not authentic. ``reason`` is a stable code; ``detail`` says what was wrong in
    words safe to send back (never the expected signature)."""

    def __init__(self, reason: str, detail: str) -> None:
        if len(detail) > MAX_DETAIL:  # it may quote a header, and headers can be long
            detail = detail[: MAX_DETAIL - 1] + "…"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Authorization:
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization:
    match = AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        raise SignatureError(
            "malformed_authorization",
            "Authorization must be 'SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<a;b;...>, Signature=<hex>'",
        )
    access_key, signed, signature = match.groups()
    names = tuple(signed.strip().split(";"))
    if not all(_HEADER_NAME.fullmatch(name) for name in names) or len(set(names)) != len(names):
        raise SignatureError("malformed_authorization", "SignedHeaders must be distinct lower-case header names")
    return Authorization(access_key, names, signature)


def parse_date(value: str) -> float:
    """``X-Sdk-Date`` (``20241212T070653Z``, UTC) as a POSIX timestamp."""
    if not _DATE.fullmatch(value):
        raise SignatureError("malformed_date", "X-Sdk-Date must be yyyyMMddTHHmmssZ (UTC)")
    try:
        return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise SignatureError("malformed_date", "X-Sdk-Date is not a valid date") from None


def canonical_uri(raw_path: bytes) -> str:
    """Each path segment decoded, then percent-encoded (RFC 3986 unreserved kept); always ends in ``/``."""
    segments = unquote(raw_path.decode("latin-1")).split("/")
    path = "/".join(quote(segment, safe="~") for segment in segments)
    return path if path.endswith("/") else path + "/"


def canonical_query(query_string: bytes) -> str:
    """Parameters sorted by name (then value), each ``name=value`` percent-encoded, joined by ``&``."""
    pairs = sorted(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    return "&".join(f"{quote(name, safe='~')}={quote(value, safe='~')}" for name, value in pairs)


def canonical_request(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Mapping[str, bytes],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> bytes:
    """``headers``: the value of each signed header, as received."""
    lines = b"".join(name.encode() + b":" + headers[name].strip() + b"\n" for name in signed_headers)
    return b"\n".join(
        [
            method.upper().encode(),
            canonical_uri(raw_path).encode(),
            canonical_query(query_string).encode(),
            lines,
            ";".join(signed_headers).encode(),
            payload_hash.encode(),
        ]
    )


def string_to_sign(date: str, canonical: bytes) -> bytes:
    return f"{ALGORITHM}\n{date}\n{hashlib.sha256(canonical).hexdigest()}".encode()


def sign(secret_key: str, date: str, canonical: bytes) -> str:
    return hmac.new(secret_key.encode(), string_to_sign(date, canonical), hashlib.sha256).hexdigest()


def verify(
    keys: Mapping[str, str],
    *,
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    now: float,
    max_skew: float,
) -> str:
    """Check a push against the application's ``access key -> secret key`` map; return the access
    key it was signed with, or raise :class:`SignatureError`.

    ``headers`` are the raw (name, value) pairs as received (ASGI ``scope["headers"]``), so that
    ``Host``, ``Connection`` and ``Content-Length`` are compared exactly as the platform signed them.
    """
    received: dict[str, list[bytes]] = {}
    for name, value in headers:
        received.setdefault(name.decode("latin-1").lower(), []).append(value)

    auth = parse_authorization(_single(received, "authorization").decode("latin-1"))
    date = _single(received, "x-sdk-date").decode("latin-1").strip()
    signed_at = parse_date(date)
    if abs(now - signed_at) > max_skew:
        raise SignatureError(
            "stale_date",
            f"X-Sdk-Date {date} is {now - signed_at:+.0f} s from the receiver's clock; at most {max_skew:.0f} s allowed",
        )
    secret_key = keys.get(auth.access_key)
    if secret_key is None:
        raise SignatureError("unknown_access_key", f"no push key with access key {auth.access_key!r}")
    signed_values = {name: _single(received, name, signed=True) for name in auth.signed_headers}

    payload_hash = hashlib.sha256(body).hexdigest()
    declared = received.get("x-sdk-content-sha256")
    if declared is not None:
        claimed = _single(received, "x-sdk-content-sha256").decode("latin-1").strip()
        if not _HEX_SHA256.fullmatch(claimed) or claimed.lower() != payload_hash:
            raise SignatureError(
                "unsigned_payload", "X-Sdk-Content-Sha256 must be the SHA-256 of the body: the body must be signed"
            )
        payload_hash = claimed

    canonical = canonical_request(method, raw_path, query_string, signed_values, auth.signed_headers, payload_hash)
    expected = sign(secret_key, date, canonical)
    if not hmac.compare_digest(expected, auth.signature.lower()):
        raise SignatureError(
            "signature_mismatch",
            f"the signature does not match this request for access key {auth.access_key!r} "
            f"(signed headers: {';'.join(auth.signed_headers)})",
        )
    return auth.access_key


def _single(received: Mapping[str, list[bytes]], name: str, *, signed: bool = False) -> bytes:
    values = received.get(name, [])
    what = f"signed header {name!r}" if signed else f"header {name!r}"
    if not values:
        raise SignatureError("missing_header", f"the {what} is missing")
    if len(values) > 1:
        raise SignatureError("repeated_header", f"the {what} appears more than once")
    return values[0]
