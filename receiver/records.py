"""Journal records: an accepted callback or a refused request, as bytes and back.

The callback path encodes, the writer decodes. An accepted callback is its body as it came, in
the journal's versioned envelope (:mod:`receiver.journal.envelope`); the writer parses it again
with the protocol's pure functions, so the acknowledgement never re-serialises fields. A refused
request is a small JSON object in the same envelope. Version 1 records (JSON objects with the
parsed fields, written by earlier releases) still decode.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .journal import envelope
from .protocol import (
    StatusReport,
    Uplink,
    parse_status_report_batch,
    parse_status_report_form,
    parse_uplink_form,
)

_std_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(record: dict[str, Any]) -> bytes:
    """orjson (on every acknowledgement: several times faster), or the standard library for what
    orjson refuses to write as it is: integers beyond 64 bits, NaN, lone surrogates. Such values
    can only come from the unknown fields of a JSON batch item."""
    try:
        return orjson.dumps(record)
    except (TypeError, orjson.JSONEncodeError):
        return _std_dumps(record).encode("utf-8", "surrogatepass")


def _loads(payload: bytes) -> Any:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:  # written by the standard library: NaN, surrogates
        return _std_loads(payload)
    event = data.get("event") if type(data) is dict else None
    if type(event) is dict and _has_float(event.get("extra")):
        # orjson reads an integer beyond 64 bits as a float: the standard library keeps it exact
        return _std_loads(payload)
    return data


def _std_loads(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8", "surrogatepass"))


def _has_float(value: object) -> bool:
    if type(value) is float:
        return True
    if type(value) is dict:
        return any(_has_float(v) for v in value.values())
    if type(value) is list:
        return any(_has_float(v) for v in value)
    return False


def accepted(kind: envelope.Kind, application_id: int, received_at: float, body: bytes) -> bytes:
    """An accepted callback: its body as it came, in a version 2 envelope."""
    return envelope.encode(kind, application_id, received_at, body)


# Forensics need the start of a refused body, not all of it: a real batch of 50 reports fits in
# 16 KiB. The bound keeps a flood of large garbage from filling the journal (and PostgreSQL).
QUARANTINE_MAX_RAW = 16 << 10


MAX_CONTENT_TYPE = 256  # kept of a refused request's Content-Type: a header, as long as a client makes it


def quarantine(
    application_id: int | None,
    endpoint: str,
    received_at: float,
    error: str,
    detail: object,
    content_type: str | None,
    raw: bytes,
    *,
    body_bytes: int | None = None,
) -> bytes:
    """One refused request; ``body_bytes``: its body's size when ``raw`` is not all of it."""
    return _quarantine(
        application_id, endpoint, received_at, error, detail,
        content_type=content_type[:MAX_CONTENT_TYPE] if content_type else content_type,
        raw=base64.b64encode(raw[:QUARANTINE_MAX_RAW]).decode(),
        raw_bytes=len(raw) if body_bytes is None else body_bytes,
    )  # fmt: skip


def quarantine_count(
    application_id: int | None,
    endpoint: str,
    error: str,
    occurrences: int,
    first_at: float,
    last_at: float,
    detail: object,
) -> bytes:
    """``occurrences`` refusals of one kind, received from ``first_at`` to ``last_at``, whose
    bodies were not kept: counted, and stored as one quarantine row without a body."""
    return _quarantine(
        application_id, endpoint, last_at, error, detail,
        content_type=None, raw="", raw_bytes=None, n=occurrences, first=first_at,
    )  # fmt: skip


def _quarantine(
    application_id: int | None, endpoint: str, at: float, error: str, detail: object, **rest: object
) -> bytes:
    record = {"kind": "quarantine", "id": str(uuid.uuid4()), "app": application_id, "endpoint": endpoint,
              "at": at, "error": error, "detail": detail, **rest}  # fmt: skip
    return envelope.encode(envelope.Kind.QUARANTINE, application_id, at, _dumps(record))


@dataclass(frozen=True, slots=True)
class ReportRecord:
    application_id: int
    via: str
    received_at: datetime
    raw: str
    event: StatusReport


@dataclass(frozen=True, slots=True)
class UplinkRecord:
    application_id: int
    received_at: datetime
    raw: str
    event: Uplink


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    record_id: uuid.UUID
    application_id: int | None
    endpoint: str
    received_at: datetime
    error: str
    detail: object
    content_type: str | None
    raw: bytes
    body_bytes: int | None = None  # the refused body's size; raw holds at most QUARANTINE_MAX_RAW of it
    occurrences: int = 1  # more than 1: refusals of one kind whose bodies were not kept
    first_at: datetime | None = None  # the earliest of them (received_at: the latest)


Record = ReportRecord | UplinkRecord | QuarantineRecord


def decode(payload: bytes) -> list[Record]:
    """The records of one journal payload: one, or a batch's accepted reports (none when every
    item of it was refused). Raises ``ValueError`` (``ProtocolError`` included), ``KeyError`` or
    ``TypeError`` for a payload that holds no storable record."""
    found = envelope.decode(payload)
    if found is None:
        return [_decode_json(_loads(payload))]
    at = datetime.fromtimestamp(found.received_at, UTC)
    app, body = found.application_id, found.body
    if found.kind is envelope.Kind.QUARANTINE:
        return [_decode_json(_loads(body))]
    if app is None:
        raise ValueError("an accepted callback without an application")
    if found.kind is envelope.Kind.STATUS_REPORT:
        return [ReportRecord(app, "form", at, body.decode(), parse_status_report_form(body))]
    if found.kind is envelope.Kind.STATUS_REPORTS:
        batch = parse_status_report_batch(body)
        return [ReportRecord(app, "batch", at, raw, report) for report, raw in batch.reports]
    return [UplinkRecord(app, at, body.decode(), parse_uplink_form(body))]


def _decode_json(data: Any) -> Record:
    """A version 1 record (any kind), or the JSON of a version 2 quarantine record."""
    at = datetime.fromtimestamp(data["at"], UTC)
    kind = data["kind"]
    if kind == "report":
        fields = data["event"]
        fields["update_time"] = _time(fields["update_time"])
        return ReportRecord(data["app"], data["via"], at, data["raw"], StatusReport(**fields))
    if kind == "uplink":
        fields = data["event"]
        fields["create_time"] = _time(fields["create_time"])
        return UplinkRecord(data["app"], at, data["raw"], Uplink(**fields))
    if kind == "quarantine":
        return QuarantineRecord(
            uuid.UUID(data["id"]),
            data["app"],
            data["endpoint"],
            at,
            data["error"],
            data["detail"],
            data["content_type"],
            base64.b64decode(data["raw"]),
            data.get("raw_bytes"),
            data.get("n", 1),
            datetime.fromtimestamp(data["first"], UTC) if data.get("first") is not None else None,
        )
    raise ValueError(f"unknown journal record kind {kind!r}")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
