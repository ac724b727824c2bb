"""Typed events: what the platform told us, decoded, validated, nothing more."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One status report (docs/protocol.md, Status reports). ``status`` is an open string."""

    sms_msg_id: str
    status: str
    total: int | None = None
    sequence: int | None = None
    status_desc: str | None = None
    source: str | None = None
    update_time: datetime | None = None
    extend: str | None = None
    to: str | None = None
    org_code: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def dedupe_key(self, application_id: int) -> bytes:
        """Identity of the report: every field the platform sent, for one application.

        The same report pushed twice has the same key; a later report for the same part with
        another status (or another ``updateTime``) is a different report and is kept too.
        """
        return _digest(
            "status_report",
            application_id,
            self.sms_msg_id,
            self.status,
            self.total,
            self.sequence,
            self.status_desc,
            self.source,
            self.update_time.isoformat() if self.update_time else None,
            self.extend,
            self.to,
            self.org_code,
            self.extra,
        )


@dataclass(frozen=True, slots=True)
class Uplink:
    """One uplink SMS, a recipient's reply (docs/protocol.md, Uplink SMS)."""

    sms_msg_id: str
    from_: str
    to: str
    body: str
    create_time: datetime | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _digest(*parts: object) -> bytes:
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()
