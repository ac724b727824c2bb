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

# Percent-escapes of ASCII characters (either case of hex digits): what a status report's time
# (``%3A``) and number (``%2B``) carry, decoded without the standard library's general path.
_ASCII_ESCAPES = {f"{i:02x}": chr(i) for i in range(128)} | {f"{i:02X}": chr(i) for i in range(128)}


def _unquote(text: str) -> str:
    """``unquote(text, errors="strict")``: escapes of ASCII characters decoded here, anything
    else (UTF-8 sequences, broken escapes) by the standard library."""
    first, *pieces = text.split("%")
    out = [first]
    for piece in pieces:
        char = _ASCII_ESCAPES.get(piece[:2])
        if char is None:
            return unquote(text, errors="strict")
        out.append(char)
        out.append(piece[2:])
    return "".join(out)


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
                name = _unquote(name)
            if "+" in value:
                value = value.replace("+", " ")
            if "%" in value:
                value = _unquote(value)
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
