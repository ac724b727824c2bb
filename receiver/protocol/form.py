"""``application/x-www-form-urlencoded`` bodies, decoded as UTF-8, strictly.

The same reading as ``urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict",
max_num_fields=MAX_FIELDS)`` (pairs split on ``&``, empty pairs skipped, a name without ``=``
has an empty value, ``+`` is a space, percent-escapes are UTF-8), written for the callback path:
``parse_qsl`` costs about four times as much on a status report, which every acknowledgement
parses. ``tests/test_protocol.py`` holds the two equal on generated bodies.
"""

from __future__ import annotations

from urllib.parse import unquote

from .errors import ProtocolError
from .fields import MAX_FIELDS


def decode_form(body: bytes) -> dict[str, str]:
    """Field name to value. Repeated names, bad UTF-8 and NUL characters are errors."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid_encoding", "form fields must be UTF-8") from None
    if text.count("&") >= MAX_FIELDS:
        raise ProtocolError("too_many_fields", {"max_fields": MAX_FIELDS})
    pairs: list[tuple[str, str]] = []
    try:
        for pair in text.split("&") if text else ():
            if not pair:
                continue
            name, _, value = pair.partition("=")
            if "+" in name:
                name = name.replace("+", " ")
            if "%" in name:
                name = unquote(name, errors="strict")
            if "+" in value:
                value = value.replace("+", " ")
            if "%" in value:
                value = unquote(value, errors="strict")
            pairs.append((name, value))
    except UnicodeDecodeError:
        raise ProtocolError("invalid_encoding", "form fields must be UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise ProtocolError("duplicate_field", {"field": name[:64]})
        if "\x00" in name or "\x00" in value:
            raise ProtocolError("invalid_character", {"field": name[:64].replace("\x00", "")})
        fields[name] = value
    return fields
