"""Slow, stalled and malformed clients against a real ``receiver serve`` (sockets, uvicorn,
httptools), with RECEIVER_CLIENT_TIMEOUT_SECONDS=1: each kind is cut off, with a JSON reason
where an answer can still be given, and many of them at once do not keep a good push from its
200."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEMPLATE
from prometheus_client.parser import text_string_to_metric_families
from support import FORM, Service, admin, create_app_token, fetch, run, service_env, wait_for, with_database

from receiver.uvicorn_adapter import BODY_GRACE

TIMEOUT = 1.0


class Served:
    def __init__(self, service: Service, token: str, url: str) -> None:
        self.service, self.token, self.url = service, token, url

    def closed(self, reason: str) -> float:
        """receiver_http_connections_closed_total{reason}."""
        text = self.service.get("/metrics")[1].decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "receiver_http_connections_closed_total" and sample.labels == {"reason": reason}:
                    return sample.value
        return 0.0

    def quarantined(self, error: str) -> list[tuple[object, ...]]:
        rows = run(fetch(self.url, "SELECT raw_body, body_bytes FROM quarantine WHERE error = $1 ORDER BY id", error))
        return [tuple(r.values()) for r in rows]

    def counted(self, error: str) -> int:
        rows = run(fetch(self.url, "SELECT coalesce(sum(refusals), 0)::int AS n FROM quarantine_counts WHERE error = $1", error))
        return int(rows[0]["n"])


@pytest.fixture(scope="module")
def served(pg_server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One worker, so that every stalled connection sits on the worker that must answer the good push."""
    name = f"slow_{uuid.uuid4().hex[:12]}"
    run(admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    url = with_database(pg_server_url, name)
    env = service_env(Path(tmp_path_factory.mktemp("slow")) / "data", url, RECEIVER_CLIENT_TIMEOUT_SECONDS=str(TIMEOUT))
    token = create_app_token(env, "shop")["token"]
    service = Service(env, workers=1).start()
    try:
        yield Served(service, token, url)
    finally:
        service.stop()
        run(admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def connect(served: Served) -> socket.socket:
    return socket.create_connection(("127.0.0.1", served.service.port), timeout=10)


def until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection. A server that never does makes
    this raise (the socket's 10 s timeout): the test fails."""
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    sock.close()
    return b"".join(chunks)


def answer(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def callback_head(served: Served, content_length: int) -> bytes:
    return (
        f"POST /callbacks/{served.token}/status-report HTTP/1.1\r\nHost: receiver\r\n"
        f"Content-Type: {FORM}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def test_a_client_that_sends_nothing_is_disconnected(served: Served) -> None:
    before = served.closed("timeout_request")
    sock = connect(served)
    assert until_closed(sock) == b""
    assert served.closed("timeout_request") == before + 1


def test_a_client_that_stalls_in_its_headers_gets_408(served: Served) -> None:
    sock = connect(served)
    sock.sendall(f"POST /callbacks/{served.token}/status-report HTTP/1.1\r\nHost: receiver\r\nContent-Ty".encode())
    assert answer(until_closed(sock)) == (408, {"error": "request_timeout", "detail": {"seconds": TIMEOUT}})


def test_a_stalled_body_gets_408_and_what_came_is_quarantined(served: Served) -> None:
    before = served.counted("request_timeout")
    sock = connect(served)
    sock.sendall(callback_head(served, 100) + b"smsMsgId=stalled")
    status, body = answer(until_closed(sock))
    assert (status, body) == (408, {"error": "request_timeout", "detail": {"seconds": TIMEOUT, "received_bytes": 16}})
    assert wait_for(lambda: served.counted("request_timeout") == before + 1, timeout=10)
    assert (b"smsMsgId=stalled", 16) in served.quarantined("request_timeout")


def test_the_rest_of_a_body_after_an_early_answer_is_waited_for_only_so_long(served: Served) -> None:
    """A route that answers before the body is in (here: none matches) leaves uvicorn reading
    and discarding the rest: a client that stalls there is let go at T + BODY_GRACE."""
    before = served.closed("timeout_body")
    sock = connect(served)
    sock.sendall(b"POST /no/such/path HTTP/1.1\r\nHost: receiver\r\nContent-Length: 100\r\n\r\nhalf")
    assert answer(until_closed(sock)) == (404, {"error": "not_found", "detail": "Not Found"})
    assert served.closed("timeout_body") == before + 1


def test_a_complete_request_leaves_no_deadline_behind(served: Served) -> None:
    """A kept-alive connection idles past every deadline (up to uvicorn's keep-alive) and serves
    its next request."""
    conn = http.client.HTTPConnection("127.0.0.1", served.service.port, timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}')
            time.sleep(TIMEOUT + BODY_GRACE + 0.5)
    finally:
        conn.close()


def test_a_trickled_body_gets_408(served: Served) -> None:
    """One byte every 0.2 s: the connection is busy, but the body would take 20 s."""
    sock = connect(served)
    sock.sendall(callback_head(served, 100))
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                sock.send(b"x")
            except OSError:
                return
            time.sleep(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        status, body = answer(until_closed(sock))
    finally:
        stop.set()
        thread.join(5)
    assert status == 408 and body["error"] == "request_timeout"


def test_a_client_that_never_reads_its_answers_is_cut_off(served: Served) -> None:
    """300 pipelined GET /metrics, and the client reads nothing: once the answers fill the socket
    buffers, the server's writes wait; after the timeout it aborts, instead of waiting forever
    (as uvicorn alone does). The client then finds only part of the 300 answers."""
    before = served.closed("timeout_response")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", served.service.port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: receiver\r\n\r\n" * 300)
    assert wait_for(lambda: served.closed("timeout_response") == before + 1, timeout=15)
    received = until_closed(sock)
    assert 0 < received.count(b"HTTP/1.1 200 OK") < 300


def test_headers_over_the_limit_get_431(served: Served) -> None:
    sock = connect(served)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\nX-Padding: " + b"p" * (40 << 10))
    assert answer(until_closed(sock)) == (431, {"error": "headers_too_large", "detail": {"max_bytes": 32 << 10}})


def test_bytes_that_are_not_http_get_400(served: Served) -> None:
    sock = connect(served)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP\r\n\r\n")
    assert answer(until_closed(sock)) == (400, {"error": "bad_request", "detail": "not a valid HTTP/1.1 request"})


def test_wrong_route_and_method_answer_json(served: Served) -> None:
    status, body = served.service.request("GET", f"/callbacks/{served.token}/status-report")
    assert (status, json.loads(body)) == (405, {"error": "method_not_allowed", "detail": "Method Not Allowed"})
    status, body = served.service.request("POST", "/no/such/path")
    assert (status, json.loads(body)) == (404, {"error": "not_found", "detail": "Not Found"})


def test_a_good_push_gets_200_while_200_stalled_connections_are_open(served: Served) -> None:
    before = served.counted("request_timeout")
    stalled = []
    for i in range(200):
        sock = connect(served)
        if i % 3 == 1:
            sock.sendall(b"POST /callbacks/x/status-report HTTP/1.1\r\nHost: rec")
        elif i % 3 == 2:
            sock.sendall(callback_head(served, 50) + f"smsMsgId=s{i}".encode())
        stalled.append(sock)
    status, body = served.service.post_form(f"/callbacks/{served.token}/status-report", "smsMsgId=good&status=DELIVRD")
    assert (status, body) == (200, b"")
    assert wait_for(lambda: run(fetch(served.url, "SELECT 1 FROM status_reports WHERE sms_msg_id = 'good'")), timeout=10)
    for sock in stalled:  # every one of them is let go
        until_closed(sock)
    assert wait_for(lambda: served.counted("request_timeout") == before + 66, timeout=10)


def test_a_client_gone_mid_body_leaves_what_it_sent_in_the_quarantine(served: Served) -> None:
    before = served.counted("incomplete_body")
    sock = connect(served)
    sock.sendall(callback_head(served, 100) + b"smsMsgId=gone")
    time.sleep(0.2)  # the handler is reading the body by now
    sock.close()
    assert wait_for(lambda: served.counted("incomplete_body") == before + 1, timeout=10)
    assert (b"smsMsgId=gone", 13) in served.quarantined("incomplete_body")


def test_a_connection_reaches_a_worker_once_its_request_has_come() -> None:
    """The listening socket of ``receiver serve`` (server.defer_accept): a connection that has
    sent nothing yet (a port probe, a client that connects and waits) wakes no worker; its
    first bytes do, and the worker accepts and reads them at once."""
    from receiver.server import defer_accept

    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert defer_accept(listener)
        listener.setblocking(False)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            assert not select.select([listener], [], [], 0.3)[0]  # connected, silent: nothing to accept
            client.sendall(b"POST / HTTP/1.1\r\n")
            assert select.select([listener], [], [], 5)[0]
            accepted, _ = listener.accept()
            with accepted:
                accepted.settimeout(5)
                assert accepted.recv(100) == b"POST / HTTP/1.1\r\n"

