"""A simulated day of traffic through a real ``receiver serve``, and the dashboard drawn on it.

    python -m dashboards.demo --out docs/dashboard.png [--now 2025-01-01T15:40:00Z] [--seed 7]
                              [--messages 4000] [--database-url URL]

1. A fresh database: an embedded PostgreSQL in a temporary folder, or ``--database-url`` (an
   empty database of yours); ``receiver migrate``, ``receiver app create``, ``receiver apikey
   create``, then ``receiver serve`` in a child process.
2. The 24 hours before ``--now``, planned from the seed alone (:func:`plan`): send requests
   following a daily curve in China time (quiet nights, busy mornings and evenings, promotional
   campaigns at 10:00 and 20:00 local time with long messages); some recipients get several
   messages (their replies are ambiguous); one SMS-centre incident in the afternoon (local) fails
   a fifth of the messages with ``MK:0036``/``UNDELIV`` and slows the rest; the usual failure
   codes elsewhere (``receiver.simulate.scenario.FAILURES``, the platform's blacklist codes
   included); replies, unsubscribe replies (``T``, ``退订``, ...), a few re-subscribe replies,
   and support staff adding and lifting numbers by hand. Senders check the blacklist before
   sending, except now and then (the sends after an opt-out the dashboard lists).
3. Every send request registered with ``POST /v1/sent`` (its ``createTime`` in the past day);
   every status report (a form push per part, each with its own ``updateTime``; ``EXPIRED`` ones
   half of the time without, as the platform builds them) and reply (with ``createTime``) pushed
   the way the platform does (``receiver.simulate.push``), a few of them twice. Events due after
   ``--now`` are not pushed: those messages are still pending. Staff's adds and removes go
   through ``PUT``/``DELETE /v1/blacklist/{number}``.
4. What HTTP cannot carry: the receiver stamps each request with its own clock (``received_at``,
   and ``now()`` for staff's actions), and opt-outs are dated by it (``blacklist_signals.at``,
   bucketed by ``dashboard_optouts_hourly``), as are ``EXPIRED`` reports without ``updateTime``.
   A day cannot be replayed in real time in a few minutes, so afterwards each stored report's and
   reply's ``received_at`` is set to when the simulated platform pushed it, staff's signals to
   when they acted, and ``receiver blacklist rebuild`` derives the reply and code signals again
   from those times and folds every number again, exactly as it would after a settings change.
   Everything else (delivery states, latencies, failures, reply links) is what the receiver made
   of the pushes, untouched.
5. ``dashboards.render`` draws ``grafana-receiver.json`` for the 24 hours before ``--now``.

The same seed, ``--messages`` and ``--now`` give the same data, hence the same picture.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from bench.support import ServeProcess, world_readable_tmpdir
from receiver.simulate import push
from receiver.simulate.scenario import FAILURES, FORM, OPTOUT_REPLIES, PREFIXES, REPLIES, Push, form

from . import render

CHANNEL = "csms100000001"
RESUBSCRIBE = ("订阅", "START")  # RECEIVER_RESUBSCRIBE_KEYWORDS of the demo's receiver
LOCAL = timedelta(hours=8)  # China Standard Time: when people send and read
# Messages sent per local hour, relative (0:00 ... 23:00); campaigns add to 10:00 and 20:00.
CURVE = (0.18, 0.1, 0.06, 0.05, 0.05, 0.07, 0.18, 0.45, 0.8, 1.0, 1.0, 0.95,
         0.8, 0.85, 0.95, 1.0, 0.95, 0.9, 0.85, 0.95, 1.0, 0.85, 0.55, 0.3)  # fmt: skip
CAMPAIGN_HOURS = {10: 0.6, 20: 0.8}  # local hour: extra volume of promotional sends
INCIDENT_HOUR = 15  # local: an SMS centre in trouble
BASE_FAILURES = 0.03


@dataclass(frozen=True)
class Timed:
    due: datetime  # when the platform pushes it
    push: Push
    key: tuple[str, ...]  # ("report", smsMsgId, sequence) or ("reply", smsMsgId)


@dataclass(frozen=True)
class Staff:
    at: datetime
    action: str  # add or remove
    number: str
    reason: str


@dataclass
class Day:
    start: datetime  # the first hour with sends
    now: datetime
    registrations: list[dict[str, Any]] = field(default_factory=list)  # POST /v1/sent bodies
    pushes: list[Timed] = field(default_factory=list)  # in the order pushed
    staff: list[Staff] = field(default_factory=list)
    messages: int = 0

    @property
    def reports(self) -> int:
        return len({t.key for t in self.pushes if t.key[0] == "report"})

    @property
    def replies(self) -> int:
        return len({t.key for t in self.pushes if t.key[0] == "reply"})


def plan(seed: int, messages: int, now: datetime) -> Day:
    """The day before ``now``: pure, the same for the same arguments."""
    rng = random.Random(seed)
    now = now.astimezone(UTC).replace(microsecond=0)
    first = now.replace(minute=0, second=0) - timedelta(hours=23)
    day = Day(first, now)
    hours = [first + timedelta(hours=i) for i in range(24)]
    weights = []
    for hour in hours:
        local = (hour + LOCAL).hour
        elapsed = min(1.0, (now - hour).total_seconds() / 3600)
        weights.append((CURVE[local] + CAMPAIGN_HOURS.get(local, 0.0)) * elapsed)
    counts = _apportion(messages, weights)

    numbers = _Numbers(rng)
    events: list[Timed] = []
    optouts: dict[str, datetime] = {}  # number: when it unsubscribed (by reply or a platform code)
    lifted: set[str] = set()  # numbers that re-subscribed by reply
    for hour, count in zip(hours, counts, strict=True):
        local = (hour + LOCAL).hour
        span = min(3600.0, (now - hour).total_seconds())
        left = count
        while left > 0:
            kind = _kind(rng, local)
            size = min(
                left, {"verification": 1, "notification": rng.randint(1, 8)}.get(kind, rng.randint(20, 50))
            )
            left -= size
            created = hour + timedelta(seconds=int(rng.uniform(0, span)))
            extend = (
                f"order-{rng.randint(10_000, 99_999)}"
                if kind == "notification" and rng.random() < 0.5
                else None
            )
            prefix = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            counter = rng.randint(1_000, 9_000_000)
            results = []
            for k in range(size):
                to = numbers.pick(created, optouts)
                total = _parts(rng, kind)
                sms_msg_id = f"{prefix}_{counter + k}"
                results.append({"originTo": to, "createTime": _time(created), "from": CHANNEL, "smsMsgId": sms_msg_id,
                                "status": "000000", "countryId": "CN", "total": total})  # fmt: skip
                delivered = _reports(rng, events, sms_msg_id, to, created, total, extend, local, optouts)
                if delivered is not None:
                    _replies(rng, events, kind, to, delivered, optouts, lifted)
            day.registrations.append(
                {"response": {"code": "000000", "description": "Success", "result": results}, "extend": extend,
                 "message_type": kind}
            )  # fmt: skip
            day.messages += size
    day.registrations.sort(key=lambda r: r["response"]["result"][0]["createTime"])
    events.sort(key=lambda t: t.due)
    day.pushes = [t for t in events if t.due <= now]
    day.staff = _staff(rng, first, now, {n: t for n, t in optouts.items() if n not in lifted}, numbers)
    return day


def _apportion(total: int, weights: list[float]) -> list[int]:
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _kind(rng: random.Random, local: int) -> str:
    promotional = 0.35 if local in CAMPAIGN_HOURS else 0.02
    return rng.choices(("verification", "notification", "promotional"), (0.55, 0.43, promotional))[0]


def _parts(rng: random.Random, kind: str) -> int:
    if kind == "promotional":
        return rng.choice((1, 2, 2, 3, 3, 4))
    if kind == "notification" and rng.random() < 0.12:
        return 2
    return 1


class _Numbers:
    """Recipients: mostly new ones, some who got a message earlier in the day."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: list[str] = []
        self.known: set[str] = set()

    def new(self) -> str:
        while True:
            number = f"+86{self.rng.choice(PREFIXES)}{self.rng.randint(0, 99_999_999):08d}"
            if number not in self.known:
                self.known.add(number)
                return number

    def pick(self, at: datetime, optouts: dict[str, datetime]) -> str:
        if self.seen and self.rng.random() < 0.12:
            number = self.rng.choice(self.seen)
            # senders check the blacklist first; now and then one does not (sends after an opt-out)
            if optouts.get(number, at) >= at or self.rng.random() < 0.05:
                return number
        number = self.new()
        self.seen.append(number)
        return number


