"""Every body of the public HTTP interface, declared once: what the platform posts to the
callbacks, what downstream services send to ``/v1`` and what they get back.

The ``/v1`` handlers validate query parameters and bodies with these models (a broken rule is a
:class:`ProtocolError`, answered as ``400 {"error", "detail"}``), answers are serialised from
them, and ``GET /openapi.json`` publishes their JSON Schema (``receiver/http/openapi.py``). The
callback bodies are parsed on the callback path by ``receiver/protocol/`` (no pydantic there: it
costs more than the whole acknowledgement); their models here take its limits and only
describe them. What the fields mean on the platform's side: docs/protocol.md.

Field names and types are the public interface (docs/api.md): add fields, never rename one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)

from ..correlation.state import STATES
from ..numbers import e164
from ..protocol import ProtocolError
from ..protocol.fields import MAX_FIELDS, MAX_UNKNOWN_NAME, MAX_UNKNOWN_VALUE, small_int, timestamp
from ..protocol.status_report import MAX_BATCH
from ..protocol.status_report import RULES as REPORT_RULES
from ..protocol.uplink import RULES as UPLINK_RULES

# --- building blocks -----------------------------------------------------------------------------

_DATE_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}


def _iso(at: datetime) -> str:
    return at.isoformat()


def _iso_z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# A time as the API answers it: ISO 8601 with its offset (``2024-11-22T02:16:46+00:00``).
Instant = Annotated[datetime, PlainSerializer(_iso, return_type=str, when_used="json"), WithJsonSchema(_DATE_TIME)]
# A blacklist entry's time: ISO 8601 in UTC with ``Z``.
InstantZ = Annotated[datetime, PlainSerializer(_iso_z, return_type=str, when_used="json"), WithJsonSchema(_DATE_TIME)]

HUAWEI_TIME = "yyyy-MM-dd'T'HH:mm:ss'Z' (UTC; fractions and offsets accepted)"


class Shape(BaseModel):
    """A JSON object of the interface: fields by their public names (``from``, not ``from_``)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    def json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


# --- answers: messages, replies, blacklist entries ----------------------------------------------

