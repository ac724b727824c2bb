"""``GET /openapi.json``: the OpenAPI 3.1 document of every route the service serves (no key needed).

Written by hand, next to nothing else: ``PATHS`` holds one entry per route template, built from
the small helpers below (``v1`` adds the bearer key and its ``401``/``503`` answers). To document a
new route, add its entry to ``PATHS`` (and any schema it names to ``SCHEMAS``); the test suite
checks that the document and the application's routes name the same paths and methods, and
fuzzes every operation against it (schemathesis), so the document cannot drift from the code.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import __version__

Schema = dict[str, Any]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    return {"anyOf": [schema, {"type": "null"}]}


def text(max_length: int | None = None, *, min_length: int | None = None, **more: Any) -> Schema:
    schema: Schema = {"type": "string", **more}
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


TIME = text(format="date-time")


def error(description: str) -> dict[str, Any]:
    """A refusal: ``{"error": "<code>", "detail": ...}``; the description lists the codes."""
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


def ok(description: str, schema: Schema | None = None, media_type: str = JSON) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {media_type: {"schema": schema}}}


def body(schema: Schema, media_type: str = JSON, *, required: bool = True, **more: Any) -> dict[str, Any]:
    return {"required": required, "content": {media_type: {"schema": schema, **more}}}


def param(
    name: str, where: str, schema: Schema, description: str, *, required: bool = False, example: object = None
) -> dict[str, Any]:
    parameter = {"name": name, "in": where, "required": required or where == "path", "schema": schema,
                 "description": description}  # fmt: skip
    if example is not None:
        parameter["example"] = example
    return parameter


def v1(operation: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1`` operation: bearer API key; ``401`` without a valid one, ``503`` when PostgreSQL is away."""
    responses = {
        **operation["responses"],
        "401": error("`unauthorized`: no valid API key (`Authorization: Bearer <key>`)"),
        "503": error("`database_unavailable`: PostgreSQL is not reachable; try again shortly"),
    }
    return {**operation, "security": [{"apiKey": []}], "responses": dict(sorted(responses.items()))}


# --- the platform's side: the three callbacks ---------------------------------------------------

TOKEN = param("token", "path", text(min_length=1), "the application's secret callback token")
_CALLBACK_ERRORS = {
    "401": error(
        "`invalid_signature`: the application has push keys and the push is not signed with one of "
        "them (`SDK-HMAC-SHA256`, `X-Sdk-Date` within the allowed skew)"
    ),
    "404": error("`unknown_application`: no application has this token (nothing is stored)"),
    "413": error("`body_too_large`: over `RECEIVER_MAX_BODY_BYTES`"),
    "415": error("`unsupported_media_type`: another `Content-Type`; `detail.expected` says which"),
    "503": error("`not_durable`: the event could not be written to the journal; nothing was acknowledged"),
}
_FORM_ERRORS = (
    "`missing_field`, `field_too_long`, `invalid_field`, `invalid_encoding` (not UTF-8), "
    "`invalid_character` (NUL), `duplicate_field`, `too_many_fields`; `detail.field` names the field"
)


def callback(summary: str, description: str, request: dict[str, Any], bad_request: str) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["callbacks"],
            "summary": summary,
            "description": description,
            "parameters": [TOKEN],
            # Optional: only applications created with --push-key check the platform's signature.
            "security": [{}, {"pushSignature": []}],
            "requestBody": request,
            "responses": {
                "200": ok("durable (or a duplicate of a stored event): an empty body, as the platform expects"),
                "400": error(bad_request),
                **_CALLBACK_ERRORS,
            },
        }
    }


STATUS_REPORT_EXAMPLE = {
    "sequence": "1", "total": "1", "orgCode": "000", "updateTime": "2018-04-13T06:31:46Z", "source": "2",
    "smsMsgId": "b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6", "status": "DELIVRD",
}  # fmt: skip
UPLINK_EXAMPLE = {
    "from": "+8615123456789", "to": "10691002019", "body": "R", "smsMsgId": "9692b5be-c427-4525-8e73-cf4a6ac5b3f7",
}  # fmt: skip