def _delay(rng: random.Random, incident: bool) -> float:
    draw = rng.random()
    seconds = (
        rng.uniform(2, 12) if draw < 0.85 else rng.uniform(12, 90) if draw < 0.97 else rng.uniform(90, 900)
    )
    return seconds + (rng.uniform(30, 900) if incident else 0.0)


def _reports(rng, events, sms_msg_id, to, created, total, extend, local, optouts) -> datetime | None:  # type: ignore[no-untyped-def]
    """One status report per part; returns when the message was delivered (None: it was not)."""
    incident = local == INCIDENT_HOUR
    if rng.random() < 0.002:
        return None  # the platform never reports it: pending for ever
    failing = rng.random() < (0.2 if incident else BASE_FAILURES)
    code, source = "DELIVRD", "2"
    if failing:
        weights = [w for _, _, w in FAILURES]
        code, source = rng.choice((("MK:0036", "2"), ("UNDELIV", "2"))) if incident else \
            rng.choices(FAILURES, weights)[0][:2]  # fmt: skip
    part = rng.randint(1, total) if failing else 0
    last = created
    for sequence in range(1, total + 1):
        status, src = (code, source) if sequence == part else ("DELIVRD", "2")
        delay = _delay(rng, incident) if status != "EXPIRED" else rng.uniform(3600, 3 * 3600)
        updated = created + timedelta(seconds=int(delay))
        last = max(last, updated)
        fields = [("sequence", str(sequence)), ("total", str(total))]
        if rng.random() < 0.5:
            fields.append(("orgCode", "000"))
        if not (status == "EXPIRED" and rng.random() < 0.5):  # the platform builds these: no updateTime
            fields.append(("updateTime", _time(updated)))
        fields += [("source", src), ("smsMsgId", sms_msg_id), ("status", status)]
        if extend is not None:
            fields += [("extend", extend), ("to", to)]
        due = updated + timedelta(seconds=rng.uniform(0.3, 4))
        _event(
            rng, events, due, Push("status-report", FORM, form(fields)), ("report", sms_msg_id, str(sequence))
        )
        if status in ("MBBLACK", "SC:0016"):
            optouts.setdefault(to, due)
    return None if failing else last


