"""Query API and dashboard latency with millions of stored reports (goal: p99 < 10 ms).

    .venv/bin/python -m bench.query [--reports 10000000] [--requests 2000] [--database-url URL]

Fills a fresh database with sends, reports (two per message on average: long messages and
repeated reports), message states and replies, using the service's own migrations and its own
state refresh, then serves it with ``receiver serve`` and measures, one request at a time over a
keep-alive connection:

- ``GET /v1/messages/{id}`` for random ids,
- ``GET /v1/messages?to=...`` and ``GET /v1/uplinks`` (one page),
- the dashboard views for a 24-hour window, straight in SQL.

Prints a table with p50 / p99 / max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import time

import asyncpg

from receiver import apikeys
from receiver.correlation.store import refresh_states
from receiver.db import migrate

from .support import ServeProcess, start_embedded, world_readable_tmpdir

FILL = """
INSERT INTO applications (name, token_hash) VALUES ('bench', '\\x00') ON CONFLICT DO NOTHING;

INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, country_id, total, raw)
SELECT 'm' || i, '+86131' || lpad((i % 5000000)::text, 8, '0'), 'csms' || (i % 10), 
       CASE WHEN i % 97 = 0 THEN 'E200041' ELSE '000000' END,
       $2::timestamptz + (i::float8 * 2592000 / $1) * interval '1 second', 'CN', 1 + (i % 7 = 0)::int, '{}'
FROM generate_series(1, $1) AS i;
-- the days each recipient was sent to, as registering the sends writes them
INSERT INTO recipient_index ("to", day)
SELECT DISTINCT "to", date_trunc('day', create_time, 'UTC') FROM sent_messages ON CONFLICT DO NOTHING;

INSERT INTO status_reports (application_id, sms_msg_id, status, total, sequence, source, update_time, raw_body,
                            via, received_at, dedupe_key)
SELECT a.id, 'm' || i, s.status, 1 + (i % 7 = 0)::int, s.seq, '2',
       $2::timestamptz + (i::float8 * 2592000 / $1) * interval '1 second' + (5 + i % 50) * interval '1 second',
       'bench', 'form', now(), decode(md5('r' || i || '/' || s.seq || s.status), 'hex')
FROM generate_series(1, $1) AS i
CROSS JOIN LATERAL (VALUES (1, CASE WHEN i % 13 = 0 THEN 'UNDELIV' ELSE 'DELIVRD' END),
                           (2, 'DELIVRD'), (1, 'ACCEPTD')) AS s(seq, status)
CROSS JOIN (SELECT id FROM applications WHERE name = 'bench') AS a
WHERE i % 97 <> 0 AND (s.seq = 1 OR i % 7 = 0) AND (s.status <> 'ACCEPTD' OR i % 7 <> 0);
"""

UPLINKS = """
INSERT INTO uplinks (application_id, sms_msg_id, "from", "to", body, raw_body, received_at, from_e164)
SELECT a.id, 'u' || i, '+86131' || lpad((i * 50 % 5000000)::text, 8, '0'), 'csms' || (i % 10), 'ok', 'bench',
       $2::timestamptz + (i::float8 * 2592000 / $1) * interval '1 second', '+86131' || lpad((i * 50 % 5000000)::text, 8, '0')