EventKind = Literal["report", "state", "reply", "optout", "optin", "sent_after_optout"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


class State(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    unreported = "unreported"


State.__doc__ = (
    "`unreported`: a registered send with no delivered or failed state once its report window "
    "(RECEIVER_REPORT_WINDOW, 72 h after its createTime) has passed; a later report still moves it"
)
assert tuple(State) == STATES, "the API's states are the delivery states"


class Error(Shape):
    """Every refusal: ``{"error": "<code>", "detail": ...}``."""

    error: str = Field(description="machine-readable reason")
    detail: Any = Field(description="where it went wrong (never a phone number, text or token)")


class BlacklistEntry(Shape):
    number: str = Field(description="E.164")
    channel: str | None = Field(description="null: every channel")
    source: Literal["keyword", "platform", "manual"]
    reason: str
    sms_msg_id: str | None
    added_by: str | None
    added_at: InstantZ


class BlacklistEntries(BlacklistEntry):
    """A blacklisted number: its oldest entry, and all of them."""

    entries: list[BlacklistEntry] = Field(min_length=1)

    @classmethod
    def of(cls, found: list[BlacklistEntry]) -> BlacklistEntries:
        return cls(**found[0].__dict__, entries=found)


class BlacklistRemoval(Shape):
    number: str
    removed: list[BlacklistEntry]
    blacklisted: bool = Field(description="other entries still hold it")


class BlacklistCheckResult(Shape):
    blacklisted: list[str]


class Parts(Shape):
    total: int
    delivered: int


class Report(Shape):
    status: str
    sequence: int | None
    total: int | None
    source: str | None
    status_desc: str | None
    update_time: Instant | None
    extend: str | None
    to: str | None
    org_code: str | None
    extra: dict[str, Any] = Field(description="fields the reference does not name")
    via: Literal["form", "batch"]
    received_at: Instant


class Reply(Shape):
    sms_msg_id: str = Field(description="the uplink's own id")
    from_: str = Field(alias="from")
    to: str
    body: str
    create_time: Instant | None
    received_at: Instant
    ambiguous: bool = Field(description="the reply could answer more than one message")
    match: Literal["channel", "reply_number", "application", "number"] | None = Field(
        description="the rule that linked it, strongest first: `channel` (sent from the number replied "
        "to), `reply_number` (a reply number of the send's application is a prefix of it), "
        "`application` (a send of the application whose uplink URL it came to, inside the "
        "report window), `number` (a send of no application to the replying number, inside "
        "the report window); null: not linked"
    )
    candidates: int = Field(ge=0, description="how many sends that rule had to choose from (the latest wins)")
    unlinked_reason: Literal["invalid_number", "no_send", "outside_window", "other_application"] | None = Field(
        description="why no rule linked it: the replying number is no phone number; no registered send "
        "to it at or before the reply; only sends older than the report window; only sends "
        "of other applications. null when linked"
    )


class Uplink(Reply):
    application: str
    reply_to: str | None = Field(description="the smsMsgId of the message it answers")


class Message(Shape):
    sms_msg_id: str
    to: str | None
    from_: str | None = Field(alias="from")
    state: State
    status: str | None = Field(description="the latest raw report status")
    parts: Parts
    registered: bool = Field(description="the send was registered with POST /v1/sent")
    sent_status: str | None
    sent_at: Instant | None
    delivered_at: Instant | None
    latency_seconds: float | None
    extend: str | None
    template_id: str | None
    signature: str | None
    message_type: str | None
    application: str | None = Field(description="the application the send was registered for; null: none")
    reports: list[Report]
    replies: list[Reply]
    blacklisted_at_send: BlacklistEntry | None = Field(
        description="the blacklist entry that covered the recipient, for the send's channel, at its "
        "createTime (`channel`: the entry's scope; `added_at`: when the number was "
        "blacklisted); null when none did or the send is not registered"
    )


class MessageSummary(Shape):
    sms_msg_id: str
    to: str
    from_: str | None = Field(alias="from")
    sent_at: Instant
    state: State
    status: str | None
    parts: Parts
    delivered_at: Instant | None
    blacklisted_at_send: bool = Field(description="sent to a number blacklisted for it then")


class MessagePage(Shape):
    messages: list[MessageSummary]
    cursor: str | None = Field(description="null: no page read anything yet")


class UplinkPage(Shape):
    uplinks: list[Uplink]
    cursor: str


class Event(Shape):
    id: str = Field(description="opaque; a cursor for `after` and `Last-Event-ID`")
    kind: EventKind
    at: Instant
    sms_msg_id: str | None
    number: str | None = Field(description="E.164")
    data: dict[str, Any] | None = Field(
        description="by kind: `report` the report (null once pruned); `state` `state`, `previous`, "
        "`status`, `parts`, `registered`, `sent_at`, `delivered_at`, `latency_seconds`; "
        "`reply` `from`, `to`, `body`, `create_time`, `received_at`, `application`, "
        "`reply_to`, `ambiguous`, `match`, `candidates` (when announced), `unlinked_reason`; "
        "`optout`/`optin` `channel`, `source`, `actor`, `reason`; "
        "`sent_after_optout` (a registered send found to have gone to a number blacklisted "
        "for it, or that finding changed) `from`, `sent_at`, `blacklisted_at_send` (the "
        "entry, or null when no longer so)"
    )


class EventPage(Shape):
    events: list[Event]
    next: str


class SentBlacklisted(Shape):
    sms_msg_id: str
    to: str = Field(description="E.164")
    blacklisted_at_send: BlacklistEntry


class SentResult(Shape):
    registered: int
    already_registered: int
    blacklisted: list[SentBlacklisted] = Field(
        description="the body's messages whose recipient was blacklisted for them when sent"
    )


# --- operations ---------------------------------------------------------------------------------


class Health(Shape):
    status: Literal["ok"]


class DatabaseReadiness(Shape):
    reachable: bool
    pending_migrations: list[str] = Field(default_factory=list)
    error: str = ""


class JournalReadiness(Shape):
    writable: bool
    backlog_bytes: int = Field(description="this worker's records not yet stored")
    max_bytes: int
    fill: float
    filling: bool
    error: str = ""


class WriterReadiness(Shape):
    running: bool = Field(description="the writer reported within the last 5 s")
    error: str | None = Field(description="its last database error")
    boosted: bool = Field(
        default=False,
        description="the writer process runs at the workers' priority: the backlog passed half of a worker's"
        " journal bound, and the stores now share the CPU with the acknowledgements",
    )


class Readiness(Shape):
    ready: bool
    database: DatabaseReadiness
    journal: JournalReadiness
    writer: WriterReadiness


# --- requests: validation with the API's refusals -------------------------------------------------


class Request(Shape):
    """A request's parameters or body. :meth:`parse` validates and turns the first broken rule into
    the :class:`ProtocolError` the API answers with: the one a validator raised, else
    ``invalid_field`` with ``detail.field`` and what the model's ``refusals`` say of that field."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")
    refusals: ClassVar[Mapping[str, Mapping[str, object]]] = {}

    @classmethod
    def parse(cls, values: Mapping[str, object]) -> Self:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise cls.refusal(error) from None

    @classmethod
    def refusal(cls, error: ValidationError) -> ProtocolError:
        first = error.errors(include_url=False)[0]
        cause = (first.get("ctx") or {}).get("error")
        item = next((part for part in first["loc"][:-1] if isinstance(part, int)), None)
        if isinstance(cause, ProtocolError):
            if item is None:
                return cause
            detail = cause.detail if isinstance(cause.detail, dict) else {"reason": cause.detail}
            return ProtocolError(cause.code, {"item": item, **detail})
        name = str(first["loc"][0]) if first["loc"] else "body"
        field = cls.model_fields.get(name)
        public = field.alias if field is not None and field.alias else name
        return ProtocolError("invalid_field", {"field": public, **cls.refusals.get(public, {})})


def _digits(value: object) -> object:
    """A page size as a query string gives it: ASCII digits only (no sign, blank or ``_``)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 4):
        raise ValueError("expected digits")
    return value


def _phone(value: object) -> str | None:
    if not value:
        return None
    number = e164(str(value))
    if number is None:
        raise ProtocolError("invalid_field", {"field": "to", "reason": "not a phone number"})
    return number


def _time(name: str) -> BeforeValidator:
    return BeforeValidator(lambda value: timestamp(name, value) if isinstance(value, str) else value)


Limit = Annotated[int, BeforeValidator(_digits)]
Cursor = Annotated[str | None, Field(description="the `cursor` of the previous page, to read on from there")]


class MessageQuery(Request):
    """``GET /v1/messages``: its query parameters."""

    to: Annotated[str | None, BeforeValidator(_phone), WithJsonSchema({"type": "string"})] = Field(
        None, description="only messages to this number (any common form)"
    )
    state: State | None = Field(
        None,
        description="only messages in this state (as the clock says now: `unreported` once the report window "
        "has passed)",
    )
    blacklisted_at_send: Literal["true", "false"] | None = Field(
        None,
        description="only messages sent to a number blacklisted for them at the time (`true`), or only the "
        "others (`false`)",
    )
    since: Annotated[datetime | None, _time("since"), WithJsonSchema({"type": "string"})] = Field(
        None, description="sent at or after (`yyyy-MM-ddTHH:mm:ssZ`, offsets accepted)"
    )
    until: Annotated[datetime | None, _time("until"), WithJsonSchema({"type": "string"})] = Field(
        None, description="sent before (same format)"
    )
    cursor: Cursor = None
    limit: Limit = Field(100, ge=1, le=500, description="page size")

    refusals: ClassVar[Mapping[str, Mapping[str, object]]] = {
        "state": {"allowed": sorted(STATES)},
        "blacklisted_at_send": {"allowed": ["false", "true"]},
        "limit": {"allowed": "1-500"},
    }


class UplinkQuery(Request):
    """``GET /v1/uplinks``: its query parameters."""

    cursor: Cursor = None
    limit: Limit = Field(100, ge=1, le=500, description="page size")

    refusals: ClassVar[Mapping[str, Mapping[str, object]]] = {"limit": {"allowed": "1-500"}}


class EventQuery(Request):
    """``GET /v1/events`` and ``/v1/events/stream``: their query parameters (``kinds`` may repeat)."""

    after: str | None = Field(
        None,
        description="an event's `id` or a page's `next` to read on from; `now`: from the current end; "
        "absent: from the oldest event",
    )
    limit: Limit = Field(100, ge=1, le=1000, description="page size")
    kinds: Annotated[list[str], WithJsonSchema({"type": "string"})] = Field(
        default_factory=list, description=f"comma-separated, of {', '.join(EVENT_KINDS)}: only these kinds"
    )

    refusals: ClassVar[Mapping[str, Mapping[str, object]]] = {"limit": {"allowed": "1-1000"}}


MAX_NUMBERS = 500  # the send API's maximum per request
MAX_CHANNEL = 21
MAX_REASON = 500


def _channel(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_CHANNEL or "\x00" in value:
        raise ProtocolError(
            "invalid_field", {"field": "channel", "reason": f"a channel number, up to {MAX_CHANNEL} characters"}
        )
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError("missing_field", {"field": "reason", "reason": "say why, for the history"})
    if len(value) > MAX_REASON or "\x00" in value:
        raise ProtocolError("invalid_field", {"field": "reason", "max_length": MAX_REASON})
    return value.strip()


def _numbers(value: object) -> object:
    if not isinstance(value, list):
        raise ProtocolError("invalid_field", {"field": "numbers", "reason": "expected a list of numbers"})
    if len(value) > MAX_NUMBERS:
        raise ProtocolError("too_many_numbers", {"max_items": MAX_NUMBERS, "got": len(value)})
    return value


Channel = Annotated[
    str | None,
    BeforeValidator(_channel),
    WithJsonSchema({"type": ["string", "null"], "maxLength": MAX_CHANNEL}),
]
Reason = Annotated[
    str,
    BeforeValidator(_reason),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_REASON}),
]
# Numbers in any common form; each is parsed (``invalid_numbers``) by the handler, which knows the region.
NumberList = Annotated[
    list[Any],
    BeforeValidator(_numbers),
    WithJsonSchema({"type": "array", "maxItems": MAX_NUMBERS, "items": {"type": ["string", "integer"]}}),
]


