"""Sending a scenario to a running receiver, the way the platform does.

Every push is a new connection with the platform's headers (``Connection: close``,
``Pooltype: approxy``, ``Ompsid``, ``TerminalIP``, ``TrcModule``, ``UserTrace``,
``TraceHandle``; docs/protocol.md, Source addresses and TLS), written byte for byte on an asyncio stream, so nothing adds
or rewrites a header; with a push key (``AK:SK``) each push is signed ``SDK-HMAC-SHA256`` over
``connection;content-length;content-type;host;x-sdk-date`` like the platform's signed pushes
(docs/protocol.md, Signed pushes). Pushes start on an open-loop schedule (``rate`` per second, at most ``concurrency`` at
once) and are never retried: the platform does not retry either.

The ``/v1`` calls (registering the sends, checking the outcome) go through ``urllib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from .scenario import Push, Scenario

PLATFORM_HEADERS = (
    ("Connection", "close"),
    ("Pooltype", "approxy"),
    ("TerminalIP", "10.10.112.18"),
    ("TrcModule", "AP"),
    ("UserTrace", "application"),
    ("TraceHandle", "DMZ_818405"),
)
SIGNED_HEADERS = ("connection", "content-length", "content-type", "host", "x-sdk-date")


@dataclass(frozen=True)
class Target:
    """Where to push: the receiver's base URL and the application's token."""

    url: str
    token: str
    insecure: bool = False  # https: accept any certificate (a self-signed test one)
    push_key: tuple[str, str] | None = None  # (AK, SK): sign every push
    timeout: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {self.url!r}")

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def host_header(self) -> str:
        return urlsplit(self.url).netloc

    def path(self, endpoint: str) -> str:
        base = urlsplit(self.url).path.rstrip("/")
        return f"{base}/callbacks/{quote(self.token, safe='')}/{endpoint}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass
class Result:
    pushes: int = 0
    codes: Counter[int] = field(default_factory=Counter)  # 0: no answer (connection failed)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, from each push's due time
    elapsed: float = 0.0

    @property
    def acknowledged(self) -> int:
        return self.codes.get(200, 0)

    @property
    def rate(self) -> float:
        return self.pushes / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "pushes": self.pushes,
            "acknowledged": self.acknowledged,
            "codes": {str(code): n for code, n in sorted(self.codes.items())},
            "errors": dict(self.errors),
            "elapsed_seconds": round(self.elapsed, 3),
            "rate_per_second": round(self.rate, 1),
            "latency_p50_ms": _ms(self.percentile(50)),
            "latency_p99_ms": _ms(self.percentile(99)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# --- one push ----------------------------------------------------------------------------------


def request_bytes(target: Target, push: Push, now: float | None = None) -> bytes:
    """The whole HTTP request, head and body, as the platform would write it."""
    path = target.path(push.endpoint)
    headers = [
        ("Host", target.host_header),
        ("Content-Type", push.content_type),
        ("Content-Length", str(len(push.body))),
    ]
    if target.push_key is not None:
        date = datetime.fromtimestamp(now if now is not None else time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
        headers.append(("X-Sdk-Date", date))
        headers.append(("Authorization", authorization(target.push_key, path, headers, push.body, date)))
    headers += [*PLATFORM_HEADERS[:2], ("Ompsid", secrets.token_hex(16)), *PLATFORM_HEADERS[2:]]
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    return head.encode("latin-1") + push.body


def authorization(
    key: tuple[str, str], path: str, headers: Sequence[tuple[str, str]], body: bytes, date: str
) -> str:
    """``SDK-HMAC-SHA256 Access=..,SignedHeaders=..,Signature=..``, the API Gateway signature (docs/protocol.md, Signed pushes)."""
    access_key, secret_key = key
    values = {name.lower(): value for name, value in headers}
    values["connection"] = "close"
    values["x-sdk-date"] = date
    uri = path if path.endswith("/") else path + "/"
    canonical = "\n".join(
        [
            "POST",
            uri,
            "",
            "".join(f"{name}:{values[name].strip()}\n" for name in SIGNED_HEADERS),
            ";".join(SIGNED_HEADERS),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = f"SDK-HMAC-SHA256\n{date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"SDK-HMAC-SHA256 Access={access_key},SignedHeaders={';'.join(SIGNED_HEADERS)},Signature={signature}"
    )


async def send(target: Target, push: Push, context: ssl.SSLContext | None = None) -> int:
    """Push once on a new connection; the answer's status code."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            target.host, target.port, ssl=context, server_hostname=target.host if context else None
        ),
        target.timeout,
    )
    try:
        writer.write(request_bytes(target, push))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), target.timeout)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionError(f"no HTTP answer: {status_line[:40]!r}")
        await asyncio.wait_for(reader.read(), target.timeout)  # Connection: close: the rest, to EOF
        return int(parts[1])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# --- all of them ---------------------------------------------------------------------------------