_PATHS_CALLBACKS = {
    "/callbacks/{token}/status-report": callback(
        "One status report",
        "The platform's status report, form-encoded (Huawei reference §1). Unknown fields are kept.",
        body(ref("StatusReportForm"), FORM, example=STATUS_REPORT_EXAMPLE),
        _FORM_ERRORS,
    ),
    "/callbacks/{token}/status-reports": callback(
        "A batch of 1 to 50 status reports",
        "The platform's batch status report (Huawei reference §2). Good items are stored even when "
        "others are refused: then the answer is `400 invalid_items` with `detail.accepted` and "
        "`detail.rejected` (`index`, `error`, `detail` of each refused item).",
        body(ref("StatusReportBatch"), example={"statusReportList": [STATUS_REPORT_EXAMPLE]}),
        "`invalid_json`, `invalid_encoding`, `invalid_batch` (not `{\"statusReportList\": [1 to 50 items]}`), "
        "`invalid_items` (some items refused, the others stored)",
    ),
    "/callbacks/{token}/uplink": callback(
        "One uplink SMS (a reply)",
        "A recipient's reply, form-encoded (Huawei reference §3). Unknown fields are kept.",
        body(ref("UplinkForm"), FORM, example=UPLINK_EXAMPLE),
        _FORM_ERRORS,
    ),
}

# --- the downstream services' side: /v1 --------------------------------------------------------

NUMBER = param(
    "number", "path", text(min_length=1), "a phone number in any common form (`+86...`, `86...`, `%2B86...`)",
    example="+8613112345678",
)
CHANNEL = param("channel", "query", text(21), "a channel number: only entries for it (and for every channel)")
CURSOR = param("cursor", "query", text(), "the `cursor` of the previous page, to read on from there")
LIMIT = param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}, "page size")
_INVALID = "`invalid_field` (`detail.field` names it)"
EVENT_KINDS = ["report", "state", "reply", "optout", "optin", "sent_after_optout"]
STATES = ["pending", "delivered", "failed", "unreported"]
APPLICATION_FIELD = {"type": ["string", "null"], "maxLength": 128,
                     "description": "the application the sends belong to (its name)"}
EVENTS_AFTER = param("after", "query", text(), "an event's `id` or a page's `next` to read on from; `now`: from the "
                     "current end; absent: from the oldest event")  # fmt: skip
EVENTS_LIMIT = param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size")
EVENTS_KINDS = param("kinds", "query", text(), f"comma-separated, of {', '.join(EVENT_KINDS)}: only these kinds")
LAST_EVENT_ID = param("Last-Event-ID", "header", text(), "streams: resume after this event (wins over `after`)")

