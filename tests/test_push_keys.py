"""Signed pushes end to end: push keys in the database, the CLI, the callbacks' 401s, rotation,
the snapshot, and the read-only role. Requests are signed by Huawei's own signer."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx2 as httpx
import pytest
from huawei_signer import sdk_date, sign
from starlette.testclient import TestClient
from support import FORM, JSON, Harness, cli, fetch, run, service_env

from receiver import apikeys, applications
from receiver.config import Settings
from receiver.http.app import create_app

AK, SK = "exampleAk", "exampleSk*1231d881wd"
AK2, SK2 = "nextAk", "nextSk:with:colons"
REPORT = "smsMsgId=signed-1&status=DELIVRD&total=1&sequence=1&source=2&updateTime=2018-04-13T06%3A31%3A46Z"
BATCH = '{"statusReportList":[{"smsMsgId":"signed-b1","status":"DELIVRD"},{"smsMsgId":"signed-b2","status":"DELIVRD"}]}'
UPLINK = "from=%2B8615123456789&to=10691002019&body=hello&smsMsgId=signed-u1"


async def _create_signed_app(url: str, name: str, keys: list[tuple[str, str]]) -> tuple[str, str]:
    conn = await asyncpg.connect(url)
    try:
        _, token = await applications.create(conn, name, [])
        await applications.set_push_keys(conn, name, keys)
        return token, await apikeys.create(conn, f"tests-{name}")
    finally:
        await conn.close()


@pytest.fixture
def signed(db_url: str, tmp_path: Path) -> Iterator[Harness]:
    """The service in-process with an application that has two push keys (a rotation pair)."""
    token, key = run(_create_signed_app(db_url, "signed", [(AK, SK), (AK2, SK2)]))
    settings = Settings(database_url=db_url, data_dir=tmp_path, log_format="json")
    with TestClient(create_app(settings)) as client:
        yield Harness(client, token, db_url, key)


def push(
    h: Harness,
    endpoint: str,
    body: str,
    content_type: str = FORM,
    ak: str = AK,
    sk: str = SK,
    *,
    sent_body: str | None = None,
    drop: str | None = None,
    date_offset: float | None = None,
    **options: object,
) -> httpx.Response:
    """Sign like the platform, then send (``sent_body``: send another body than the one signed;
    ``date_offset``: sign with a clock that far off)."""
    path = f"/callbacks/{h.token}/{endpoint}"
    if date_offset is not None:
        options["date"] = sdk_date(time.time() + date_offset)
    headers = sign(ak, sk, host="testserver", path=path, body=body.encode(), content_type=content_type, **options)  # type: ignore[arg-type]
    if drop:
        del headers[drop]
    return h.client.post(path, content=(sent_body or body).encode(), headers=headers)


def test_signed_pushes_are_accepted_on_every_endpoint_with_either_key(signed: Harness) -> None:
    assert push(signed, "status-report", REPORT).status_code == 200
    assert push(signed, "status-reports", BATCH, JSON, AK2, SK2).status_code == 200
    assert push(signed, "uplink", UPLINK, ak=AK2, sk=SK2).status_code == 200
    assert signed.rows("SELECT sms_msg_id, via FROM status_reports ORDER BY sms_msg_id") == [
        ("signed-1", "form"),
        ("signed-b1", "batch"),
        ("signed-b2", "batch"),
    ]
    assert signed.rows('SELECT "from", body FROM uplinks') == [("+8615123456789", "hello")]
    assert signed.rows("SELECT count(*) FROM quarantine") == [(0,)]


REFUSED = [
    ("wrong secret key", {"sk": "not-the-secret"}, "signature does not match"),
    ("tampered body", {"sent_body": REPORT.replace("DELIVRD", "UNDELIV")}, "signature does not match"),
    ("stale X-Sdk-Date", {"date_offset": -16 * 60}, "X-Sdk-Date"),
    ("future X-Sdk-Date", {"date_offset": 16 * 60}, "X-Sdk-Date"),
    ("no Authorization", {"drop": "Authorization"}, "'authorization' is missing"),
    ("no X-Sdk-Date", {"drop": "X-Sdk-Date"}, "'x-sdk-date' is missing"),
    ("unknown access key", {"ak": "someoneElse"}, "no push key"),
    ("UNSIGNED-PAYLOAD", {"sdk_shortcut": True}, "the body must be signed"),
]


@pytest.mark.parametrize(("options", "detail"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_bad_signatures_get_401_and_are_quarantined(signed: Harness, options: dict[str, object], detail: str) -> None:
    response = push(signed, "status-report", REPORT, **options)  # type: ignore[arg-type]
    assert response.status_code == 401
    answer = response.json()
    assert answer["error"] == "invalid_signature"
    assert detail in answer["detail"]
    assert SK not in response.text
    sent = str(options.get("sent_body", REPORT)).encode()
    assert signed.rows("SELECT endpoint, error, content_type, raw_body FROM quarantine") == [
        ("status-report", "invalid_signature", FORM, sent)
    ]
    assert signed.rows("SELECT count(*) FROM status_reports") == [(0,)]


def test_an_unsigned_push_is_refused_and_a_wrong_content_type_comes_second(signed: Harness) -> None:
    assert signed.post("status-report", REPORT).status_code == 401
    # A signed request with the wrong media type is authentic, so it gets the usual 415.
    assert push(signed, "status-report", REPORT, "text/plain").status_code == 415
    assert signed.rows("SELECT error FROM quarantine ORDER BY id") == [("invalid_signature",), ("unsupported_media_type",)]


def test_applications_without_push_keys_need_no_signature(harness: Harness) -> None:
    assert harness.post("status-report", REPORT).status_code == 200
    headers = {"Content-Type": FORM, "Authorization": "SDK-HMAC-SHA256 Access=x,SignedHeaders=host,Signature=00"}
    response = harness.client.post(f"/callbacks/{harness.token}/uplink", content=UPLINK.encode(), headers=headers)
    assert response.status_code == 200


def test_rotation_reaches_a_running_service(signed: Harness) -> None:
    async def set_keys(pairs: list[tuple[str, str]]) -> None:
        conn = await asyncpg.connect(signed.url)
        try:
            assert await applications.set_push_keys(conn, "signed", pairs)
        finally:
            await conn.close()

    # A new access key works at once: an unknown key makes the worker read the keys again.
    run(set_keys([(AK2, SK2), ("thirdAk", "thirdSk")]))
    time.sleep(1.1)  # the registry reads the database at most once a second
    assert push(signed, "status-report", REPORT, ak="thirdAk", sk="thirdSk").status_code == 200
    # A removed key stops working once the registry is older than max_age.
    signed.client.app.state.registry.max_age = 0.2  # type: ignore[attr-defined]
    run(set_keys([("thirdAk", "thirdSk")]))
    time.sleep(0.3)
    push(signed, "uplink", UPLINK, ak=AK2, sk=SK2)  # may still pass: it starts the refresh
    deadline = time.monotonic() + 5
    while push(signed, "uplink", UPLINK, ak=AK2, sk=SK2).status_code != 401:
        assert time.monotonic() < deadline, "the removed key still works"
        time.sleep(0.1)
    # Keys removed altogether: pushes are no longer verified.
    run(set_keys([]))
    time.sleep(1.1)
    deadline = time.monotonic() + 5
    while signed.post("status-report", REPORT).status_code != 200:
        assert time.monotonic() < deadline, "verification is still on"
        time.sleep(0.1)


def test_the_snapshot_keeps_push_keys_private_and_verifies_while_the_database_is_away(
    db_url: str, tmp_path: Path
) -> None:
    token, _ = run(_create_signed_app(db_url, "signed", [(AK, SK)]))
    with TestClient(create_app(Settings(database_url=db_url, data_dir=tmp_path, log_format="json"))):
        pass
    snapshot = tmp_path / "applications.json"
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert [a["push_keys"] for a in json.loads(snapshot.read_text()).values()] == [[[AK, SK]]]

    away = Settings(
        database_url="postgresql://postgres@127.0.0.1:9/none", data_dir=tmp_path, log_format="json",
        shutdown_drain_seconds=0.2,
    )  # fmt: skip
    with TestClient(create_app(away)) as client:
        h = Harness(client, token, db_url, "")
        assert push(h, "status-report", REPORT).status_code == 200
        assert push(h, "status-report", REPORT, sk="not-the-secret").status_code == 401
        assert h.post("status-report", REPORT).status_code == 401


def test_application_repr_hides_secrets() -> None:
    app = applications.Application(1, "shop", ((AK, SK),))
    assert SK not in repr(app) and app.push_keys == {AK: SK}


def test_cli_sets_shows_rotates_and_clears_push_keys(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url)
    argv = ["app", "create", "shop", "--push-key", f"{AK}:{SK}", "--push-key", f"{AK2}:-", "--json"]
    created = subprocess.run(
        [sys.executable, "-m", "receiver", *argv], env=env, input=f"{SK2}\n", capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    assert set(json.loads(created.stdout)) == {"name", "token", "status_report_url", "batch_status_report_url", "uplink_url"}

    def stored() -> list[tuple[object, ...]]:
        rows = run(fetch(db_url, "SELECT slot, access_key, secret_key FROM push_keys ORDER BY slot"))
        return [tuple(r.values()) for r in rows]

    assert stored() == [(1, AK, SK), (2, AK2, SK2)]
    shown = cli("app", "push-keys", "shop", env=env).stdout
    assert AK in shown and AK2 in shown and SK not in shown
    cli("app", "push-keys", "shop", "--set", "newAk:newSk", env=env)
    assert stored() == [(1, "newAk", "newSk")]
    assert "not verified" in cli("app", "push-keys", "shop", "--clear", env=env).stdout
    assert stored() == []

    for bad in (["--set", "a:1", "--set", "b:2", "--set", "c:3"], ["--set", "nocolon"], ["--set", "a:1", "--set", "a:2"],
                ["--set", "a b:1"], ["--set", ":secret"]):  # fmt: skip
        result = cli("app", "push-keys", "shop", *bad, env=env, check=False)
        assert result.returncode == 2, bad
    assert cli("app", "push-keys", "nobody", "--set", "a:1", env=env, check=False).returncode == 1
    too_many = cli("app", "create", "other", "--push-key", "a:1", "--push-key", "b:2", "--push-key", "c:3",
                   env=env, check=False)  # fmt: skip
    assert too_many.returncode == 2
    assert run(fetch(db_url, "SELECT count(*) AS n FROM applications WHERE name = 'other'"))[0]["n"] == 0


def test_readonly_role_cannot_read_push_keys(db_url: str) -> None:
    run(_create_signed_app(db_url, "signed", [(AK, SK)]))
    login = f"dash_{uuid.uuid4().hex[:8]}"

    async def check() -> None:
        admin = await asyncpg.connect(db_url)
        await admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE receiver_readonly")
        try:
            conn = await asyncpg.connect(db_url.replace("postgresql://postgres", f"postgresql://{login}", 1))
            try:
                assert await conn.fetchval("SELECT name FROM applications") == "signed"
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch("SELECT * FROM push_keys")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch("SELECT access_key FROM push_keys")
            finally:
                await conn.close()
        finally:
            await admin.execute(f"DROP OWNED BY {login}; DROP ROLE {login}")
            await admin.close()

    run(check())