async def push_all(
    target: Target,
    pushes: Sequence[Push],
    *,
    rate: float = 200.0,
    concurrency: int = 32,
    progress: Callable[[Result], None] | None = None,
) -> Result:
    """Push in order, push ``i`` due at ``i / rate`` seconds (``rate`` 0: as fast as possible)."""
    result = Result()
    context = target.ssl_context()
    slots = asyncio.Semaphore(max(1, concurrency))
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: set[asyncio.Task[None]] = set()

    async def one(push: Push, due: float) -> None:
        try:
            code = await send(target, push, context)
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as error:
            code = 0
            result.errors[type(error).__name__] += 1
        finally:
            slots.release()
        result.codes[code] += 1
        result.pushes += 1
        result.latencies.append(loop.time() - due)
        if progress is not None:
            progress(result)

    for i, push in enumerate(pushes):
        due = started + i / rate if rate > 0 else loop.time()
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        task = asyncio.create_task(one(push, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    result.elapsed = loop.time() - started
    return result


class ProgressBar:
    """``[#########...........]  523/1000  52%  199/s  ok 520  failed 3`` on one stderr line."""

    def __init__(self, total: int, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._shown = 0.0

    def __call__(self, result: Result) -> None:
        now = time.monotonic()
        if self.enabled and (now - self._shown >= 0.1 or result.pushes >= self.total):
            self._shown = now
            self.stream.write("\r" + self.line(result, now - self.started))
            self.stream.flush()

    def line(self, result: Result, elapsed: float, width: int = 30) -> str:
        done = result.pushes / self.total if self.total else 1.0
        filled = int(done * width)
        rate = result.pushes / elapsed if elapsed > 0 else 0.0
        failed = result.pushes - result.acknowledged
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {result.pushes:>{len(str(self.total))}}/{self.total} "
            f"{done:4.0%}  {rate:6.0f}/s  ok {result.acknowledged}  failed {failed}"
        )

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# --- the /v1 side --------------------------------------------------------------------------------


class Api:
    """The few /v1 calls the simulator makes, with an API key."""

    def __init__(self, url: str, key: str, insecure: bool = False, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.context = Target(url, "-", insecure).ssl_context()

    def call(self, method: str, path: str, document: object = None) -> Any:
        data = None if document is None else json.dumps(document, ensure_ascii=False).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise ApiError(
                f"{method} {path}: {error.code} {error.read()[:300].decode(errors='replace')}"
            ) from None

    def register(self, scenario: Scenario) -> int:
        """``POST /v1/sent`` every send request's response; how many messages are newly registered."""
        return sum(
            int(self.call("POST", "/v1/sent", r.registration())["registered"]) for r in scenario.requests
        )

    def states(self, scenario: Scenario) -> Counter[str]:
        """The delivery state of the scenario's messages, as the receiver derives them."""
        ours = {send.sms_msg_id for send in scenario.sends}
        counts: Counter[str] = Counter()
        since = scenario.start.strftime("%Y-%m-%dT%H:%M:%SZ")
        cursor = None
        while True:
            query = {"since": since, "limit": "500", **({"cursor": cursor} if cursor else {})}
            page = self.call("GET", "/v1/messages?" + urlencode(query))
            for message in page["messages"]:
                if message["sms_msg_id"] in ours:
                    counts[message["state"]] += 1
            cursor = page.get("cursor")
            if not cursor or len(page["messages"]) < 500:
                return counts

    def blacklisted(self, numbers: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(numbers), 500):
            answer = self.call("POST", "/v1/blacklist/check", {"numbers": list(numbers[start : start + 500])})
            found |= set(answer["blacklisted"])
        return found


class ApiError(Exception):
    pass
