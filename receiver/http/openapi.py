"""``GET /openapi.json``: the OpenAPI 3.1 document of every route the service serves (no key needed).

The bodies are the models of :mod:`receiver.api.models`, published as their JSON Schema; this
module adds what is not a body: one entry in ``PATHS`` per route template (its parameters, the
refusals it answers with, examples), built from the small helpers below (``v1`` adds the bearer
key and its ``401``/``503`` answers, ``query`` turns a model of query parameters into
parameters). The test suite checks that the document and the application's routes name the same
paths and methods, and fuzzes every operation against it (schemathesis).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import __version__
from ..api import models

Schema = dict[str, Any]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


REF = "#/components/schemas/{model}"


def ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def text(max_length: int | None = None, *, min_length: int | None = None, **more: Any) -> Schema:
    schema: Schema = {"type": "string", **more}
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


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


# --- the bodies: the models' JSON Schema -------------------------------------------------------

_REQUESTS: list[type[BaseModel]] = [
    models.StatusReportForm, models.StatusReportBatch, models.UplinkForm, models.SentResponse, models.SentWrapped,
    models.BlacklistCheck, models.BlacklistChange, models.BlacklistLift,
]  # fmt: skip
_ANSWERS: list[type[BaseModel]] = [
    models.Error, models.SentResult, models.Message, models.MessagePage, models.UplinkPage, models.EventPage,
    models.BlacklistCheckResult, models.BlacklistEntries, models.BlacklistRemoval, models.Health, models.Readiness,
]  # fmt: skip


def _tidy(schema: Any) -> Any:
    """Without what pydantic adds for Python's sake: titles (the names say it) and defaults of bodies."""
    if isinstance(schema, list):
        return [_tidy(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: _tidy(value) for key, value in schema.items()
            if not (key == "title" and isinstance(value, str)) and key != "default"}  # fmt: skip


def _schemas() -> dict[str, Schema]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in _REQUESTS), *((model, "serialization") for model in _ANSWERS),
    ]  # fmt: skip
    _, generated = models_json_schema(wanted, ref_template=REF)
    schemas: dict[str, Schema] = _tidy(generated["$defs"])
    schemas["StatusReportItem"] = models.batch_item_schema()
    schemas["SentBody"] = {"anyOf": [ref("SentResponse"), ref("SentWrapped")]}
    return dict(sorted(schemas.items()))


SCHEMAS: dict[str, Schema] = _schemas()


def _inline(schema: Schema) -> Schema:
    """A parameter's schema without ``null`` (an absent parameter says that) and without references."""
    variants = [v for v in schema.get("anyOf", [schema]) if v != {"type": "null"}]
    [plain] = variants
    if "$ref" in plain:
        plain = SCHEMAS[plain["$ref"].rsplit("/", 1)[1]]
    merged = {**plain, **schema}
    if merged.get("default", 0) is None:
        del merged["default"]
    return {k: v for k, v in merged.items() if k not in ("anyOf", "description", "title", "$ref")}


def query(model: type[models.Request]) -> list[dict[str, Any]]:
    """The query parameters a model of them validates, in its order."""
    properties = model.model_json_schema(ref_template=REF)["properties"]
    return [
        param(name, "query", _inline(schema), schema.get("description", "")) for name, schema in properties.items()
    ]


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
        "The platform's status report, form-encoded (docs/protocol.md, Status reports). Unknown fields are kept.",
        body(ref("StatusReportForm"), FORM, example=STATUS_REPORT_EXAMPLE),
        _FORM_ERRORS,
    ),
    "/callbacks/{token}/status-reports": callback(
        "A batch of 1 to 50 status reports",
        "The platform's batch status report (docs/protocol.md, Batch status reports). Good items are stored even when "
        "others are refused: then the answer is `400 invalid_items` with `detail.accepted` and "
        "`detail.rejected` (`index`, `error`, `detail` of each refused item).",
        body(ref("StatusReportBatch"), example={"statusReportList": [STATUS_REPORT_EXAMPLE]}),
        "`invalid_json`, `invalid_encoding`, `invalid_batch` (not `{\"statusReportList\": [1 to 50 items]}`), "
        "`invalid_items` (some items refused, the others stored)",
    ),
    "/callbacks/{token}/uplink": callback(
        "One uplink SMS (a reply)",
        "A recipient's reply, form-encoded (docs/protocol.md, Uplink SMS). Unknown fields are kept.",
        body(ref("UplinkForm"), FORM, example=UPLINK_EXAMPLE),
        _FORM_ERRORS,
    ),
}

# --- the downstream services' side: /v1 --------------------------------------------------------

NUMBER = param(
    "number", "path", text(min_length=1), "a phone number in any common form (`+86...`, `86...`, `%2B86...`)",
    example="+8613112345678",
)
_INVALID = "`invalid_field` (`detail.field` names it)"
EVENT_QUERY = query(models.EventQuery)
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
            "parameters": query(models.MessageQuery),
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
            "parameters": query(models.UplinkQuery),
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
            "parameters": [*EVENT_QUERY, LAST_EVENT_ID],
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
            "parameters": [*(p for p in EVENT_QUERY if p["name"] != "limit"), LAST_EVENT_ID],
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
            "parameters": [NUMBER, *query(models.ChannelQuery)],
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
            "parameters": [NUMBER, *query(models.LiftQuery)],
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
