"""``application/x-www-form-urlencoded`` bodies, decoded as UTF-8, strictly."""

from __future__ import annotations

from urllib.parse import parse_qsl

from .errors import ProtocolError
from .fields import MAX_FIELDS


def decode_form(body: bytes) -> dict[str, str]:
    """Field name to value. Repeated names, bad UTF-8 and NUL characters are errors."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise ProtocolError("invalid_encoding", "form fields must be UTF-8") from None
    except ValueError:
        raise ProtocolError("too_many_fields", {"max_fields": MAX_FIELDS}) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise ProtocolError("duplicate_field", {"field": name[:64]})
        if "\x00" in name or "\x00" in value:
            raise ProtocolError("invalid_character", {"field": name[:64].replace("\x00", "")})
        fields[name] = value
    return fields
