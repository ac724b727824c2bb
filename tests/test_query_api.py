"""The /v1 query API: registering sends, reading messages and replies, as downstream services do."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from typing import Any

import asyncpg
import pytest
from support import Harness, run

from receiver.correlation.queries import encode_cursor

SEND_RESPONSE: dict[str, Any] = {
    "code": "000000",
    "description": "Success",
    "result": [
        {"createTime": "2024-11-22T02:16:46Z", "from": "csms100000001", "originTo": "+8613712343774",
         "smsMsgId": "eb4e63dd-0945-4231-a48d-6b54c1a8b614_3434030", "status": "000000", "countryId": "CN",
         "total": 1},
        {"createTime": "2024-11-22T02:16:46Z", "from": "csms100000001", "originTo": "+8613712343776",
         "smsMsgId": "eb4e63dd-0945-4231-a48d-6b54c1a8b614_3434031", "status": "000000", "countryId": "CN",
         "total": 2},
        {"createTime": "2024-11-22T02:16:46Z", "from": "csms100000001", "originTo": "+8613712343777",
         "smsMsgId": "eb4e63dd-0945-4231-a48d-6b54c1a8b614_3434032", "status": "E200041", "countryId": "CN",
         "total": 1},
    ],
}  # fmt: skip
ID1, ID2, ID3 = (item["smsMsgId"] for item in SEND_RESPONSE["result"])


def report(harness: Harness, sms_msg_id: str, status: str = "DELIVRD", sequence: int = 1, total: int = 1,
           when: str = "2024-11-22T02%3A16%3A50Z") -> None:  # fmt: skip
    body = f"smsMsgId={sms_msg_id}&status={status}&sequence={sequence}&total={total}&updateTime={when}&source=2"
    assert harness.post("status-report", body).status_code == 200


def uplink(harness: Harness, sms_msg_id: str, sender: str, body: str = "ok", created: str | None = None) -> None:
    form = f"smsMsgId={sms_msg_id}&from=%2B{sender.lstrip('+')}&to=csms100000001&body={body}"
    if created:
        form += f"&createTime={created}"
    assert harness.post("uplink", form).status_code == 200


def test_v1_needs_a_valid_api_key(harness: Harness) -> None:
    for path in ("/v1/messages/x", "/v1/messages", "/v1/uplinks"):
        assert harness.client.get(path).status_code == 401
        assert harness.client.get(path, headers={"Authorization": "Bearer rcv_wrong"}).status_code == 401
    response = harness.client.post("/v1/sent", json=SEND_RESPONSE)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_register_sends_once_and_refused_recipients_fail(harness: Harness) -> None:
    first = harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    assert first.json() == {"registered": 3, "already_registered": 0, "blacklisted": []}
    again = harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    assert again.json() == {"registered": 0, "already_registered": 3, "blacklisted": []}
    assert harness.rows("SELECT count(*) FROM sent_messages") == [(3,)]
    refused = harness.api("GET", f"/v1/messages/{ID3}").json()
    assert (refused["state"], refused["status"], refused["to"]) == ("failed", "E200041", "+8613712343777")
    silent = harness.api("GET", f"/v1/messages/{ID1}").json()  # sent in 2024: its report window is long over
    assert (silent["state"], silent["parts"], silent["reports"]) == ("unreported", {"total": 1, "delivered": 0}, [])


def test_wrapped_send_keeps_its_context(harness: Harness) -> None:
    body = {"response": SEND_RESPONSE, "extend": "order-7", "template_id": "tpl-1", "signature": "Shop",
            "message_type": "promotional"}  # fmt: skip
    assert harness.api("POST", "/v1/sent", json=body).status_code == 200
    message = harness.api("GET", f"/v1/messages/{ID1}").json()
    assert (message["extend"], message["template_id"], message["signature"], message["message_type"]) == (
        "order-7", "tpl-1", "Shop", "promotional")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "invalid_body"),
        ({"result": [{"smsMsgId": "x", "status": "000000"}]}, "missing_field"),
        ({"response": SEND_RESPONSE, "message_type": "spam"}, "invalid_field"),
        ({"result": "nope"}, "invalid_field"),
        ({"result": [{"smsMsgId": "x" * 51, "originTo": "+8613100000000", "status": "000000"}]}, "field_too_long"),
    ],
)
def test_bad_send_registrations_get_400(harness: Harness, body: object, error: str) -> None:
    response = harness.api("POST", "/v1/sent", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_message_state_report_details_and_latency(harness: Harness) -> None:
    harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    report(harness, ID2, "DELIVRD", 1, 2, "2024-11-22T02%3A16%3A50Z")
    half = harness.api("GET", f"/v1/messages/{ID2}").json()
    assert (half["state"], half["parts"]) == ("unreported", {"total": 2, "delivered": 1})  # sent in 2024
    report(harness, ID2, "DELIVRD", 2, 2, "2024-11-22T02%3A17%3A06Z")
    message = harness.api("GET", f"/v1/messages/{ID2}").json()
    assert message["state"] == "delivered"
    assert message["status"] == "DELIVRD"
    assert message["parts"] == {"total": 2, "delivered": 2}
    assert message["latency_seconds"] == 20.0
    assert message["delivered_at"] == "2024-11-22T02:17:06+00:00"
    assert [(r["sequence"], r["status"], r["source"]) for r in message["reports"]] == [(1, "DELIVRD", "2"),
                                                                                       (2, "DELIVRD", "2")]
    assert set(message) >= {"sms_msg_id", "to", "from", "state", "status", "parts", "reports", "replies"}


def test_a_report_before_its_send_counts_once_the_send_is_registered(harness: Harness) -> None:
    report(harness, ID1, "UNDELIV")
    early = harness.api("GET", f"/v1/messages/{ID1}").json()
    assert (early["state"], early["registered"], early["to"]) == ("failed", False, None)
    harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    late = harness.api("GET", f"/v1/messages/{ID1}").json()
    assert (late["state"], late["registered"], late["to"], late["from"]) == (
        "failed", True, "+8613712343774", "csms100000001")  # fmt: skip


def test_unknown_message_is_404(harness: Harness) -> None:
    response = harness.api("GET", "/v1/messages/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_reply_links_to_the_latest_earlier_message_and_says_when_ambiguous(harness: Harness) -> None:
    first = {"result": [{"createTime": "2024-11-22T02:00:00Z", "from": "csms100000001", "originTo": "+8613100000001",
                         "smsMsgId": "older", "status": "000000"}]}  # fmt: skip
    second = {"result": [{"createTime": "2024-11-22T03:00:00Z", "from": "csms100000001",
                          "originTo": "8613100000001", "smsMsgId": "newer", "status": "000000"}]}  # fmt: skip
    harness.api("POST", "/v1/sent", json=first)
    uplink(harness, "reply-1", "+8613100000001", "ok", "2024-11-22T02%3A30%3A00Z")
    harness.api("POST", "/v1/sent", json=second)
    uplink(harness, "reply-2", "+8613100000001", "T", "2024-11-22T03%3A30%3A00Z")
    older = harness.api("GET", "/v1/messages/older").json()
    newer = harness.api("GET", "/v1/messages/newer").json()
    assert [(r["sms_msg_id"], r["ambiguous"]) for r in older["replies"]] == [("reply-1", False)]
    assert [(r["sms_msg_id"], r["ambiguous"], r["body"]) for r in newer["replies"]] == [("reply-2", True, "T")]


def test_a_reply_before_its_send_is_registered_is_linked_afterwards(harness: Harness) -> None:
    uplink(harness, "early-reply", "+8613712343774", "thanks", "2024-11-22T02%3A20%3A00Z")
    assert harness.rows("SELECT sms_msg_id, candidates FROM reply_links") == [(None, 0)]
    harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    message = harness.api("GET", f"/v1/messages/{ID1}").json()
    assert [r["sms_msg_id"] for r in message["replies"]] == ["early-reply"]


def test_list_messages_filters_and_pages(harness: Harness) -> None:
    harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    report(harness, ID1, "DELIVRD")
    failed = harness.api("GET", "/v1/messages", params={"state": "failed"}).json()
    assert [m["sms_msg_id"] for m in failed["messages"]] == [ID3]
    by_number = harness.api("GET", "/v1/messages", params={"to": "8613712343774"}).json()
    assert [(m["sms_msg_id"], m["state"]) for m in by_number["messages"]] == [(ID1, "delivered")]
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = harness.api("GET", "/v1/messages", params=params).json()
        if not page["messages"]:
            break
        seen += [m["sms_msg_id"] for m in page["messages"]]
        cursor = page["cursor"]
    assert seen == [ID1, ID2, ID3]
    late = harness.api("GET", "/v1/messages", params={"since": "2024-11-23T00:00:00Z"}).json()
    assert late["messages"] == []


LIMIT_500 = {"field": "limit", "allowed": "1-500"}


@pytest.mark.parametrize(
    ("path", "params", "error", "detail"),
    [
        ("/v1/messages", {"state": "lost"}, "invalid_field",
         {"field": "state", "allowed": ["delivered", "failed", "pending", "unreported"]}),
        ("/v1/messages", {"state": ""}, "invalid_field",
         {"field": "state", "allowed": ["delivered", "failed", "pending", "unreported"]}),
        ("/v1/messages", {"blacklisted_at_send": "yes"}, "invalid_field",
         {"field": "blacklisted_at_send", "allowed": ["false", "true"]}),
        ("/v1/messages", {"limit": "0"}, "invalid_field", LIMIT_500),
        ("/v1/messages", {"limit": "501"}, "invalid_field", LIMIT_500),
        ("/v1/messages", {"limit": "+5"}, "invalid_field", LIMIT_500),
        ("/v1/messages", {"limit": " 5"}, "invalid_field", LIMIT_500),
        ("/v1/messages", {"limit": "1_0"}, "invalid_field", LIMIT_500),
        ("/v1/messages", {"limit": "²"}, "invalid_field", LIMIT_500),
        ("/v1/messages", {"cursor": "%%%"}, "invalid_cursor", "the cursor was not made by this API"),
        ("/v1/messages", {"since": "soon"}, "invalid_field",
         {"field": "since", "reason": "expected yyyy-MM-ddTHH:mm:ssZ"}),
        ("/v1/messages", {"until": "2024-02-30T00:00:00Z"}, "invalid_field",
         {"field": "until", "reason": "not a valid time"}),
        ("/v1/messages", {"to": "x"}, "invalid_field", {"field": "to", "reason": "not a phone number"}),
        ("/v1/uplinks", {"limit": "501"}, "invalid_field", LIMIT_500),
        ("/v1/events", {"limit": "1001"}, "invalid_field", {"field": "limit", "allowed": "1-1000"}),
        ("/v1/events", {"kinds": "report,nope"}, "invalid_field",
         {"field": "kinds", "allowed": ["report", "state", "reply", "optout", "optin", "sent_after_optout"]}),
    ],
)  # fmt: skip
def test_query_parameters_are_refused_with_a_reason(
    harness: Harness, path: str, params: dict[str, str], error: str, detail: object
) -> None:
    response = harness.api("GET", path, params=params)
    assert (response.status_code, response.json()) == (400, {"error": error, "detail": detail})


def test_empty_filters_are_no_filters(harness: Harness) -> None:
    assert harness.api("POST", "/v1/sent", json=SEND_RESPONSE).status_code == 200
    page = harness.api("GET", "/v1/messages", params={"to": "", "cursor": ""}).json()
    assert [m["sms_msg_id"] for m in page["messages"]] == [ID1, ID2, ID3]


def test_a_message_answers_the_same_fields_in_the_same_order_and_formats(harness: Harness) -> None:
    """What clients parse: compact JSON, fields in this order, times with their offset (blacklist
    entries: UTC with Z)."""
    assert harness.api("PUT", "/v1/blacklist/+8613712343774", json={"reason": "asked"}).status_code == 201
    sent = {"result": [{**SEND_RESPONSE["result"][0], "createTime": "2099-01-01T00:00:00Z"}]}
    assert harness.api("POST", "/v1/sent", json=sent).status_code == 200
    report(harness, ID1, when="2099-01-01T00%3A00%3A04Z")
    uplink(harness, "reply-1", "+8613712343774", "thanks", "2099-01-01T00%3A01%3A00Z")
    response = harness.api("GET", f"/v1/messages/{ID1}")
    assert response.headers["content-type"] == "application/json"
    message = response.json()
    assert list(message) == [
        "sms_msg_id", "to", "from", "state", "status", "parts", "registered", "sent_status", "sent_at",
        "delivered_at", "latency_seconds", "extend", "template_id", "signature", "message_type", "application",
        "reports", "replies", "blacklisted_at_send",
    ]  # fmt: skip
    assert response.content.startswith(b'{"sms_msg_id":"' + ID1.encode() + b'","to":"+8613712343774",')
    assert (message["sent_at"], message["delivered_at"], message["latency_seconds"]) == (
        "2099-01-01T00:00:00+00:00", "2099-01-01T00:00:04+00:00", 4.0)  # fmt: skip
    [stored] = message["reports"]
    assert list(stored) == ["status", "sequence", "total", "source", "status_desc", "update_time", "extend", "to",
                            "org_code", "extra", "via", "received_at"]  # fmt: skip
    assert stored["update_time"] == "2099-01-01T00:00:04+00:00" and stored["received_at"].endswith("+00:00")
    [reply] = message["replies"]
    assert list(reply) == ["sms_msg_id", "from", "to", "body", "create_time", "received_at", "ambiguous", "match",
                           "candidates", "unlinked_reason"]  # fmt: skip
    assert (reply["from"], reply["create_time"]) == ("+8613712343774", "2099-01-01T00:01:00+00:00")
    entry = message["blacklisted_at_send"]
    assert list(entry) == ["number", "channel", "source", "reason", "sms_msg_id", "added_by", "added_at"]
    assert (entry["number"], entry["source"], entry["reason"]) == ("+8613712343774", "manual", "asked")
    assert entry["added_at"].endswith("Z") and "+00:00" not in entry["added_at"]


def test_uplinks_feed_can_be_tailed_without_gaps(harness: Harness) -> None:
    uplink(harness, "u1", "+8613100000001")
    uplink(harness, "u2", "+8613100000002")
    page = harness.api("GET", "/v1/uplinks").json()
    assert [u["sms_msg_id"] for u in page["uplinks"]] == ["u1", "u2"]
    assert page["uplinks"][0]["from"] == "+8613100000001"
    empty = harness.api("GET", "/v1/uplinks", params={"cursor": page["cursor"]}).json()
    assert empty["uplinks"] == []
    uplink(harness, "u3", "+8613100000003")
    tail = harness.api("GET", "/v1/uplinks", params={"cursor": empty["cursor"]}).json()
    assert [u["sms_msg_id"] for u in tail["uplinks"]] == ["u3"]
    assert harness.api("GET", "/v1/uplinks", params={"cursor": "bad"}).status_code == 400
    hostile = [base64.urlsafe_b64encode(b"[" * 5000).decode(), encode_cursor("٣٣", 1),
               encode_cursor("99999999999999999999", 1), encode_cursor("010", 1)]  # fmt: skip
    for cursor in hostile:
        refused = harness.api("GET", "/v1/uplinks", params={"cursor": cursor})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_cursor"), cursor


def test_a_blacklist_code_before_its_send_blacklists_the_number_once_registered(harness: Harness) -> None:
    report(harness, ID1, "SC:0016")
    assert harness.api("GET", "/v1/blacklist/+8613712343774").status_code == 404
    harness.api("POST", "/v1/sent", json=SEND_RESPONSE)
    entry = harness.api("GET", "/v1/blacklist/8613712343774")
    assert entry.status_code == 200
    assert entry.json()["number"] == "+8613712343774"


def test_a_reply_pruned_while_its_send_is_registered_costs_no_error(harness: Harness) -> None:
    """`receiver prune` may delete an old reply, and commit, between the moment a registration
    reads it and the moment it links it: the registration is done again, not answered with a
    500. A trigger holds the link back for a second while another connection deletes the reply."""
    uplink(harness, "doomed-reply", "+8613712343774", "thanks", "2024-11-22T02%3A20%3A00Z")
    harness.rows(
        """CREATE FUNCTION hold_links() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.sms_msg_id IS NOT NULL THEN
                   PERFORM pg_sleep(1);
               END IF;
               RETURN NEW;
           END $$"""
    )
    harness.rows("CREATE TRIGGER hold_links BEFORE INSERT ON reply_links FOR EACH ROW EXECUTE FUNCTION hold_links()")
    answer: list[object] = []
    registering = threading.Thread(target=lambda: answer.append(harness.api("POST", "/v1/sent", json=SEND_RESPONSE)))
    registering.start()
    time.sleep(0.5)  # the registration is inside the trigger now
    harness.rows("DELETE FROM uplinks WHERE sms_msg_id = 'doomed-reply'")  # the prune, committed
    registering.join(30)
    [response] = answer
    assert response.status_code == 200 and response.json()["registered"] == 3  # type: ignore[attr-defined]
    assert harness.api("GET", f"/v1/messages/{ID1}").json()["replies"] == []


def test_a_query_cut_by_postgres_terminating_its_backend_is_503_not_500(harness: Harness) -> None:
    """pg_terminate_backend, what a fast shutdown does to each session, lands mid-query (the
    look-up waits on a lock): the caller gets 503 database_unavailable, never a 500."""
    assert harness.api("GET", "/v1/messages/m-1").status_code == 404  # the pool has a connection now
    outcomes = []
    thread = threading.Thread(target=lambda: outcomes.append(harness.api("GET", "/v1/messages/m-1")))

    async def scenario() -> None:
        admin = await asyncpg.connect(harness.url)
        try:
            async with admin.transaction():
                await admin.execute("LOCK TABLE message_index IN ACCESS EXCLUSIVE MODE")  # read first
                thread.start()
                # Every backend that waits behind the lock is terminated until the look-up has
                # answered: the service's partition job (its first round runs at start-up) may
                # wait there too, and a look-up that reuses the job's connection shows the job's
                # last statement as its query while it waits.
                terminated = 0
                for _ in range(250):
                    waiting = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                                " AND datname = current_database()")  # fmt: skip
                    for row in waiting:
                        terminated += await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
                    if not thread.is_alive():
                        break
                    await asyncio.sleep(0.02)
                assert terminated, "the look-up never waited on the lock"
        finally:
            await admin.close()
        thread.join(10)

    run(scenario())
    (response,) = outcomes
    assert response.status_code == 503 and response.json()["error"] == "database_unavailable"