def _replies(rng, events, kind, to, delivered, optouts, lifted) -> None:  # type: ignore[no-untyped-def]
    text_share, optout_share = {"verification": (0.005, 0.001), "notification": (0.03, 0.006)}.get(
        kind, (0.04, 0.025)
    )
    draw = rng.random()
    if draw >= text_share + optout_share:
        return
    replied = delivered + timedelta(seconds=int(5 + rng.expovariate(1 / 600)))
    optout = draw < optout_share
    _reply(rng, events, to, rng.choice(OPTOUT_REPLIES if optout else REPLIES), replied)
    if optout:
        optouts.setdefault(to, replied)
        if rng.random() < 0.12:  # changed their mind
            again = replied + timedelta(seconds=int(rng.uniform(1200, 4 * 3600)))
            lifted.add(to)
            _reply(rng, events, to, rng.choice(RESUBSCRIBE), again)


def _reply(rng: random.Random, events: list[Timed], number: str, text: str, at: datetime) -> None:
    sms_msg_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    fields = [
        ("from", number),
        ("to", CHANNEL),
        ("body", text),
        ("smsMsgId", sms_msg_id),
        ("createTime", _time(at)),
    ]
    due = at + timedelta(seconds=rng.uniform(0.5, 3))
    _event(rng, events, due, Push("uplink", FORM, form(fields)), ("reply", sms_msg_id))


def _event(rng: random.Random, events: list[Timed], due: datetime, p: Push, key: tuple[str, ...]) -> None:
    events.append(Timed(due, p, key))
    if rng.random() < 0.03:  # the platform does not promise to push only once
        again = Push(p.endpoint, p.content_type, p.body, duplicate=True)
        events.append(Timed(due + timedelta(seconds=rng.uniform(1, 30)), again, key))