_PATHS_V1 = {
    "/v1/sent": {
        "post": v1({
            "tags": ["query"],
            "summary": "Register send results",
            "description": "The Huawei send API's response as received, or wrapped with the send's context. "
                           "The sends belong to the application named by `application`, else to the API key's "
                           "application when the key is scoped to one, else to none. "
                           "Registering the same message again changes nothing. The answer lists the messages "
                           "of the body (registered now or before) whose recipient was blacklisted, for the "
                           "send's channel, at the send's createTime.",
            "requestBody": body(ref("SentBody")),
            "responses": {
                "200": ok("registered", ref("SentResult")),
                "400": error("`invalid_json`, `invalid_body`, `invalid_field`, `missing_field`, `field_too_long`, "
                             "`invalid_character`; `detail.item` is the index in `result`; "
                             "`unknown_application`: no application has the name given"),
                "403": error("`application_not_allowed`: the API key is scoped to another application"),
                "413": error("`body_too_large`: over 1 MiB"),
            },
        })
    },
    "/v1/messages": {
        "get": v1({
            "tags": ["query"],
            "summary": "Registered messages, oldest send first, in pages",
            "parameters": [
                param("to", "query", text(), "only messages to this number (any common form)"),
                param("state", "query", {"type": "string", "enum": STATES},
                      "only messages in this state (as the clock says now: `unreported` once the report window "
                      "has passed)"),
                param("blacklisted_at_send", "query", {"type": "string", "enum": ["true", "false"]},
                      "only messages sent to a number blacklisted for them at the time (`true`), or only the "
                      "others (`false`)"),
                param("since", "query", text(), "sent at or after (`yyyy-MM-ddTHH:mm:ssZ`, offsets accepted)"),
                param("until", "query", text(), "sent before (same format)"),
                CURSOR,
                LIMIT,
            ],
            "responses": {
                "200": ok("a page; pass `cursor` back for the next one", ref("MessagePage")),
                "400": error(f"{_INVALID}, `invalid_cursor`"),
            },
        })
    },
    "/v1/messages/{sms_msg_id}": {
        "get": v1({
            "tags": ["query"],
            "summary": "One message: its state, reports and replies",
            "parameters": [
                param("sms_msg_id", "path", text(min_length=1), "the send API's `smsMsgId`",
                      example="eb4e63dd-0945-4231-a48d-6b54c1a8b614_3434030")
            ],
            "responses": {
                "200": ok("the message", ref("Message")),
                "404": error("`not_found`: no send and no report has this smsMsgId"),
            },
        })
    },
    "/v1/uplinks": {
        "get": v1({
            "tags": ["query"],
            "summary": "Replies in a stable order, in pages; pass `cursor` back to tail new ones, none skipped",
            "parameters": [CURSOR, LIMIT],
            "responses": {
                "200": ok("a page", ref("UplinkPage")),
                "400": error(f"{_INVALID}, `invalid_cursor`"),
            },
        })
    },
    "/v1/events": {
        "get": v1({
            "tags": ["query"],
            "summary": "The event feed: reports, state changes, replies, opt-outs and opt-ins, sends after an "
                       "opt-out, in a stable "
                       "order, none skipped; with `Accept: text/event-stream` the same as Server-Sent Events",
            "parameters": [EVENTS_AFTER, EVENTS_LIMIT, EVENTS_KINDS, LAST_EVENT_ID],
            "responses": {
                "200": {
                    "description": "a page (JSON), or a stream (`id:` the event's cursor, `event:` its kind, "
                                   "`data:` the event as JSON; `: keep-alive` comments when idle)",
                    "content": {JSON: {"schema": ref("EventPage")}, "text/event-stream": {"schema": text()}},
                },
                "400": error(f"{_INVALID}, `invalid_cursor`"),
            },
        })
    },
    "/v1/events/stream": {
        "get": v1({
            "tags": ["query"],
            "summary": "The event feed as Server-Sent Events, whatever the `Accept` header; resumes after "
                       "`Last-Event-ID`",
            "parameters": [EVENTS_AFTER, EVENTS_KINDS, LAST_EVENT_ID],
            "responses": {
                "200": ok("the stream", text(), "text/event-stream"),
                "400": error(f"{_INVALID}, `invalid_cursor`"),
            },
        })
    },
    "/v1/blacklist/check": {
        "post": v1({
            "tags": ["blacklist"],
            "summary": "Which of these numbers may not be sent to",
            "description": "Answered from the worker's copy of the blacklist, which holds a change a few "
                           "milliseconds after its commit (the worker that served a PUT or DELETE: before "
                           "answering it), or by PostgreSQL whenever the copy could be behind.",
            "requestBody": body(ref("BlacklistCheck")),
            "responses": {
                "200": ok("the blacklisted ones, in E.164, in the order given", ref("BlacklistCheckResult")),
                "400": error("`invalid_json`, `invalid_body`, `invalid_field`, `too_many_numbers`, "
                             "`invalid_numbers` (`detail.invalid` lists `index` and `number`)"),
                "413": error("`body_too_large`: over 256 KiB"),
            },
        })
    },
    "/v1/blacklist/{number}": {
        "get": v1({
            "tags": ["blacklist"],
            "summary": "Whether a number is blacklisted",
            "parameters": [NUMBER, CHANNEL],
            "responses": {
                "200": ok("blacklisted: the oldest entry, and all of them", ref("BlacklistEntries")),
                "400": error(f"`invalid_number`, {_INVALID}"),
                "404": error("`not_blacklisted`: the number may be sent to"),
            },
        }),
        "put": v1({
            "tags": ["blacklist"],
            "summary": "Blacklist a number by hand",
            "parameters": [NUMBER],
            "requestBody": body(ref("BlacklistChange")),
            "responses": {
                "200": ok("it already was; its entries", ref("BlacklistEntries")),
                "201": ok("added; its entries", ref("BlacklistEntries")),
                "400": error(f"`invalid_number`, `invalid_json`, `invalid_body`, `missing_field`, {_INVALID}"),
                "413": error("`body_too_large`: over 256 KiB"),
            },
        }),
        "delete": v1({
            "tags": ["blacklist"],
            "summary": "Lift a number's entry (the reason may come as `?reason=` instead of a body)",
            "parameters": [
                NUMBER,
                param("reason", "query", text(500), "why, when there is no body"),
                param("channel", "query", text(21), "the entry's channel, when there is no body"),
            ],
            "requestBody": body(ref("BlacklistLift"), required=False),
            "responses": {
                "200": ok("lifted", ref("BlacklistRemoval")),
                "400": error(f"`invalid_number`, `invalid_json`, `invalid_body`, `missing_field`, {_INVALID}"),
                "404": error("`not_blacklisted`: there was no such entry"),
                "413": error("`body_too_large`: over 256 KiB"),
            },
        }),
    },
}

