"""What the platform's pushes must be to be accepted: every policy of the callback path, no I/O.

The HTTP adapter (:mod:`receiver.http.callbacks`) reads the request and calls, in order,
:func:`check_source` (before the body is read), :func:`check_declared_size`,
:func:`check_signature` (applications with push keys) and :func:`accept`. Each answers with
what to do: nothing (go on), a :class:`Refusal` (a 4xx with a JSON reason, kept in quarantine),
or for :func:`accept` an :class:`Accepted`: the journal records to make durable before the
answer, the rejected items of a batch to quarantine, and the answer to give once durable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import logs, netaddr, records
from .applications import Application
from .journal.envelope import Kind
from .protocol import (
    ProtocolError,
    StatusReport,
    parse_status_report_batch,
    parse_status_report_form,
    parse_uplink_form,
    signature,
)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MEDIA_TYPES = {Kind.STATUS_REPORT: FORM, Kind.STATUS_REPORTS: JSON, Kind.UPLINK: FORM}


@dataclass(slots=True)
class Refusal:
    """A 4xx: ``error`` a stable code, ``detail`` where it went wrong. ``body`` is what the
    quarantine keeps (``None``: leave no trace, for an unknown application), ``body_bytes`` the
    body's size when ``body`` is not all of it."""

    status: int
    error: str
    detail: object = None
    body: bytes | None = b""
    body_bytes: int | None = None
    notes: dict[str, object] = field(default_factory=dict)  # for the request's log line


@dataclass(slots=True)
class Accepted:
    payload: bytes | None  # the journal record (None: a batch whose every item was refused)
    rejected: list[Refusal]  # a batch's refused items, each quarantined on its own
    notes: dict[str, object]  # for the request's log line
    answer: Refusal | None = None  # given once the record is durable (a batch with refused items)


UNKNOWN_APPLICATION = Refusal(404, "unknown_application", "no application has this callback URL", body=None)


def check_source(app: Application, client: netaddr.IPAddress | None) -> Refusal | None:
    """An application with a source allow-list takes pushes from those networks only (403)."""
    if app.allowed_sources and not netaddr.allowed(client, app.allowed_sources):
        return Refusal(403, "source_not_allowed", {"source": client and client.compressed})
    return None


def too_large(limit: int, start: bytes = b"", size: int | None = None) -> Refusal:
    return Refusal(413, "body_too_large", {"max_bytes": limit}, body=start[:4096], body_bytes=size)


def check_declared_size(content_length: bytes | None, limit: int) -> Refusal | None:
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        return too_large(limit, size=int(content_length))
    return None


def check_signature(
    app: Application,
    *,
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    now: float,
    max_skew: float,
) -> Refusal | None:
    """An application with push keys takes only pushes signed with one of them (401). The
    refusal's ``notes["signature"]`` is the reason; ``unknown_access_key`` may follow a key
    rotation the caller has not seen yet (it may look the application up again and retry)."""
    try:
        signature.verify(
            app.push_keys, method=method, raw_path=raw_path, query_string=query_string, headers=headers,
            body=body, now=now, max_skew=max_skew,
        )  # fmt: skip
    except signature.SignatureError as failure:
        return Refusal(401, "invalid_signature", failure.detail, body=body, notes={"signature": failure.reason})
    return None


def accept(app: Application, kind: Kind, content_type: bytes | None, body: bytes, received_at: float) -> Accepted | Refusal:
    """Check the media type and the body against the protocol; what to journal, and how to answer."""
    media_type = MEDIA_TYPES[kind]
    if content_type is None or content_type.split(b";", 1)[0].strip().lower() != media_type.encode():
        return Refusal(415, "unsupported_media_type", {"expected": media_type}, body=body)
    try:
        if kind is Kind.STATUS_REPORT:
            notes = _report_notes(parse_status_report_form(body))
        elif kind is Kind.UPLINK:
            event = parse_uplink_form(body)
            notes = {"sms_msg_id": event.sms_msg_id, "from": logs.mask_number(event.from_), "channel": event.to}
        else:
            return _accept_batch(app, body, received_at)
    except ProtocolError as error:
        return Refusal(400, error.code, error.detail, body=body)
    return Accepted(records.accepted(kind, app.id, received_at, body), [], notes)


def _accept_batch(app: Application, body: bytes, received_at: float) -> Accepted | Refusal:
    """A batch is journaled whole, once; the writer stores its good items. A refused item does
    not cost the good ones beside it: they are stored, and the answer is a 400 that lists the
    refused ones (each kept in quarantine)."""
    batch = parse_status_report_batch(body)
    notes: dict[str, object] = {"items": len(batch.reports), "rejected": len(batch.rejected)}
    payload = records.accepted(Kind.STATUS_REPORTS, app.id, received_at, body) if batch.reports else None
    if not batch.rejected:
        return Accepted(payload, [], notes)
    rejected = [
        Refusal(400, item.error.code, item.error.detail, body=item.raw.encode()) for item in batch.rejected
    ]
    detail = {
        "accepted": len(batch.reports),
        "rejected": [{"index": i.index, "error": i.error.code, "detail": i.error.detail} for i in batch.rejected],
    }
    return Accepted(payload, rejected, notes, answer=Refusal(400, "invalid_items", detail))


def _report_notes(report: StatusReport) -> dict[str, object]:
    notes: dict[str, object] = {"sms_msg_id": report.sms_msg_id, "status": report.status}
    if report.total is not None and report.total > 1:
        notes["part"] = f"{report.sequence}/{report.total}"
    if report.to:
        notes["to"] = logs.mask_number(report.to)
    return notes