def _staff(rng: random.Random, first: datetime, now: datetime, optouts: dict[str, datetime],
           numbers: _Numbers) -> list[Staff]:  # fmt: skip
    """Support staff in office hours (local): numbers blacklisted on request, a few opt-outs lifted."""
    office = [
        first + timedelta(hours=i) for i in range(24) if 9 <= (first + timedelta(hours=i) + LOCAL).hour < 18
    ]
    actions = []
    for _ in range(7):
        at = rng.choice(office) + timedelta(seconds=rng.randint(0, 3599))
        actions.append(Staff(at, "add", numbers.new(), "asked by phone to get no more SMS"))
    for number, since in sorted(optouts.items())[:: max(1, len(optouts) // 3)][:3]:
        later = [h for h in office if h > since + timedelta(minutes=5)]
        if later:
            at = rng.choice(later) + timedelta(seconds=rng.randint(0, 3599))
            actions.append(Staff(at, "remove", number, "asked by phone to get our SMS again"))
    return sorted((a for a in actions if a.at <= now), key=lambda a: a.at)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- running it ------------------------------------------------------------------------------


def fill(url: str, day: Day, log: Any = print) -> None:
    """Push the day through a ``receiver serve`` of ``url``, then date what HTTP could not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    data_dir = Path(tempfile.mkdtemp(prefix="receiver-demo-"))
    extra = {"RECEIVER_RESUBSCRIBE_KEYWORDS": ",".join(RESUBSCRIBE)}
    env.update(
        RECEIVER_DATABASE_URL=url, RECEIVER_DATA_DIR=str(data_dir), RECEIVER_LOG_LEVEL="warning", **extra
    )
    try:
        _cli(env, "migrate")
        token = json.loads(_cli(env, "app", "create", "shop", "--channel", CHANNEL, "--json"))["token"]
        key = json.loads(_cli(env, "apikey", "create", "dashboard-demo", "--json"))["key"]
        with ServeProcess(url, workers=1, extra_env=extra) as server:
            api = push.Api(server.base_url, key)
            started = time.monotonic()
            for body in day.registrations:
                api.call("POST", "/v1/sent", body)
            log(
                f"registered {day.messages} sends ({len(day.registrations)} requests) in {time.monotonic() - started:.0f} s"
            )
            target = push.Target(server.base_url, token)
            result = asyncio.run(push.push_all(target, [t.push for t in day.pushes], rate=0, concurrency=8))
            if result.acknowledged != len(day.pushes):
                raise RuntimeError(f"not every push was acknowledged: {result.summary()}")
            log(
                f"pushed {len(day.pushes)} callbacks ({day.reports} reports, {day.replies} replies) in {result.elapsed:.0f} s"
            )
            _wait_stored(url, day)  # staff lift opt-outs the receiver has stored
            for s in day.staff:
                api.call(
                    "PUT" if s.action == "add" else "DELETE",
                    f"/v1/blacklist/{quote(s.number)}",
                    {"reason": s.reason},
                )
        asyncio.run(_backdate(url, day))
        _cli(env, "blacklist", "rebuild")
        log(
            f"dated {day.reports} reports, {day.replies} replies and {len(day.staff)} staff actions; blacklist rebuilt"
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "receiver", *args], check=False, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"receiver {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _wait_stored(url: str, day: Day, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        reports, replies = asyncio.run(_counts(url))
        if (reports, replies) == (day.reports, day.replies):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"stored {reports}/{day.reports} reports and {replies}/{day.replies} replies")
        time.sleep(0.5)


async def _counts(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM status_reports), (SELECT count(*) FROM uplinks)"
        )
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def _backdate(url: str, day: Day) -> None:
    first: dict[
        tuple[str, ...], datetime
    ] = {}  # a duplicate is stored once: it was received at the first push
    for t in day.pushes:
        first.setdefault(t.key, t.due)
    reports = [(k[1], int(k[2]), at) for k, at in first.items() if k[0] == "report"]
    replies = [(k[1], at) for k, at in first.items() if k[0] == "reply"]
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            changed = await conn.execute(
                """UPDATE status_reports r SET received_at = v.at
                   FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(id, seq, at)
                   WHERE r.sms_msg_id = v.id AND r.sequence = v.seq""",
                *zip(*reports, strict=True),
            )
            _expect(changed, len(reports), "reports")
            changed = await conn.execute(
                """UPDATE uplinks u SET received_at = v.at FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at)
                   WHERE u.sms_msg_id = v.id""",
                *zip(*replies, strict=True),
            )
            _expect(changed, len(replies), "replies")
            if day.staff:
                changed = await conn.execute(
                    """UPDATE blacklist_signals s SET at = v.at
                       FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS v(number, action, at)
                       WHERE s.source = 'manual' AND s.number = v.number AND s.action = v.action""",
                    *zip(*[(s.number, s.action, s.at) for s in day.staff], strict=True),
                )
                _expect(changed, len(day.staff), "staff actions")
    finally:
        await conn.close()


def _expect(status: str, wanted: int, what: str) -> None:
    if int(status.split()[-1]) != wanted:
        raise RuntimeError(f"dated {status.split()[-1]} {what}, expected {wanted}")


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    """``url``, or an embedded PostgreSQL of its own in a temporary folder, removed afterwards."""
    if url:
        yield url
        return
    from receiver.db import embedded

    base = world_readable_tmpdir("receiver-demo-pg-")
    server = embedded.start(base)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--now", help="the end of the day simulated, ISO 8601 (default: now)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--messages", type=int, default=4000, help="messages sent in the day (default 4000)")
    parser.add_argument("--database-url", help="an empty database of yours (default: an embedded PostgreSQL)")
    args = parser.parse_args(argv)
    now = render.parse_time(args.now, datetime.now(UTC)) if args.now else datetime.now(UTC)
    day = plan(args.seed, args.messages, now)
    with database(args.database_url) as url:
        fill(url, day)
        path = render.render(url, args.out, day.now - timedelta(hours=24), day.now)
    print(f"wrote {path} (the 24 hours before {_time(day.now)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