class BlacklistCheck(Request):
    numbers: NumberList
    channel: Channel = None


class BlacklistChange(Request):
    reason: Reason = Field(description="why, for the history")
    channel: Channel = Field(None, description="null: every channel")


class BlacklistLift(Request):
    reason: Reason = Field(None, description="why, for the history (else `?reason=`)", validate_default=True)
    channel: Channel = Field(None, description="null: every channel")


class ChannelQuery(Request):
    """``GET /v1/blacklist/{number}``: its query parameters."""

    channel: Annotated[Channel, WithJsonSchema({"type": "string", "maxLength": MAX_CHANNEL})] = Field(
        None, description="a channel number: only entries for it (and for every channel)"
    )


class LiftQuery(Request):
    """``DELETE /v1/blacklist/{number}`` without a body: its query parameters."""

    reason: Annotated[str | None, WithJsonSchema({"type": "string", "maxLength": MAX_REASON})] = Field(
        None, description="why, when there is no body"
    )
    channel: Annotated[str | None, WithJsonSchema({"type": "string", "maxLength": MAX_CHANNEL})] = Field(
        None, description="the entry's channel, when there is no body"
    )


# --- POST /v1/sent: the send API's response, as the sender got it (docs/protocol.md, Send results) ---

MESSAGE_TYPES = ("verification", "notification", "promotional")
MAX_RESULTS = 1000
MAX_TEXT = 128  # the send's context (extend, template_id, signature, message_type) and the application
# The longest value of each field of a result item.
SENT_LIMITS = {"smsMsgId": 50, "originTo": 21, "status": 7, "from": 21, "createTime": 32, "countryId": 3}