# --- operations ----------------------------------------------------------------------------------

_PATHS_OPS = {
    "/healthz": {
        "get": {
            "tags": ["operations"],
            "summary": "Liveness: the process answers",
            "responses": {"200": ok("alive", ref("Health"))},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["operations"],
            "summary": "Readiness: PostgreSQL reachable, migrations applied, journal writable and below 90 %",
            "responses": {"200": ok("ready", ref("Readiness")), "503": ok("not ready: the body says why", ref("Readiness"))},
        }
    },
    "/metrics": {
        "get": {
            "tags": ["operations"],
            "summary": "Prometheus metrics of every worker",
            "responses": {"200": ok("the Prometheus text exposition format", text(), "text/plain")},
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["operations"],
            "summary": "This document",
            "responses": {"200": ok("OpenAPI 3.1", {"type": "object"})},
        }
    },
}

PATHS: dict[str, dict[str, Any]] = {**_PATHS_CALLBACKS, **_PATHS_V1, **_PATHS_OPS}

# --- schemas -------------------------------------------------------------------------------------

_FORM_EXTRA: Schema = text(2048)  # unknown fields: kept in `extra`
_NAMES = {"maxLength": 64}
_SMALL_INT = text(2, pattern="^(0?[1-9]|[1-9][0-9])?$")  # empty: absent
_HUAWEI_TIME = "yyyy-MM-dd'T'HH:mm:ss'Z' (UTC; fractions and offsets accepted)"

# Known fields of a status report and their limits (Huawei reference §1.3), as the form sends them.
_REPORT_FIELDS: dict[str, Schema] = {
    "smsMsgId": text(50, min_length=1, description="the send API's smsMsgId"),
    "status": text(7, min_length=1, description="status code, stored as sent (e.g. DELIVRD)"),
    "total": {**_SMALL_INT, "description": "parts of a long message"},
    "sequence": {**_SMALL_INT, "description": "this part, at most total"},
    "statusDesc": text(500),
    "source": text(8, description="1 SMS platform, 2 SMS center, 3 Huawei platform"),
    "updateTime": text(32, description=_HUAWEI_TIME),
    "extend": text(128),
    "to": text(21, description="the recipient; only with extend"),
    "orgCode": text(64),
}


