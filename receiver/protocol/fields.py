"""Field rules shared by the three callbacks: presence, length, numbers, times.

Limits are the ones the Huawei reference documents (String(1-50) and so on); where it gives
none we set a generous one so that no field is unbounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import ProtocolError

# Unknown fields are kept, within these bounds.
MAX_FIELDS = 64
MAX_UNKNOWN_NAME = 64
MAX_UNKNOWN_VALUE = 2048


@dataclass(frozen=True, slots=True)
class Rule:
    required: bool
    max_len: int


def take(values: Mapping[str, str | None], name: str, rule: Rule) -> str | None:
    """The field's value, ``None`` when absent or blank; raises when a rule is broken."""
    value = values.get(name)
    if value is None or value == "":
        if rule.required:
            raise ProtocolError("missing_field", {"field": name})
        return None
    if len(value) > rule.max_len:
        raise ProtocolError("field_too_long", {"field": name, "max_length": rule.max_len})
    return value


def check_unknown(name: str, value: object) -> None:
    """An unknown field is kept when its name and value are short: a string of up to
    :data:`MAX_UNKNOWN_VALUE` characters, or (JSON batches) any other value whose compact JSON is."""
    if len(name) > MAX_UNKNOWN_NAME:
        raise ProtocolError("field_too_long", {"field": name[:MAX_UNKNOWN_NAME], "max_length": MAX_UNKNOWN_NAME})
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, dict | list) or (isinstance(value, int) and value.bit_length() > 64):
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    else:
        return  # null, true, false, a number that fits in 20 characters
    if size > MAX_UNKNOWN_VALUE:
        raise ProtocolError("field_too_long", {"field": name, "max_length": MAX_UNKNOWN_VALUE})


def small_int(name: str, value: str | None) -> int | None:
    """``total`` and ``sequence``: String(1-2) of digits, at least 1."""
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise ProtocolError("invalid_field", {"field": name, "reason": "expected a positive integer"})
    return int(value)


def number(value: str | None) -> str | None:
    """A phone number as sent. A ``+`` that arrived unencoded was decoded as a space: put it back.

    Only blanks left (``to=+``, ``to=%20``) is no number: ``None``, like an empty field.
    """
    if value is None:
        return None
    if value.startswith(" ") and value[1:].strip().isdigit():
        return "+" + value[1:].strip()
    return value.strip() or None


_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|z|[+-]\d{2}:?\d{2})?")


def timestamp(name: str, value: str | None) -> datetime | None:
    """``yyyy-MM-dd'T'HH:mm:ss'Z'`` (UTC). Fractional seconds and offsets are accepted too."""
    if value is None:
        return None
    text = value.strip()
    if not _TIME.fullmatch(text):
        raise ProtocolError("invalid_field", {"field": name, "reason": "expected yyyy-MM-ddTHH:mm:ssZ"})
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)  # OverflowError near year 1 or 9999 with an offset
    except (ValueError, OverflowError):
        raise ProtocolError("invalid_field", {"field": name, "reason": "not a valid time"}) from None
