"""Uplink SMS: a recipient's reply, one per form-encoded request (docs/protocol.md, Uplink SMS)."""

from __future__ import annotations

from .errors import ProtocolError
from .events import Uplink
from .fields import Rule, check_unknown, number, take, timestamp
from .form import decode_form

RULES: dict[str, Rule] = {
    "smsMsgId": Rule(required=True, max_len=50),
    "from": Rule(required=True, max_len=21),
    "to": Rule(required=True, max_len=21),
    "body": Rule(required=True, max_len=160),
    "createTime": Rule(required=False, max_len=32),
}


def parse_uplink_form(body: bytes) -> Uplink:
    fields = decode_form(body)
    values = {name: take(fields, name, rule) for name, rule in RULES.items()}
    extra: dict[str, object] = {}
    for name, value in fields.items():
        if name not in RULES:
            check_unknown(name, value)
            extra[name] = value
    sms_msg_id, sender, to, text = values["smsMsgId"], number(values["from"]), number(values["to"]), values["body"]
    if not sender or not to:
        raise ProtocolError("missing_field", {"field": "from" if not sender else "to"})
    assert sms_msg_id is not None and text is not None  # required, checked by take()
    return Uplink(
        sms_msg_id=sms_msg_id,
        from_=sender,
        to=to,
        body=text,
        create_time=timestamp("createTime", values["createTime"]),
        extra=extra,
    )
