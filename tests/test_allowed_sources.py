"""Source allow-lists end to end: the 403 and its quarantine, X-Forwarded-For behind trusted
proxies, the CLI, a running service picking a change up, the snapshot, and a real `receiver serve`."""

from __future__ import annotations

import contextlib
import json
import stat
import time
from collections.abc import Iterator, Sequence
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs
from support import FORM, JSON, Harness, Service, cli, fetch, run, service_env, wait_for

from receiver import applications, netaddr
from receiver.config import Settings
from receiver.http.app import create_app

REPORT = "smsMsgId=src-1&status=DELIVRD&total=1&sequence=1&source=2"
BATCH = '{"statusReportList":[{"smsMsgId":"src-b1","status":"DELIVRD"}]}'
UPLINK = "from=%2B8615123456789&to=10691002019&body=hello&smsMsgId=src-u1"
ALLOWED = ("198.51.100.0/24", "2001:db8:5::/48")
INSIDE, OUTSIDE = "198.51.100.7", "203.0.113.9"
PROXY = "10.0.0.2"


class Peer:
    """The app, seen from a socket peer of the test's choice (Starlette's TestClient says 'testclient')."""

    def __init__(self, app: Any) -> None:
        self.app, self.address = app, INSIDE

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": (self.address, 40000)}
        await self.app(scope, receive, send)


class Sourced(Harness):
    peer: Peer

    def push(self, endpoint: str, body: str, *, peer: str, xff: Sequence[str] = (), content_type: str = FORM):  # type: ignore[no-untyped-def]
        """POST as if from the socket peer ``peer``, with one X-Forwarded-For header per ``xff`` item."""
        self.peer.address = peer
        headers = [("Content-Type", content_type), *(("X-Forwarded-For", v) for v in xff)]
        return self.client.post(f"/callbacks/{self.token}/{endpoint}", content=body.encode(), headers=headers)


async def _create(url: str, name: str, sources: tuple[str, ...]) -> str:
    conn = await asyncpg.connect(url)
    try:
        _, token = await applications.create(conn, name, [], netaddr.parse_sources(sources))
        return token
    finally:
        await conn.close()


@contextlib.contextmanager
def sourced(db_url: str, data_dir: Path, sources: tuple[str, ...] = ALLOWED, **settings: Any) -> Iterator[Sourced]:
    """The app in-process with an application 'shop' that accepts pushes from ``sources`` only."""
    token = run(_create(db_url, "shop", sources))
    config = Settings(database_url=db_url, data_dir=data_dir, log_format="json", **settings)
    peer = Peer(create_app(config))
    with TestClient(peer) as client:
        h = Sourced(client, token, db_url, "")
        h.peer = peer
        yield h


@pytest.fixture
def shop(db_url: str, tmp_path: Path) -> Iterator[Sourced]:
    with sourced(db_url, tmp_path) as h:
        yield h


def test_pushes_from_an_allowed_source_are_stored_on_every_endpoint(shop: Sourced) -> None:
    assert shop.push("status-report", REPORT, peer=INSIDE).status_code == 200
    assert shop.push("status-reports", BATCH, peer="198.51.100.254", content_type=JSON).status_code == 200
    assert shop.push("uplink", UPLINK, peer="2001:db8:5::77").status_code == 200
    assert shop.rows("SELECT sms_msg_id FROM status_reports ORDER BY 1") == [("src-1",), ("src-b1",)]
    assert shop.rows("SELECT sms_msg_id FROM uplinks") == [("src-u1",)]
    assert shop.rows("SELECT count(*) FROM quarantine") == [(0,)]


@pytest.mark.parametrize("peer", [OUTSIDE, "198.51.101.1", "2001:db8:6::1", "::1", "testclient"])
def test_a_push_from_elsewhere_gets_403_and_is_quarantined_without_its_body(shop: Sourced, peer: str) -> None:
    response = shop.push("status-report", REPORT, peer=peer)
    assert response.status_code == 403
    answer = response.json()
    assert answer["error"] == "source_not_allowed"
    assert answer["detail"] == {"source": netaddr.parse_address(peer) and str(netaddr.parse_address(peer))}
    assert "198.51.100.0" not in response.text and "2001:db8:5" not in response.text  # our list stays ours
    assert shop.rows("SELECT endpoint, error, detail, raw_body FROM quarantine") == [
        ("status-report", "source_not_allowed", json.dumps(answer["detail"]), b"")
    ]
    assert shop.rows("SELECT count(*) FROM status_reports") == [(0,)]


def test_the_log_line_names_the_client(shop: Sourced) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        refused = shop.push("uplink", UPLINK, peer=OUTSIDE, xff=[INSIDE])
        stored = shop.push("uplink", UPLINK, peer="2001:db8:5::77")
    lines = {e["request_id"]: e for e in entries if e.get("event") == "callback"}
    line = lines[refused.headers["x-request-id"]]
    assert line["code"] == 403 and line["error"] == "source_not_allowed" and line["client"] == OUTSIDE
    assert "peer" not in line  # no proxy is trusted: the peer is the client
    assert lines[stored.headers["x-request-id"]]["client"] == "2001:db8:5::77"


