"""What the simulated platform sends, and what the receiver should end up with. Pure: no I/O.

:func:`build` makes a :class:`Scenario` from :class:`Options` and a seed:

- **sends**: messages as the Huawei send API answered them (docs/protocol.md, Send results): grouped in send requests of
  1 to 50 recipients sharing a UUID prefix with a counting suffix (``<uuid>_<n>``), each from
  the channel number, some with an ``extend``; long messages split into 2 to 4 parts;
- **pushes**: the HTTP bodies the platform would push, in the order it would push them:
  form-encoded status reports (field order and encodings of the official example: ``%3A`` in
  ``updateTime``, ``%2B`` in numbers, ``orgCode=000``), or JSON batches of 1 to 50 when asked;
  a report per part, ``DELIVRD`` for most, failure codes (``UNDELIV``, ``E200027``,
  ``MK:0036``, ``EXPIRED`` without ``updateTime``, the platform's blacklist code ``MBBLACK`` ...)
  for some; replies (uplink SMS, UTF-8, ``%2B86``) in Chinese and English, and unsubscribe
  replies (``T``, ``退订``, full-width ``Ｔ``, ``td``, ``R``); some pushes sent twice, and with
  ``reorder`` parts and events out of order;
- **expected**: the distinct reports and replies, each message's delivery state and the numbers
  the blacklist should hold (with the receiver's default unsubscribe keywords).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote_plus

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_BATCH = 50

DELIVERED = "DELIVRD"
# (status, source, weight): source 1 SMS platform, 2 SMS center, 3 Huawei platform (docs/protocol.md, Status reports and Status codes)
FAILURES: tuple[tuple[str, str, int], ...] = (
    ("UNDELIV", "2", 30),
    ("EXPIRED", "1", 15),
    ("E200027", "3", 10),
    ("MK:0036", "2", 10),
    ("MILIMIT", "1", 8),
    ("REJECTD", "2", 8),
    ("MBBLACK", "1", 6),
    ("SC:0016", "2", 4),
    ("1", "2", 5),
    ("RTE_ERR", "3", 4),
)
BLACKLIST_CODES = frozenset({"MBBLACK", "SC:0016"})  # the platform's: blacklist the recipient
OPTOUT_REPLIES = ("T", "退订", "Ｔ", "td", "R", "退订。", "T ")  # the receiver's default keywords, as typed
REPLIES = (
    "好的，谢谢",
    "收到",
    "请问什么时候发货？",
    "已收到验证码",
    "T恤还有M码吗",  # starts with T, is no unsubscribe
    "OK",
    "Thanks! 👍",
    "退货怎么办理",
    "明天下午可以送到吗",
    "谢谢您的提醒",
)
PREFIXES = ("130", "131", "132", "135", "136", "137", "138", "139", "150", "151", "152", "155", "157", "158",
            "159", "166", "177", "180", "181", "185", "186", "187", "188", "189", "191", "198", "199")  # fmt: skip


@dataclass(frozen=True)
class Options:
    messages: int = 1000
    long: float = 0.1  # share of messages split in 2 to 4 parts
    failures: float = 0.05  # share of messages with a part not delivered
    duplicates: float = 0.05  # share of pushes the platform sends twice
    reorder: bool = False  # long-SMS parts and events out of order
    replies: float = 0.05  # share of delivered messages answered with ordinary text
    optouts: float = 0.02  # share of delivered messages answered with an unsubscribe keyword
    batch: bool = False  # status reports as JSON batches (statusReportList, 1 to 50 items)
    extend: float = 0.3  # share of send requests with an extend: their reports carry extend and to
    channel: str = "csms100000001"
    seed: int | None = None
    start: datetime | None = None  # first send; default: an hour and a half ago

    def __post_init__(self) -> None:
        if self.messages < 1:
            raise ValueError("messages must be at least 1")
        for name in ("long", "failures", "duplicates", "replies", "optouts", "extend"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1")
        if self.replies + self.optouts > 1.0:
            raise ValueError("replies + optouts must not exceed 1")


@dataclass(frozen=True)
class Send:
    sms_msg_id: str
    to: str  # E.164
    create_time: datetime
    total: int
    request: int  # index of the send request it belongs to


@dataclass(frozen=True)
class SendRequest:
    """One call of the send API: its response document, and the extend it was made with."""

    response: dict[str, object]
    extend: str | None

    def registration(self) -> dict[str, object]:
        """The body for ``POST /v1/sent``."""
        return {"response": self.response, "extend": self.extend, "message_type": "notification"}


@dataclass(frozen=True)
class Push:
    """One HTTP request of the platform's."""

    endpoint: str  # status-report, status-reports or uplink
    content_type: str
    body: bytes
    items: int = 1  # reports in a batch
    duplicate: bool = False


