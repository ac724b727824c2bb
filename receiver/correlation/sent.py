"""``POST /v1/sent`` bodies: the Huawei send API's response, as the sender got it (docs/protocol.md, Send
results).

Either the response itself, ``{"code", "description", "result": [...]}``, or that response
wrapped with the send's context: ``{"response": ..., "extend", "template_id", "signature",
"message_type"}``. Either may name the ``application`` the sends belong to, at its top level.
Pure: validation only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..numbers import e164
from ..protocol import ProtocolError
from ..protocol.fields import small_int, timestamp

MESSAGE_TYPES = {"verification", "notification", "promotional"}
MAX_RESULTS = 1000
MAX_TEXT = 128  # the send's context (extend, template_id, signature, message_type) and the application
# Longest value of each field of a result item (docs/protocol.md, Send results).
SENT_LIMITS = {"smsMsgId": 50, "originTo": 21, "status": 7, "from": 21, "createTime": 32, "countryId": 3}


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


def parse_sent(document: object, default_region: str = "CN") -> list[SentMessage]:
    if not isinstance(document, dict):
        raise ProtocolError("invalid_body", "expected a JSON object: the send API's response")
    context: dict[str, Any] = {}
    response: object = document
    if "response" in document:
        response = document["response"]
        for key in ("extend", "template_id", "signature", "message_type"):
            context[key] = _optional_str(document, key, MAX_TEXT)
        if context["message_type"] is not None and context["message_type"] not in MESSAGE_TYPES:
            raise ProtocolError("invalid_field", {"field": "message_type", "allowed": sorted(MESSAGE_TYPES)})
    if not isinstance(response, dict):
        raise ProtocolError("invalid_body", "response must be the send API's JSON object")
    results = response.get("result", [])
    if not isinstance(results, list):
        raise ProtocolError("invalid_field", {"field": "result", "reason": "expected a list"})
    if len(results) > MAX_RESULTS:
        raise ProtocolError("invalid_field", {"field": "result", "max_items": MAX_RESULTS})
    messages = []
    for index, item in enumerate(results):
        if not isinstance(item, dict):
            raise ProtocolError("invalid_field", {"field": f"result[{index}]", "reason": "expected an object"})
        try:
            messages.append(_message(item, context, default_region))
        except ProtocolError as error:
            detail = error.detail if isinstance(error.detail, dict) else {"reason": error.detail}
            raise ProtocolError(error.code, {"item": index, **detail}) from None
    return messages


def parse_application(document: object) -> str | None:
    """The name of the application the document's sends belong to, when it gives one."""
    if not isinstance(document, dict):
        return None
    return _optional_str(document, "application", MAX_TEXT)


def _message(item: dict[str, Any], context: dict[str, Any], region: str) -> SentMessage:
    sms_msg_id = _required_str(item, "smsMsgId", SENT_LIMITS["smsMsgId"])
    origin_to = _required_str(item, "originTo", SENT_LIMITS["originTo"])
    total_value = item.get("total")
    total = small_int("total", str(total_value)) if total_value not in (None, "") else None
    return SentMessage(
        sms_msg_id=sms_msg_id,
        to=e164(origin_to, region) or origin_to,
        from_=_optional_str(item, "from", SENT_LIMITS["from"]),
        status=_required_str(item, "status", SENT_LIMITS["status"]),
        create_time=timestamp("createTime", _optional_str(item, "createTime", SENT_LIMITS["createTime"])),
        country_id=_optional_str(item, "countryId", SENT_LIMITS["countryId"]),
        total=total or 1,
        extend=context.get("extend"),
        template_id=context.get("template_id"),
        signature=context.get("signature"),
        message_type=context.get("message_type"),
        raw=item,
    )


def _required_str(item: dict[str, Any], name: str, max_len: int) -> str:
    value = _optional_str(item, name, max_len)
    if value is None:
        raise ProtocolError("missing_field", {"field": name})
    return value


def _optional_str(item: dict[str, Any], name: str, max_len: int) -> str | None:
    value = item.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ProtocolError("invalid_field", {"field": name, "reason": "expected a string"})
    if len(value) > max_len:
        raise ProtocolError("field_too_long", {"field": name, "max_length": max_len})
    if "\x00" in value:
        raise ProtocolError("invalid_character", {"field": name})
    return value