def test_applications_without_a_list_take_any_source(db_url: str, tmp_path: Path) -> None:
    with sourced(db_url, tmp_path, sources=()) as h:
        for peer in (OUTSIDE, "::1", "testclient"):
            assert h.push("status-report", REPORT, peer=peer).status_code == 200


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(shop: Sourced) -> None:
    assert shop.push("status-report", REPORT, peer=OUTSIDE, xff=[INSIDE]).status_code == 403
    assert shop.push("status-report", REPORT, peer=PROXY, xff=[INSIDE]).status_code == 403  # trusted by nobody
    assert shop.push("status-report", REPORT, peer=INSIDE, xff=[OUTSIDE]).status_code == 200


FORWARDED = [
    ("the client as forwarded", PROXY, [INSIDE], 200),
    ("through two proxies", PROXY, [f"{INSIDE}, 10.7.7.7"], 200),
    ("one header per proxy", PROXY, [INSIDE, "10.7.7.7:8080"], 200),
    ("an IPv6 client", PROXY, ["[2001:db8:5::9]:5060"], 200),
    ("the client forged its own header", PROXY, [f"{INSIDE}, {OUTSIDE}"], 403),
    ("forged to the left of the real client", PROXY, [f"{OUTSIDE}, {INSIDE}"], 200),
    ("garbage nearest to us", PROXY, [f"{INSIDE}, not-an-address"], 403),
    ("an empty item nearest to us", PROXY, [f"{INSIDE},"], 403),
    ("no header: the proxy itself", PROXY, [], 403),
    ("an untrusted peer's header", OUTSIDE, [INSIDE], 403),
    ("an allowed peer that is no proxy", INSIDE, [OUTSIDE], 200),
]


@pytest.mark.parametrize(("peer", "xff", "code"), [f[1:] for f in FORWARDED], ids=[f[0] for f in FORWARDED])
def test_behind_trusted_proxies_the_forwarded_client_counts(
    db_url: str, tmp_path: Path, peer: str, xff: list[str], code: int
) -> None:
    with sourced(db_url, tmp_path, trusted_proxies="10.0.0.0/8") as h:
        assert h.push("status-report", REPORT, peer=peer, xff=xff).status_code == code
        assert h.rows("SELECT count(*) FROM quarantine") == [(0 if code == 200 else 1,)]


def test_log_line_shows_the_client_and_the_proxy(db_url: str, tmp_path: Path) -> None:
    capture = capture_logs(processors=[structlog.contextvars.merge_contextvars])
    with sourced(db_url, tmp_path, trusted_proxies="10.0.0.0/8") as h, capture as entries:
        ok = h.push("status-report", REPORT, peer=PROXY, xff=[f"{OUTSIDE}, {INSIDE}"])
        garbage = h.push("status-report", REPORT, peer=PROXY, xff=["<script>"])
    lines = {e["request_id"]: e for e in entries if e.get("event") == "callback"}
    assert (ok.status_code, garbage.status_code) == (200, 403)
    assert {**lines[ok.headers["x-request-id"]], "client": INSIDE, "peer": PROXY} == lines[ok.headers["x-request-id"]]
    line = lines[garbage.headers["x-request-id"]]
    assert line["client"] == "unknown" and line["peer"] == PROXY and "<script>" not in repr(entries)
    assert garbage.json() == {"error": "source_not_allowed", "detail": {"source": None}}


def test_a_change_by_the_cli_reaches_a_running_service(shop: Sourced, tmp_path: Path) -> None:
    shop.client.app.state.registry.max_age = 0.2  # type: ignore[attr-defined]
    env = service_env(tmp_path / "cli", shop.url)
    assert shop.push("status-report", REPORT, peer=OUTSIDE).status_code == 403

    shown = cli("app", "allow-sources", "shop", "203.0.113.0/24", env=env).stdout
    assert shown.strip() == "shop: pushes are accepted only from 203.0.113.0/24"

    def answers() -> tuple[int, int]:
        time.sleep(0.25)  # older than max_age: the next push starts a refresh
        return tuple(shop.push("status-report", REPORT, peer=p).status_code for p in (OUTSIDE, INSIDE))

    assert wait_for(lambda: answers() == (200, 403), timeout=10), "the new list did not arrive"
    assert "any source" in cli("app", "allow-sources", "shop", "--any", env=env).stdout
    assert wait_for(lambda: answers() == (200, 200), timeout=10), "the list was not lifted"