@dataclass
class Expected:
    reports: int = 0  # distinct status reports
    replies: int = 0  # distinct replies
    delivered: set[str] = field(default_factory=set)  # smsMsgIds
    failed: set[str] = field(default_factory=set)
    optouts: set[str] = field(default_factory=set)  # numbers that replied with an unsubscribe keyword
    platform_blacklisted: set[str] = field(default_factory=set)  # numbers with a blacklist code ...
    platform_blacklisted_with_to: set[str] = field(default_factory=set)  # ... in a report that names them

    def blacklisted(self, registered: bool) -> set[str]:
        """Numbers the blacklist should hold: a report with a blacklist code names its number only
        when it carries ``to`` (sends with an ``extend``) or once its send is registered."""
        return self.optouts | (self.platform_blacklisted if registered else self.platform_blacklisted_with_to)


@dataclass
class Scenario:
    options: Options
    sends: list[Send]
    requests: list[SendRequest]
    pushes: list[Push]
    expected: Expected

    @property
    def start(self) -> datetime:
        return min(send.create_time for send in self.sends)


@dataclass(order=True)
class _Event:
    at: float  # when the platform pushes it (seconds from the start)
    order: int
    kind: str = field(compare=False)  # report or reply
    fields: list[tuple[str, str]] = field(compare=False)
    duplicate: bool = field(default=False, compare=False)


_EventSink = Callable[[float, str, list[tuple[str, str]]], None]  # (at, kind, fields)


def build(options: Options) -> Scenario:
    rng = random.Random(options.seed)
    start = (options.start or datetime.now(UTC) - timedelta(minutes=90)).replace(microsecond=0)
    spread = 3600.0  # sends over an hour, reports and replies within the half hour after
    numbers = _numbers(rng, options.messages)
    expected = Expected()
    sends: list[Send] = []
    requests: list[SendRequest] = []
    events: list[_Event] = []
    order = 0

    def event(at: float, kind: str, fields: list[tuple[str, str]]) -> None:
        nonlocal order
        order += 1
        events.append(_Event(at, order, kind, fields))

    index = 0
    while index < options.messages:
        size = min(rng.randint(1, 50), options.messages - index)
        prefix = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        counter = rng.randint(1_000, 9_000_000)
        offset = spread * index / options.messages
        created = start + timedelta(seconds=int(offset))
        extend = f"order-{len(requests) + 1}" if rng.random() < options.extend else None
        results = []
        for k in range(size):
            to = numbers[index + k]
            total = rng.randint(2, 4) if rng.random() < options.long else 1
            send = Send(f"{prefix}_{counter + k}", to, created, total, len(requests))
            sends.append(send)
            results.append(
                {
                    "originTo": to,
                    "createTime": _time(created),
                    "from": options.channel,
                    "smsMsgId": send.sms_msg_id,
                    "status": "000000",
                    "countryId": "CN",
                    "total": total,
                }
            )
            delivered_at = _reports(rng, options, send, extend, offset, expected, event)
            if delivered_at is not None:
                _reply(rng, options, send, created, delivered_at, offset, expected, event)
        requests.append(SendRequest({"code": "000000", "description": "Success", "result": results}, extend))
        index += size

    events.sort()
    events = _duplicated(rng, options, events)
    pushes = _pushes(rng, options, events)
    return Scenario(options, sends, requests, pushes, expected)


