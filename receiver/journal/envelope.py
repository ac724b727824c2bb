"""What one journal record holds: a versioned envelope around the request body as it came.

An accepted callback is journaled as it arrived, never re-serialised: the acknowledgement pays
for one small header, and the writer parses the body again with the same pure protocol
functions. Version 2 (this one) is binary::

    version (u8 = 2) | kind (u8) | application id (i32 LE, -1: none) | received at (f64 LE, unix s) | body

``kind`` says which callback the body is (a form report, a JSON batch, a form uplink) or that it
is a refusal for the quarantine (its body then is the refusal as JSON). Version 1 records are
JSON objects (their first byte is ``{``) with the parsed fields; a journal written by a release
that wrote them still replays: :func:`decode` tells the two apart by that first byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

VERSION = 2
_HEADER = struct.Struct("<BBid")
LEGACY_JSON = ord("{")  # version 1: one JSON object per record


class Kind(IntEnum):
    STATUS_REPORT = 1  # a form-encoded status report (POST .../status-report)
    STATUS_REPORTS = 2  # a JSON batch of status reports (POST .../status-reports)
    UPLINK = 3  # a form-encoded uplink SMS (POST .../uplink)
    QUARANTINE = 4  # a refused request, as JSON (receiver.records.quarantine)


# The callback endpoints (the last segment of their path) and the record kind of each.
ENDPOINT_KINDS = {
    "status-report": Kind.STATUS_REPORT,
    "status-reports": Kind.STATUS_REPORTS,
    "uplink": Kind.UPLINK,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    application_id: int | None
    received_at: float
    body: bytes


def encode(kind: Kind, application_id: int | None, received_at: float, body: bytes) -> bytes:
    return _HEADER.pack(VERSION, kind, -1 if application_id is None else application_id, received_at) + body


def header(kind: Kind, application_id: int | None, received_at: float) -> bytes:
    """The header alone, for a caller that sends header and body to the journal as two pieces."""
    return _HEADER.pack(VERSION, kind, -1 if application_id is None else application_id, received_at)


def decode(payload: bytes) -> Envelope | None:
    """The envelope of a version 2 record; None for a version 1 (JSON) record. Raises
    ``ValueError`` for anything else (a record of a newer release, or damage past the CRC)."""
    if not payload:
        raise ValueError("empty journal record")
    version = payload[0]
    if version == LEGACY_JSON:
        return None
    if version != VERSION or len(payload) < _HEADER.size:
        raise ValueError(f"journal record of unknown version {version}")
    _, kind, application_id, received_at = _HEADER.unpack_from(payload)
    return Envelope(Kind(kind), None if application_id < 0 else application_id, received_at, payload[_HEADER.size :])


def received_at(payload: bytes) -> float | None:
    """A record's receipt time without decoding its body (None when it cannot be told cheaply)."""
    if len(payload) >= _HEADER.size and payload[0] == VERSION:
        return float(_HEADER.unpack_from(payload)[3])
    return None