def _text(name: str, max_len: int = MAX_TEXT, *, required: bool = False) -> Callable[[object], str | None]:
    """A field of the send API's response: a string (an integer is taken as its digits), blank for
    absent, at most ``max_len`` characters, no NUL."""

    def check(value: object) -> str | None:
        if value is None or value == "":
            if required:
                raise ProtocolError("missing_field", {"field": name})
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

    return check


def _described(name: str, *, required: bool = False, **more: Any) -> WithJsonSchema:
    """How a text field of a ``/v1/sent`` body is published: a string or an integer."""
    types = ["string", "integer"] if required else ["string", "integer", "null"]
    limits = {"minLength": 1} if required else {}
    return WithJsonSchema({"type": types, **limits, "maxLength": SENT_LIMITS.get(name, MAX_TEXT), **more})


def _parts(value: object) -> int | None:
    return small_int("total", str(value)) if value not in (None, "") else None


def _created(value: object) -> datetime | None:
    return timestamp("createTime", _text("createTime", SENT_LIMITS["createTime"])(value))


def _message_type(value: object) -> str | None:
    text = _text("message_type")(value)
    if text is not None and text not in MESSAGE_TYPES:
        raise ProtocolError("invalid_field", {"field": "message_type", "allowed": sorted(MESSAGE_TYPES)})
    return text


