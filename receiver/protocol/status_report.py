"""Status reports: one per form-encoded request, or up to 50 in a JSON batch
(docs/protocol.md, Status reports and Batch status reports)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import ProtocolError
from .events import StatusReport
from .fields import MAX_FIELDS, Rule, check_unknown, number, small_int, take, timestamp
from .form import decode_form

MAX_BATCH = 50
# Levels of objects and lists in a batch: {"statusReportList": [{...}]} is 3; an unknown field
# may nest a little more. Deeper is no report: refused before anything recurses over it.
MAX_DEPTH = 16

RULES: dict[str, Rule] = {
    "smsMsgId": Rule(required=True, max_len=50),
    "status": Rule(required=True, max_len=7),
    "total": Rule(required=False, max_len=2),
    "sequence": Rule(required=False, max_len=2),
    "statusDesc": Rule(required=False, max_len=500),
    "source": Rule(required=False, max_len=8),
    "updateTime": Rule(required=False, max_len=32),
    "extend": Rule(required=False, max_len=128),
    "to": Rule(required=False, max_len=21),
    "orgCode": Rule(required=False, max_len=64),
}


def parse_status_report_form(body: bytes) -> StatusReport:
    """One report from a form-encoded body."""
    return _report(decode_form(body))


@dataclass(frozen=True, slots=True)
class RejectedItem:
    index: int
    error: ProtocolError
    raw: str


@dataclass(frozen=True, slots=True)
class Batch:
    """A parsed batch: the good reports (with each item's own JSON text) and the rejected items."""

    reports: list[tuple[StatusReport, str]]
    rejected: list[RejectedItem]


def parse_status_report_batch(body: bytes) -> Batch:
    """``{"statusReportList": [...]}`` with 1 to 50 items.

    A broken envelope rejects the request; a broken item rejects only that item, so one bad
    report never costs the 49 good ones beside it.
    """
    try:
        document = json.loads(body.decode("utf-8"), parse_float=_finite, parse_constant=_not_a_number)
    except UnicodeDecodeError:
        raise ProtocolError("invalid_encoding", "the body must be UTF-8 JSON") from None
    except ProtocolError:
        raise
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_json", "the body is not valid JSON") from None
    if not _within_depth(document, MAX_DEPTH):
        raise ProtocolError("too_deep", {"max_depth": MAX_DEPTH})
    if not isinstance(document, dict):
        raise ProtocolError("invalid_batch", "expected a JSON object with statusReportList")
    items = document.get("statusReportList")
    if not isinstance(items, list):
        raise ProtocolError("invalid_batch", "statusReportList must be a list")
    if not 1 <= len(items) <= MAX_BATCH:
        raise ProtocolError("invalid_batch", {"items": len(items), "allowed": f"1-{MAX_BATCH}"})
    reports: list[tuple[StatusReport, str]] = []
    rejected: list[RejectedItem] = []
    for index, item in enumerate(items):
        raw = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: keep the raw text escaped
            raw = json.dumps(item, separators=(",", ":"))
        try:
            _check_text(item)
            reports.append((_report(_item_fields(item)), raw))
        except ProtocolError as error:
            rejected.append(RejectedItem(index, error, raw))
    return Batch(reports, rejected)


_NOT_FINITE = "numbers must be finite doubles: no NaN, Infinity or 1e400 (PostgreSQL's jsonb cannot keep them)"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("invalid_json", _NOT_FINITE)
    return value


def _not_a_number(text: str) -> float:
    """``NaN``, ``Infinity``, ``-Infinity``: Python's json reads them, JSON has no such thing."""
    raise ProtocolError("invalid_json", _NOT_FINITE)


def _within_depth(document: object, limit: int) -> bool:
    """No more than ``limit`` levels of objects and lists; iterative, so any depth is safe to check."""
    pending: list[tuple[object, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: Iterable[object] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return False
        pending.extend((child, depth + 1) for child in children)
    return True


def _check_text(item: object) -> None:
    """JSON escapes carry what a UTF-8 form body cannot: ``\\u0000`` and lone surrogates (``\\ud800``).

    Refuse them anywhere in the item, names and nested values too, as the form parser does: a
    surrogate cannot be encoded as UTF-8 and NUL cannot be stored in PostgreSQL text or jsonb.
    """
    if not isinstance(item, dict):
        return  # _item_fields says why
    for name, value in item.items():
        field = name[:64].replace("\x00", "").encode("utf-8", "replace").decode()
        pending: list[object] = [name, value]
        while pending:
            text = pending.pop()
            if isinstance(text, dict):
                pending.extend(text.keys())
                pending.extend(text.values())
            elif isinstance(text, list):
                pending.extend(text)
            elif isinstance(text, str):
                if "\x00" in text:
                    raise ProtocolError("invalid_character", {"field": field})
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ProtocolError("invalid_encoding", {"field": field}) from None


def _item_fields(item: object) -> dict[str, object]:
    if not isinstance(item, dict):
        raise ProtocolError("invalid_item", "each statusReportList item must be an object")
    if len(item) > MAX_FIELDS:
        raise ProtocolError("too_many_fields", {"max_fields": MAX_FIELDS})
    fields: dict[str, object] = {}
    for name, value in item.items():
        if name in RULES:
            fields[name] = _scalar(name, value)
        else:
            fields[name] = value
    update_time = fields.get("updateTime")
    if isinstance(update_time, str) and "%" in update_time:
        fields["updateTime"] = unquote(update_time)
    return fields


def _scalar(name: str, value: object) -> str | None:
    """Known fields are strings in the reference; tolerate JSON numbers and null for them."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and "\x00" in value:
            raise ProtocolError("invalid_character", {"field": name})
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError("invalid_field", {"field": name, "reason": "expected a string"})


def _report(fields: Mapping[str, object]) -> StatusReport:
    known: dict[str, str | None] = {
        name: value if isinstance(value, str) else None for name, value in fields.items() if name in RULES
    }
    values = {name: take(known, name, rule) for name, rule in RULES.items()}
    extra: dict[str, object] = {}
    for name, value in fields.items():
        if name not in RULES:
            check_unknown(name, value)
            extra[name] = value
    total = small_int("total", values["total"])
    sequence = small_int("sequence", values["sequence"])
    if total is not None and sequence is not None and sequence > total:
        raise ProtocolError("invalid_field", {"field": "sequence", "reason": "sequence is greater than total"})
    sms_msg_id = values["smsMsgId"]
    status = values["status"]
    assert sms_msg_id is not None and status is not None  # required, checked by take()
    return StatusReport(
        sms_msg_id=sms_msg_id,
        status=status,
        total=total,
        sequence=sequence,
        status_desc=values["statusDesc"],
        source=values["source"],
        update_time=timestamp("updateTime", values["updateTime"]),
        extend=values["extend"],
        to=number(values["to"]),
        org_code=values["orgCode"],
        extra=extra,
    )