def _batch_field(schema: Schema) -> Schema:
    """In a JSON batch a known field may also come as a number, or null for absent."""
    return {"anyOf": [schema, {"type": "integer"}, {"type": "null"}]}


SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable reason"},
            "detail": {"description": "where it went wrong (never a phone number, text or token)"},
        },
    },
    "StatusReportForm": {
        "type": "object",
        "required": ["smsMsgId", "status"],
        "properties": _REPORT_FIELDS,
        "additionalProperties": _FORM_EXTRA,
        "propertyNames": _NAMES,
        "maxProperties": 64,
    },
    "StatusReportBatch": {
        "type": "object",
        "required": ["statusReportList"],
        "properties": {
            "statusReportList": {"type": "array", "minItems": 1, "maxItems": 50, "items": ref("StatusReportItem")}
        },
    },
    "StatusReportItem": {
        "type": "object",
        "required": ["smsMsgId", "status"],
        "properties": {
            name: _batch_field(schema) if name not in ("smsMsgId", "status") else {
                "anyOf": [schema, {"type": "integer"}]}
            for name, schema in _REPORT_FIELDS.items()
        },
        "propertyNames": _NAMES,
        "maxProperties": 64,
    },
    "UplinkForm": {
        "type": "object",
        "required": ["smsMsgId", "from", "to", "body"],
        "properties": {
            "smsMsgId": text(50, min_length=1, description="the uplink's own id"),
            "from": text(21, min_length=1, description="who replied (`%2B86...`)"),
            "to": text(21, min_length=1, description="the channel number replied to"),
            "body": text(160, min_length=1, description="the reply's text"),
            "createTime": text(32, description=_HUAWEI_TIME),
        },
        "additionalProperties": _FORM_EXTRA,
        "propertyNames": _NAMES,
        "maxProperties": 64,
    },
    "SendResponse": {
        "type": "object",
        "description": "the Huawei send API's response (reference §4.3), as received",
        "properties": {
            "code": {"description": "kept as sent"},
            "description": {"description": "kept as sent"},
            "result": {"type": "array", "maxItems": 1000, "items": ref("SendResultItem")},
        },
    },
    "SendResultItem": {
        "type": "object",
        "required": ["smsMsgId", "originTo", "status"],
        "properties": {
            "smsMsgId": {"type": ["string", "integer"], "minLength": 1, "maxLength": 50},
            "originTo": {"type": ["string", "integer"], "minLength": 1, "maxLength": 21},
            "status": {"type": ["string", "integer"], "minLength": 1, "maxLength": 7},
            "from": {"type": ["string", "integer", "null"], "maxLength": 21},
            "createTime": {"type": ["string", "null"], "maxLength": 32, "description": _HUAWEI_TIME},
            "countryId": {"type": ["string", "integer", "null"], "maxLength": 3},
            "total": {"type": ["string", "integer", "null"], "description": "parts, a positive integer"},
        },
    },
    "SentBody": {
        "anyOf": [
            {"allOf": [ref("SendResponse")], "properties": {"application": APPLICATION_FIELD}},
            {
                "type": "object",
                "required": ["response"],
                "description": "the send API's response with the send's context",
                "properties": {
                    "response": ref("SendResponse"),
                    "extend": {"type": ["string", "integer", "null"], "maxLength": 128},
                    "template_id": {"type": ["string", "integer", "null"], "maxLength": 128},
                    "signature": {"type": ["string", "integer", "null"], "maxLength": 128},
                    "message_type": {"enum": ["verification", "notification", "promotional", None, ""]},
                    "application": APPLICATION_FIELD,
                },
            },
        ]
    },
    "SentResult": {
        "type": "object",
        "required": ["registered", "already_registered", "blacklisted"],
        "properties": {
            "registered": {"type": "integer"},
            "already_registered": {"type": "integer"},
            "blacklisted": {
                "type": "array",
                "description": "the body's messages whose recipient was blacklisted for them when sent",
                "items": {
                    "type": "object",
                    "required": ["sms_msg_id", "to", "blacklisted_at_send"],
                    "properties": {
                        "sms_msg_id": {"type": "string"},
                        "to": {"type": "string", "description": "E.164"},
                        "blacklisted_at_send": ref("BlacklistEntry"),
                    },
                },
            },
        },
    },
    "Parts": {
        "type": "object",
        "required": ["total", "delivered"],
        "properties": {"total": {"type": "integer"}, "delivered": {"type": "integer"}},
    },
    "State": {
        "type": "string",
        "enum": STATES,
        "description": "`unreported`: a registered send with no delivered or failed state once its report window "
                       "(RECEIVER_REPORT_WINDOW, 72 h after its createTime) has passed; a later report still moves it",
    },
    "Report": {
        "type": "object",
        "required": ["status", "sequence", "total", "source", "status_desc", "update_time", "extend", "to",
                     "org_code", "extra", "via", "received_at"],
        "properties": {
            "status": {"type": "string"},
            "sequence": {"type": ["integer", "null"]},
            "total": {"type": ["integer", "null"]},
            "source": {"type": ["string", "null"]},
            "status_desc": {"type": ["string", "null"]},
            "update_time": nullable(TIME),
            "extend": {"type": ["string", "null"]},
            "to": {"type": ["string", "null"]},
            "org_code": {"type": ["string", "null"]},
            "extra": {"type": "object", "description": "fields the reference does not name"},
            "via": {"type": "string", "enum": ["form", "batch"]},
            "received_at": TIME,
        },
    },
    "Reply": {
        "type": "object",
        "required": ["sms_msg_id", "from", "to", "body", "create_time", "received_at", "ambiguous", "match",
                     "candidates", "unlinked_reason"],
        "properties": {
            "sms_msg_id": {"type": "string", "description": "the uplink's own id"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "body": {"type": "string"},
            "create_time": nullable(TIME),
            "received_at": TIME,
            "ambiguous": {"type": "boolean", "description": "the reply could answer more than one message"},
            "match": {
                "enum": ["channel", "reply_number", "application", "number", None],
                "description": "the rule that linked it, strongest first: `channel` (sent from the number replied "
                               "to), `reply_number` (a reply number of the send's application is a prefix of it), "
                               "`application` (a send of the application whose uplink URL it came to, inside the "
                               "report window), `number` (a send of no application to the replying number, inside "
                               "the report window); null: not linked",
            },
            "candidates": {"type": "integer", "minimum": 0,
                           "description": "how many sends that rule had to choose from (the latest wins)"},
            "unlinked_reason": {
                "enum": ["invalid_number", "no_send", "outside_window", "other_application", None],
                "description": "why no rule linked it: the replying number is no phone number; no registered send "
                               "to it at or before the reply; only sends older than the report window; only sends "
                               "of other applications. null when linked",
            },
        },
    },
    "Message": {
        "type": "object",
        "required": ["sms_msg_id", "to", "from", "state", "status", "parts", "registered", "sent_status", "sent_at",
                     "delivered_at", "latency_seconds", "extend", "template_id", "signature", "message_type",
                     "application", "reports", "replies", "blacklisted_at_send"],
        "properties": {
            "sms_msg_id": {"type": "string"},
            "to": {"type": ["string", "null"]},
            "from": {"type": ["string", "null"]},
            "state": ref("State"),
            "status": {"type": ["string", "null"], "description": "the latest raw report status"},
            "parts": ref("Parts"),
            "registered": {"type": "boolean", "description": "the send was registered with POST /v1/sent"},
            "sent_status": {"type": ["string", "null"]},
            "sent_at": nullable(TIME),
            "delivered_at": nullable(TIME),
            "latency_seconds": {"type": ["number", "null"]},
            "extend": {"type": ["string", "null"]},
            "template_id": {"type": ["string", "null"]},
            "signature": {"type": ["string", "null"]},
            "message_type": {"type": ["string", "null"]},
            "application": {"type": ["string", "null"],
                            "description": "the application the send was registered for; null: none"},
            "reports": {"type": "array", "items": ref("Report")},
            "replies": {"type": "array", "items": ref("Reply")},
            "blacklisted_at_send": {
                **nullable(ref("BlacklistEntry")),
                "description": "the blacklist entry that covered the recipient, for the send's channel, at its "
                               "createTime (`channel`: the entry's scope; `added_at`: when the number was "
                               "blacklisted); null when none did or the send is not registered",
            },
        },
    },
    "MessageSummary": {
        "type": "object",
        "required": ["sms_msg_id", "to", "from", "sent_at", "state", "status", "parts", "delivered_at",
                     "blacklisted_at_send"],
        "properties": {
            "sms_msg_id": {"type": "string"},
            "to": {"type": "string"},
            "from": {"type": ["string", "null"]},
            "sent_at": TIME,
            "state": ref("State"),
            "status": {"type": ["string", "null"]},
            "parts": ref("Parts"),
            "delivered_at": nullable(TIME),
            "blacklisted_at_send": {"type": "boolean", "description": "sent to a number blacklisted for it then"},
        },
    },
    "MessagePage": {
        "type": "object",
        "required": ["messages", "cursor"],
        "properties": {
            "messages": {"type": "array", "items": ref("MessageSummary")},
            "cursor": {"type": ["string", "null"], "description": "null: no page read anything yet"},
        },
    },
    "Uplink": {
        "allOf": [ref("Reply")],
        "type": "object",
        "required": ["application", "reply_to"],
        "properties": {
            "application": {"type": "string"},
            "reply_to": {"type": ["string", "null"], "description": "the smsMsgId of the message it answers"},
        },
    },
    "UplinkPage": {
        "type": "object",
        "required": ["uplinks", "cursor"],
        "properties": {"uplinks": {"type": "array", "items": ref("Uplink")}, "cursor": {"type": "string"}},
    },
    "Event": {
        "type": "object",
        "required": ["id", "kind", "at", "sms_msg_id", "number", "data"],
        "properties": {
            "id": {"type": "string", "description": "opaque; a cursor for `after` and `Last-Event-ID`"},
            "kind": {"type": "string", "enum": EVENT_KINDS},
            "at": TIME,
            "sms_msg_id": nullable(text()),
            "number": nullable(text(description="E.164")),
            "data": {
                "type": ["object", "null"],
                "description": "by kind: `report` the report (null once pruned); `state` `state`, `previous`, "
                               "`status`, `parts`, `registered`, `sent_at`, `delivered_at`, `latency_seconds`; "
                               "`reply` `from`, `to`, `body`, `create_time`, `received_at`, `application`, "
                               "`reply_to`, `ambiguous`, `match`, `candidates` (when announced), `unlinked_reason`; "
                               "`optout`/`optin` `channel`, `source`, `actor`, `reason`; "
                               "`sent_after_optout` (a registered send found to have gone to a number blacklisted "
                               "for it, or that finding changed) `from`, `sent_at`, `blacklisted_at_send` (the "
                               "entry, or null when no longer so)",
            },
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "next"],
        "properties": {"events": {"type": "array", "items": ref("Event")}, "next": {"type": "string"}},
    },
    "BlacklistCheck": {
        "type": "object",
        "required": ["numbers"],
        "properties": {
            "numbers": {"type": "array", "maxItems": 500, "items": {"type": ["string", "integer"]}},
            "channel": {"type": ["string", "null"], "maxLength": 21},
        },
    },
    "BlacklistCheckResult": {
        "type": "object",
        "required": ["blacklisted"],
        "properties": {"blacklisted": {"type": "array", "items": {"type": "string"}}},
    },
    "BlacklistChange": {
        "type": "object",
        "required": ["reason"],
        "properties": {
            "reason": text(500, min_length=1, description="why, for the history"),
            "channel": {"type": ["string", "null"], "maxLength": 21, "description": "null: every channel"},
        },
    },
    "BlacklistLift": {
        "type": "object",
        "properties": {
            "reason": text(500, min_length=1, description="why, for the history (else `?reason=`)"),
            "channel": {"type": ["string", "null"], "maxLength": 21, "description": "null: every channel"},
        },
    },
    "BlacklistEntry": {
        "type": "object",
        "required": ["number", "channel", "source", "reason", "sms_msg_id", "added_by", "added_at"],
        "properties": {
            "number": {"type": "string", "description": "E.164"},
            "channel": {"type": ["string", "null"], "description": "null: every channel"},
            "source": {"type": "string", "enum": ["keyword", "platform", "manual"]},
            "reason": {"type": "string"},
            "sms_msg_id": {"type": ["string", "null"]},
            "added_by": {"type": ["string", "null"]},
            "added_at": TIME,
        },
    },
    "BlacklistEntries": {
        "allOf": [ref("BlacklistEntry")],
        "type": "object",
        "required": ["entries"],
        "properties": {"entries": {"type": "array", "minItems": 1, "items": ref("BlacklistEntry")}},
    },
    "BlacklistRemoval": {
        "type": "object",
        "required": ["number", "removed", "blacklisted"],
        "properties": {
            "number": {"type": "string"},
            "removed": {"type": "array", "items": ref("BlacklistEntry")},
            "blacklisted": {"type": "boolean", "description": "other entries still hold it"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object",
        "required": ["ready", "database", "journal", "writer"],
        "properties": {
            "ready": {"type": "boolean"},
            "database": {
                "type": "object",
                "required": ["reachable"],
                "properties": {
                    "reachable": {"type": "boolean"},
                    "pending_migrations": {"type": "array", "items": {"type": "string"}},
                    "error": {"type": "string"},
                },
            },
            "journal": {
                "type": "object",
                "required": ["writable", "backlog_bytes", "max_bytes", "fill", "filling"],
                "properties": {
                    "writable": {"type": "boolean"},
                    "backlog_bytes": {"type": "integer", "description": "this worker's records not yet stored"},
                    "max_bytes": {"type": "integer"},
                    "fill": {"type": "number"},
                    "filling": {"type": "boolean"},
                    "error": {"type": "string"},
                },
            },
            "writer": {
                "type": "object",
                "required": ["running", "error"],
                "properties": {
                    "running": {"type": "boolean", "description": "the writer reported within the last 5 s"},
                    "error": {"type": ["string", "null"], "description": "its last database error"},
                },
            },
        },
    },
}

SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from `receiver apikey create NAME`",
    },
    "pushSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "the platform's signed push, `SDK-HMAC-SHA256 Access=..., SignedHeaders=..., "
        "Signature=...` with `X-Sdk-Date`; checked only for applications created with `--push-key`",
    },
}


@functools.cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "receiver",
            "version": __version__,
            "description": "Durable receiver for Huawei Cloud Message & SMS callbacks, and the query API "
            "for downstream services. Every refusal is a 4xx (or 503) with `{\"error\": ..., \"detail\": ...}`; "
            "every answer carries `X-Request-Id`.",
        },
        "tags": [
            {"name": "callbacks", "description": "the platform's side: status reports and uplink SMS"},
            {"name": "query", "description": "downstream services: sends, messages, replies"},
            {"name": "blacklist", "description": "downstream services: opt-outs"},
            {"name": "operations", "description": "health, metrics, this document"},
        ],
        "paths": copy.deepcopy(PATHS),
        "components": {"schemas": copy.deepcopy(SCHEMAS), "securitySchemes": SECURITY_SCHEMES},
    }


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(document())


routes = [Route("/openapi.json", openapi_endpoint, methods=["GET"])]