def _response(value: object) -> object:
    if not isinstance(value, dict):
        raise ProtocolError("invalid_body", "response must be the send API's JSON object")
    return value


def _results(value: object) -> object:
    if not isinstance(value, list):
        raise ProtocolError("invalid_field", {"field": "result", "reason": "expected a list"})
    if len(value) > MAX_RESULTS:
        raise ProtocolError("invalid_field", {"field": "result", "max_items": MAX_RESULTS})
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ProtocolError("invalid_field", {"field": f"result[{index}]", "reason": "expected an object"})
    return value


# Required fields default to None and are validated anyway: absent, they get the same refusal as blank.
_REQUIRED: Any = Field(None, validate_default=True)
_SENT_ITEM_CONFIG = ConfigDict(
    populate_by_name=True,
    frozen=True,
    extra="ignore",
    json_schema_extra={"required": ["smsMsgId", "originTo", "status"]},
)


class SendResultItem(Request):
    """One recipient of a send, as the send API answers it."""

    model_config = _SENT_ITEM_CONFIG

    # In the order they are checked: the first broken rule is the refusal.
    smsMsgId: Annotated[str, BeforeValidator(_text("smsMsgId", 50, required=True)),
                        _described("smsMsgId", required=True)] = _REQUIRED  # fmt: skip
    originTo: Annotated[str, BeforeValidator(_text("originTo", 21, required=True)),
                        _described("originTo", required=True)] = _REQUIRED  # fmt: skip
    total: Annotated[int | None, BeforeValidator(_parts),
                     WithJsonSchema({"type": ["string", "integer", "null"],
                                     "description": "parts, a positive integer"})] = None  # fmt: skip
    from_: Annotated[str | None, BeforeValidator(_text("from", 21)), _described("from")] = Field(None, alias="from")
    status: Annotated[str, BeforeValidator(_text("status", 7, required=True)),
                      _described("status", required=True)] = _REQUIRED  # fmt: skip
    createTime: Annotated[datetime | None, BeforeValidator(_created),
                          WithJsonSchema({"type": ["string", "null"], "maxLength": SENT_LIMITS["createTime"],
                                          "description": HUAWEI_TIME})] = None  # fmt: skip
    countryId: Annotated[str | None, BeforeValidator(_text("countryId", 3)), _described("countryId")] = None


_Application = Annotated[
    str | None,
    BeforeValidator(_text("application")),
    WithJsonSchema({"type": ["string", "null"], "maxLength": MAX_TEXT,
                    "description": "the application the sends belong to (its name)"}),
]  # fmt: skip


class SendResponse(Request):
    """the Huawei send API's response (docs/protocol.md, Send results), as received"""

    code: Any = Field(None, description="kept as sent")
    description: Any = Field(None, description="kept as sent")
    result: Annotated[list[SendResultItem], BeforeValidator(_results)] = Field(
        default_factory=list, max_length=MAX_RESULTS
    )


class SentResponse(SendResponse):
    """the send API's response, with the application it belongs to"""

    application: _Application = None


class SentWrapped(Request):
    """the send API's response with the send's context"""

    extend: Annotated[str | None, BeforeValidator(_text("extend")), _described("extend")] = None
    template_id: Annotated[str | None, BeforeValidator(_text("template_id")), _described("template_id")] = None
    signature: Annotated[str | None, BeforeValidator(_text("signature")), _described("signature")] = None
    message_type: Annotated[str | None, BeforeValidator(_message_type),
                            WithJsonSchema({"enum": [*MESSAGE_TYPES, None, ""]})] = None  # fmt: skip
    response: Annotated[SendResponse, BeforeValidator(_response)]
    application: _Application = None



