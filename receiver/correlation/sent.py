"""``POST /v1/sent`` bodies: the Huawei send API's response, as the sender got it (docs/protocol.md, Send
results), as the sends to register.

Either the response itself, ``{"code", "description", "result": [...]}``, or that response
wrapped with the send's context: ``{"response": ..., "extend", "template_id", "signature",
"message_type"}``. Either may name the ``application`` the sends belong to, at its top level.
The body's shape and refusals are :func:`receiver.api.models.parse_sent_body`'s. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.models import SentWrapped, parse_sent_body
from ..numbers import e164


@dataclass(frozen=True, slots=True)
class SentMessage:
    sms_msg_id: str
    to: str  # E.164 when it parses, else as sent
    from_: str | None
    status: str
    create_time: datetime | None
    country_id: str | None
    total: int
    extend: str | None
    template_id: str | None
    signature: str | None
    message_type: str | None
    raw: dict[str, Any]


def parse_sent(document: object, default_region: str = "CN") -> tuple[list[SentMessage], str | None]:
    """The sends a body registers, and the name of the application it says they belong to (if any)."""
    body = parse_sent_body(document)
    assert isinstance(document, dict)  # parse_sent_body refuses anything else
    if isinstance(body, SentWrapped):
        response, raw_items = body.response, document["response"].get("result", [])
        context = (body.extend, body.template_id, body.signature, body.message_type)
    else:
        response, raw_items = body, document.get("result", [])
        context = (None, None, None, None)
    extend, template_id, signature, message_type = context
    messages = [
        SentMessage(
            sms_msg_id=item.smsMsgId,
            to=e164(item.originTo, default_region) or item.originTo,
            from_=item.from_,
            status=item.status,
            create_time=item.createTime,
            country_id=item.countryId,
            total=item.total or 1,
            extend=extend,
            template_id=template_id,
            signature=signature,
            message_type=message_type,
            raw=raw,
        )
        for item, raw in zip(response.result, raw_items, strict=True)
    ]
    return messages, body.application
