"""Journal records: an accepted event or a refused request, as bytes and back.

The HTTP layer encodes, the writer decodes; nothing else knows the format. A record is one JSON
object whose ``kind`` says which table it is for.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .protocol import StatusReport, Uplink

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


def report(application_id: int, via: str, received_at: float, event: StatusReport, raw: str) -> bytes:
    return _dumps(
        {
            "kind": "report",
            "app": application_id,
            "via": via,
            "at": received_at,
            "raw": raw,
            "event": {
                "sms_msg_id": event.sms_msg_id,
                "status": event.status,
                "total": event.total,
                "sequence": event.sequence,
                "status_desc": event.status_desc,
                "source": event.source,
                "update_time": event.update_time.isoformat() if event.update_time else None,
                "extend": event.extend,
                "to": event.to,
                "org_code": event.org_code,
                "extra": event.extra,
            },
        }
    )


def uplink(application_id: int, received_at: float, event: Uplink, raw: str) -> bytes:
    return _dumps(
        {
            "kind": "uplink",
            "app": application_id,
            "at": received_at,
            "raw": raw,
            "event": {
                "sms_msg_id": event.sms_msg_id,
                "from_": event.from_,
                "to": event.to,
                "body": event.body,
                "create_time": event.create_time.isoformat() if event.create_time else None,
                "extra": event.extra,
            },
        }
    )


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
    return _dumps(record)


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


def decode(payload: bytes) -> Record:
    data = _loads(payload)
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