def test_cli_creates_shows_and_refuses(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url)
    created = cli("app", "create", "shop", "--allow-source", "huawei", "--allow-source", "2001:db8::/32", env=env)
    assert "pushes accepted only from:  117.78.29.0/24, " in created.stdout
    assert "examples" in created.stderr  # the shorthand says where its ranges come from
    huawei = [*netaddr.NAMED_SOURCES["huawei"], "2001:db8::/32"]
    stored = run(fetch(db_url, "SELECT allowed_sources FROM applications WHERE name = 'shop'"))
    assert [str(n) for n in stored[0]["allowed_sources"]] == huawei
    shown = cli("app", "allow-sources", "shop", env=env).stdout
    assert shown.strip() == f"shop: pushes are accepted only from {', '.join(huawei)}"
    as_json = json.loads(cli("app", "create", "plain", "--json", env=env).stdout)
    assert "any source" in cli("app", "allow-sources", "plain", env=env).stdout and "token" in as_json

    for bad in (["10.0.0.1/8"], ["huawe"], ["10.0.0.0/8", "--any"]):
        result = cli("app", "allow-sources", "shop", *bad, env=env, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, bad
    assert cli("app", "create", "other", "--allow-source", "nope", env=env, check=False).returncode == 2
    assert cli("app", "allow-sources", "nobody", "--any", env=env, check=False).returncode == 1
    assert run(fetch(db_url, "SELECT count(*) AS n FROM applications WHERE name = 'other'"))[0]["n"] == 0
    stored = run(fetch(db_url, "SELECT allowed_sources FROM applications WHERE name = 'shop'"))
    assert [str(n) for n in stored[0]["allowed_sources"]] == huawei  # the refused changes changed nothing


def test_the_database_refuses_a_list_that_is_too_long(db_url: str) -> None:
    async def store() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("INSERT INTO applications (name, token_hash) VALUES ('x', '\\x00')")
            networks = [ip_network(f"10.0.{i}.0/24") for i in range(netaddr.MAX_SOURCES + 1)]
            await conn.execute("UPDATE applications SET allowed_sources = $1", networks)
        finally:
            await conn.close()

    with pytest.raises(asyncpg.CheckViolationError):
        run(store())


def test_the_snapshot_keeps_the_list_while_the_database_is_away(db_url: str, tmp_path: Path) -> None:
    with sourced(db_url, tmp_path) as h:
        token = h.token
    snapshot = tmp_path / "applications.json"
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert [a["allowed_sources"] for a in json.loads(snapshot.read_text()).values()] == [list(ALLOWED)]

    away = Settings(
        database_url="postgresql://postgres@127.0.0.1:9/none", data_dir=tmp_path, log_format="json",
        shutdown_drain_seconds=0.2,
    )  # fmt: skip
    peer = Peer(create_app(away))
    with TestClient(peer) as client:
        h = Sourced(client, token, db_url, "")
        h.peer = peer
        assert h.push("status-report", REPORT, peer=INSIDE).status_code == 200
        assert h.push("status-report", REPORT, peer=OUTSIDE).status_code == 403


def test_a_real_service_behind_a_trusted_proxy(db_url: str, tmp_path: Path) -> None:
    """`receiver serve --trusted-proxy`: the loopback peer (our 'balancer') is trusted, its header believed."""
    env = service_env(tmp_path, db_url)
    token = json.loads(cli("app", "create", "shop", "--json", "--allow-source", INSIDE, env=env).stdout)["token"]
    service = Service(env, workers=1)
    service.extra_args = ["--trusted-proxy", "127.0.0.0/8", "--trusted-proxy", "::1"]
    try:
        service.start()

        def post(*xff: str) -> int:
            conn = service.connection()
            try:
                conn.putrequest("POST", f"/callbacks/{token}/status-report")
                for value in xff:
                    conn.putheader("X-Forwarded-For", value)
                conn.putheader("Content-Type", FORM)
                conn.putheader("Content-Length", str(len(REPORT)))
                conn.endheaders(REPORT.encode())
                return conn.getresponse().status
            finally:
                conn.close()

        assert post(INSIDE) == 200
        assert post(f"{OUTSIDE}, {INSIDE}", "127.0.0.1") == 200
        assert post() == 403  # the balancer's own address is not allowed
        assert post(f"{INSIDE}, {OUTSIDE}") == 403
        assert post("[2001:db8::zz]:80, nonsense") == 403
    finally:
        service.stop()
    lines = [json.loads(x) for x in service.log.read_text().splitlines() if x.startswith("{")]
    callbacks = [(x["code"], x["client"], x.get("peer")) for x in lines if x.get("event") == "callback"]
    assert callbacks == [
        (200, INSIDE, "127.0.0.1"),
        (200, INSIDE, "127.0.0.1"),
        (403, "127.0.0.1", None),  # the peer is the client: said once
        (403, OUTSIDE, "127.0.0.1"),
        (403, "unknown", "127.0.0.1"),
    ]