FROM generate_series(1, $1) AS i CROSS JOIN (SELECT id FROM applications WHERE name = 'bench') AS a
"""

START = "2026-10-01T00:00:00Z"


async def fill(url: str, messages: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate.apply(conn)
        if await conn.fetchval("SELECT count(*) FROM sent_messages") >= messages:
            print(f"database already holds {messages} messages; reusing it", flush=True)
            return
        t0 = time.perf_counter()
        start = await conn.fetchval("SELECT $1::timestamptz", _time(START))
        for statement in FILL.split(";\n\n"):
            if statement.strip():
                await conn.execute(statement.replace("$1", str(messages)).replace("$2::timestamptz", f"'{START}'::timestamptz"))
        print(f"  sends and reports inserted in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        chunk = 5000
        for first in range(1, messages + 1, chunk):
            ids = [f"m{i}" for i in range(first, min(first + chunk, messages + 1))]
            async with conn.transaction():
                await refresh_states(conn, ids)
        print(f"  message states derived in {time.perf_counter() - t0:.0f} s", flush=True)
        await conn.execute(UPLINKS.replace("$1", str(messages // 50)).replace("$2::timestamptz", f"'{START}'::timestamptz"))
        await conn.execute("VACUUM ANALYZE")
        reports = await conn.fetchval("SELECT count(*) FROM status_reports")
        print(f"  {reports} reports, {messages} messages, start {start:%Y-%m-%d}", flush=True)
    finally:
        await conn.close()


def _time(text: str):  # type: ignore[no-untyped-def]
    from datetime import datetime

    return datetime.fromisoformat(text)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


async def sql_latencies(url: str, rounds: int) -> dict[str, list[float]]:
    views = {
        "dashboard_delivery_hourly (24 h)": "SELECT * FROM dashboard_delivery_hourly WHERE bucket >= $1 AND bucket < $2",
        "dashboard_failures_hourly (24 h)": "SELECT * FROM dashboard_failures_hourly WHERE bucket >= $1 AND bucket < $2",
        "dashboard_replies_hourly (24 h)": "SELECT * FROM dashboard_replies_hourly WHERE bucket >= $1 AND bucket < $2",
    }
    conn = await asyncpg.connect(url)
    results: dict[str, list[float]] = {name: [] for name in views}
    try:
        start = _time(START)
        from datetime import timedelta

        for _ in range(rounds):
            day = start + timedelta(days=random.randrange(29))
            for name, sql in views.items():
                t0 = time.perf_counter()
                await conn.fetch(sql, day, day + timedelta(days=1))
                results[name].append((time.perf_counter() - t0) * 1000)
    finally:
        await conn.close()
    return results


def http_latencies(serve: ServeProcess, key: str, messages: int, requests: int) -> dict[str, list[float]]:
    import httpx2 as httpx

    results: dict[str, list[float]] = {"GET /v1/messages/{id}": [], "GET /v1/messages?to=": [], "GET /v1/uplinks": []}
    with httpx.Client(base_url=serve.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(50):  # warm up connections, caches and the key cache
            client.get(f"/v1/messages/m{random.randint(1, messages)}")
        for _ in range(requests):
            n = random.randint(1, messages)
            for name, path, params in (
                ("GET /v1/messages/{id}", f"/v1/messages/m{n}", None),
                ("GET /v1/messages?to=", "/v1/messages", {"to": f"+86131{n % 5000000:08d}", "limit": "20"}),
                ("GET /v1/uplinks", "/v1/uplinks", {"limit": "100"}),
            ):
                t0 = time.perf_counter()
                response = client.get(path, params=params)
                results[name].append((time.perf_counter() - t0) * 1000)
                if response.status_code not in (200, 404):
                    raise RuntimeError(f"{path}: {response.status_code} {response.text}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=10_000_000, help="about this many reports (default 10M)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint")
    parser.add_argument("--database-url", help="use this database (filled once, reused) instead of a new embedded one")
    parser.add_argument("--keep", action="store_true", help="keep the embedded database's folder")
    args = parser.parse_args()
    messages = max(args.reports // 2, 1)  # the fill makes ~2 reports per message

    base = None
    server = None
    url = args.database_url
    if url is None:
        base = world_readable_tmpdir("receiver-bench-query-")
        server = start_embedded(base)
        url = server.url
    try:
        print(f"filling ~{args.reports} reports ...", flush=True)
        asyncio.run(fill(url, messages))

        async def make_key() -> str:
            conn = await asyncpg.connect(url)
            try:
                return await apikeys.create(conn, "bench")
            finally:
                await conn.close()

        key = asyncio.run(make_key())
        with ServeProcess(url, workers=os.cpu_count() or 1) as serve:
            results = http_latencies(serve, key, messages, args.requests)
        results.update(asyncio.run(sql_latencies(url, max(args.requests // 20, 20))))
        print()
        print(f"| query ({args.reports:,} reports) | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|")
        for name, samples in results.items():
            p50, p99, worst = percentiles(samples)
            print(f"| {name} | {p50:.2f} | {p99:.2f} | {worst:.2f} |")
    finally:
        if server is not None:
            server.stop()
        if base is not None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