def _reports(
    rng: random.Random,
    options: Options,
    send: Send,
    extend: str | None,
    offset: float,
    expected: Expected,
    event: _EventSink,
) -> datetime | None:
    """The reports of one message; returns when it was delivered (None: it failed)."""
    failing_part = rng.randint(1, send.total) if rng.random() < options.failures else None
    failure = rng.choices(FAILURES, weights=[w for _, _, w in FAILURES])[0] if failing_part else None
    delays = sorted(
        rng.uniform(1, 20) if rng.random() < 0.9 else rng.uniform(20, 600) for _ in range(send.total)
    )
    if options.reorder and send.total > 1:
        rng.shuffle(delays)  # later parts reported first
    for sequence in range(1, send.total + 1):
        delay = delays[sequence - 1]
        status, source = (
            (failure[0], failure[1]) if failure and sequence == failing_part else (DELIVERED, "2")
        )
        updated = send.create_time + timedelta(seconds=int(delay))
        fields = [("sequence", str(sequence)), ("total", str(send.total))]
        if rng.random() < 0.5:
            fields.append(("orgCode", "000"))
        if not (status == "EXPIRED" and rng.random() < 0.5):  # built by the platform: no updateTime
            fields.append(("updateTime", _time(updated)))
        fields += [("source", source), ("smsMsgId", send.sms_msg_id), ("status", status)]
        if extend is not None:
            fields += [("extend", extend), ("to", send.to)]
        jitter = rng.uniform(-120, 120) if options.reorder else 0.0
        event(offset + delay + jitter, "report", fields)
        expected.reports += 1
        if status in BLACKLIST_CODES:
            expected.platform_blacklisted.add(send.to)
            if extend is not None:
                expected.platform_blacklisted_with_to.add(send.to)
    if failure:
        expected.failed.add(send.sms_msg_id)
        return None
    expected.delivered.add(send.sms_msg_id)
    return send.create_time + timedelta(seconds=int(max(delays)))


def _reply(
    rng: random.Random,
    options: Options,
    send: Send,
    created: datetime,
    delivered_at: datetime,
    offset: float,
    expected: Expected,
    event: _EventSink,
) -> None:
    draw = rng.random()
    if draw < options.optouts:
        text = rng.choice(OPTOUT_REPLIES)
        expected.optouts.add(send.to)
    elif draw < options.optouts + options.replies:
        text = rng.choice(REPLIES)
    else:
        return
    after = rng.uniform(5, 1200)
    replied = delivered_at + timedelta(seconds=after)
    fields = [
        ("from", send.to),
        ("to", options.channel),
        ("body", text),
        ("smsMsgId", str(uuid.UUID(int=rng.getrandbits(128), version=4))),
    ]
    if rng.random() < 0.8:  # only when the application asks for the reply time
        fields.append(("createTime", _time(replied)))
    jitter = rng.uniform(-120, 120) if options.reorder else 0.0
    event(offset + (delivered_at - created).total_seconds() + after + jitter, "reply", fields)
    expected.replies += 1


def _duplicated(rng: random.Random, options: Options, events: list[_Event]) -> list[_Event]:
    """Some pushes again, up to 20 pushes later: the platform does not promise it never does."""
    keyed: list[tuple[float, _Event]] = []
    for position, original in enumerate(events):
        keyed.append((float(position), original))
        if rng.random() < options.duplicates:
            copy = _Event(original.at, original.order, original.kind, original.fields, duplicate=True)
            keyed.append((position + rng.randint(1, 21) - 0.5, copy))
    keyed.sort(key=lambda pair: pair[0])
    return [e for _, e in keyed]


def _pushes(rng: random.Random, options: Options, events: list[_Event]) -> list[Push]:
    pushes: list[Push] = []
    batch: list[_Event] = []
    target = rng.randint(1, MAX_BATCH)

    def flush() -> None:
        nonlocal batch, target
        if batch:
            items = [dict(e.fields) for e in batch]
            body = json.dumps({"statusReportList": items}, ensure_ascii=False, separators=(",", ":")).encode()
            pushes.append(Push("status-reports", JSON, body, len(batch), all(e.duplicate for e in batch)))
        batch, target = [], rng.randint(1, MAX_BATCH)

    for e in events:
        if e.kind == "report" and options.batch:
            batch.append(e)
            if len(batch) >= target:
                flush()
            continue
        endpoint = "status-report" if e.kind == "report" else "uplink"
        pushes.append(Push(endpoint, FORM, form(e.fields), duplicate=e.duplicate))
    flush()
    return pushes


def form(fields: list[tuple[str, str]]) -> bytes:
    """``application/x-www-form-urlencoded`` as the platform writes it: UTF-8, ``%3A``, ``%2B``."""
    return "&".join(f"{quote_plus(k)}={quote_plus(v, safe='*')}" for k, v in fields).encode("ascii")


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _numbers(rng: random.Random, n: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        number = f"+86{rng.choice(PREFIXES)}{rng.randint(0, 99_999_999):08d}"
        if number not in seen:
            seen.add(number)
            out.append(number)
    return out