def parse_sent_body(document: object) -> SentResponse | SentWrapped:
    """A ``POST /v1/sent`` body: the send API's response, or that response wrapped with the send's
    context (``{"response": ...}``). Refusals name the item (``detail.item``) they are about."""
    if not isinstance(document, dict):
        raise ProtocolError("invalid_body", "expected a JSON object: the send API's response")
    if "response" in document:
        return SentWrapped.parse(document)
    return SentResponse.parse(document)


# --- the platform's side: callbacks, described here, parsed by receiver/protocol/ ------------------

_UNKNOWN_FIELD: dict[str, Any] = {"type": "string", "maxLength": MAX_UNKNOWN_VALUE}  # kept in `extra`
_FORM_CONFIG = ConfigDict(
    populate_by_name=True,
    frozen=True,
    json_schema_extra={
        "additionalProperties": _UNKNOWN_FIELD,
        "propertyNames": {"maxLength": MAX_UNKNOWN_NAME},
        "maxProperties": MAX_FIELDS,
    },
)
_SMALL_INT = r"^(0?[1-9]|[1-9][0-9])?$"  # empty: absent


def _form_field(rules: Mapping[str, Any], name: str, description: str | None = None, **more: Any) -> Any:
    """A form field with the limits the protocol's parser enforces."""
    rule = rules[name]
    return Field(
        ... if rule.required else None,
        min_length=1 if rule.required else None,
        max_length=rule.max_len,
        description=description,
        **more,
    )


class StatusReportForm(Shape):
    """One status report as the form sends it (docs/protocol.md, Status reports)."""

    model_config = _FORM_CONFIG

    smsMsgId: str = _form_field(REPORT_RULES, "smsMsgId", "the send API's smsMsgId")
    status: str = _form_field(REPORT_RULES, "status", "status code, stored as sent (e.g. DELIVRD)")
    total: str = _form_field(REPORT_RULES, "total", "parts of a long message", pattern=_SMALL_INT)
    sequence: str = _form_field(REPORT_RULES, "sequence", "this part, at most total", pattern=_SMALL_INT)
    statusDesc: str = _form_field(REPORT_RULES, "statusDesc")
    source: str = _form_field(REPORT_RULES, "source", "1 SMS platform, 2 SMS center, 3 Huawei platform")
    updateTime: str = _form_field(REPORT_RULES, "updateTime", HUAWEI_TIME)
    extend: str = _form_field(REPORT_RULES, "extend")
    to: str = _form_field(REPORT_RULES, "to", "the recipient; only with extend")
    orgCode: str = _form_field(REPORT_RULES, "orgCode")


class UplinkForm(Shape):
    """One uplink SMS as the form sends it (docs/protocol.md, Uplink SMS)."""

    model_config = _FORM_CONFIG

    smsMsgId: str = _form_field(UPLINK_RULES, "smsMsgId", "the uplink's own id")
    from_: str = _form_field(UPLINK_RULES, "from", "who replied (`%2B86...`)", alias="from")
    to: str = _form_field(UPLINK_RULES, "to", "the channel number replied to")
    body: str = _form_field(UPLINK_RULES, "body", "the reply's text")
    createTime: str = _form_field(UPLINK_RULES, "createTime", HUAWEI_TIME)


def batch_item_schema() -> dict[str, Any]:
    """A report inside a JSON batch: the form's fields, each also as a number (or null: absent)."""
    form = StatusReportForm.model_json_schema()
    properties: dict[str, Any] = {}
    for name, schema in form["properties"].items():
        plain = {key: value for key, value in schema.items() if key not in ("title", "default")}
        variants = [plain, {"type": "integer"}]
        if name not in form["required"]:
            variants.append({"type": "null"})
        properties[name] = {"anyOf": variants}
    return {
        "type": "object",
        "required": form["required"],
        "properties": properties,
        "propertyNames": {"maxLength": MAX_UNKNOWN_NAME},
        "maxProperties": MAX_FIELDS,
    }


class StatusReportBatch(Shape):
    """The batch status report (docs/protocol.md, Batch status reports)."""

    statusReportList: Annotated[
        list[dict[str, Any]],
        WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                        "items": {"$ref": "#/components/schemas/StatusReportItem"}}),
    ]  # fmt: skip
