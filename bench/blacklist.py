"""Blacklist look-ups before sending (goal: p99 under 5 ms).

    .venv/bin/python -m bench.blacklist [--entries 100000] [--requests 2000] [--database-url URL]

Fills a fresh database with ``--entries`` blacklisted numbers through the service's own bulk
path (``receiver blacklist import``'s), serves it with ``receiver serve --workers 1`` and
measures, one request at a time over a keep-alive connection, as a sender would call it:

- ``GET /v1/blacklist/{number}``, 1 in 10 of the numbers blacklisted;
- ``POST /v1/blacklist/check`` with 500 numbers in E.164 (what the send API takes), 1 in 10
  blacklisted, every number one the service has not seen before (no cache helps);
- the same with 500 numbers written without their ``+`` (``8613912345678``, read in the default region);
- both checks again on a second server with ``RECEIVER_BLACKLIST_MIRROR=false``: answered by
  PostgreSQL instead of the worker's copy of the blacklist (``receiver/blacklist/mirror.py``).

Prints p50 / p99 / max in milliseconds, measured at the client (HTTP included), and first the
same for ``GET /healthz``, which touches no database: the floor the machine itself sets.

CPU layout: the server and PostgreSQL run on ``--server-cpus`` (default: the last CPU), the
client on ``--client-cpus`` (default: the same). One request at a time is a chain (client, then
server, then PostgreSQL, and back) that needs one CPU, not several; on a small virtual machine
every hop to another CPU is a cross-CPU wake-up, whose cost the hypervisor decides. ``--no-pinning``
lets the scheduler place everything, and the table says which layout it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import statistics
import time
import urllib.request
from collections.abc import Callable

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from receiver import apikeys
from receiver.blacklist import store
from receiver.config import Settings
from receiver.db import migrate

from .support import ServeProcess, parse_cpus, start_embedded, world_readable_tmpdir

GOAL_MS = 5.0
SPREAD = 10  # every 10th number is blacklisted


def number(i: int) -> str:
    return f"+86139{i:08d}"


async def fill(url: str, entries: int) -> str:
    conn = await asyncpg.connect(url)
    try:
        await migrate.apply(conn)
        key = await apikeys.create(conn, "bench")
        have = await conn.fetchval("SELECT count(*) FROM blacklist")
        if have >= entries:
            print(f"database already holds {have} entries; reusing it", flush=True)
            return key
        t0 = time.perf_counter()
        rows = [(number(i), None, "bench") for i in range(0, SPREAD * entries, SPREAD)]
        async with conn.transaction():
            await store.import_entries(conn, store.Config.of(Settings()), rows, actor="bench")
        print(f"  {entries} entries imported in {time.perf_counter() - t0:.1f} s", flush=True)
        await conn.execute("VACUUM ANALYZE")  # what autovacuum does soon after such a load
        return key
    finally:
        await conn.close()


def measure(conn: http.client.HTTPConnection, requests: int, make: Callable[[], tuple[str, str, bytes | None]],
            key: str, expect: Callable[[int, bytes], bool]) -> list[float]:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    times = []
    for i in range(requests + requests // 10):  # the first tenth warms up
        method, path, body = make()
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if not expect(response.status, payload):
            raise RuntimeError(f"{method} {path}: unexpected answer {response.status} {payload[:200]!r}")
        if i >= requests // 10:
            times.append(elapsed)
    return times


def row(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    verdict = "ok" if p99 < GOAL_MS else "OVER"
    return f"{name:<44} {len(times):>6} {p50:>8.2f} {p99:>8.2f} {ordered[-1]:>8.2f}   {verdict}"


Layout = tuple[set[int], set[int]]  # CPUs of the server and PostgreSQL, of the client


def run(url: str, entries: int, requests: int, layout: Layout | None = None) -> None:
    key = asyncio.run(fill(url, entries))
    rng = random.Random(4)
    space = SPREAD * entries
    fresh = (i for i in rng.sample(range(space * 10), space * 10) if i % SPREAD)  # never blacklisted, never twice
    load = [_load()]

    def one() -> tuple[str, str, bytes | None]:
        return "GET", f"/v1/blacklist/{number(rng.randrange(space))}", None

    def check(plus: bool) -> Callable[[], tuple[str, str, bytes | None]]:
        def make() -> tuple[str, str, bytes | None]:
            picks = [SPREAD * rng.randrange(entries) if n % 10 == 0 else next(fresh) for n in range(500)]
            numbers = [number(i) if plus else number(i)[1:] for i in picks]
            return "POST", "/v1/blacklist/check", json.dumps({"numbers": numbers}).encode()

        return make

    def checked(status: int, body: bytes) -> bool:
        return status == 200 and b"blacklisted" in body

    results = []
    # The same checks twice: answered from the worker's copy (the default), then by PostgreSQL.
    for mirror in ("true", "false"):
        if layout:
            os.sched_setaffinity(0, layout[0])  # inherited by the server started next
        with ServeProcess(url, workers=1, extra_env={"RECEIVER_BLACKLIST_MIRROR": mirror}) as server:
            if layout:
                os.sched_setaffinity(0, layout[1])  # the client's CPUs
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            if mirror == "true":
                results += [
                    ("GET /healthz (the floor: no database)",
                     measure(conn, requests, lambda: ("GET", "/healthz", None), key, lambda s, _: s == 200)),
                    ("GET /v1/blacklist/{n}", measure(conn, requests, one, key, lambda s, _: s in (200, 404))),
                ]  # fmt: skip
            answered = "memory" if mirror == "true" else "PostgreSQL"
            results += [
                (f"POST check, 500 in E.164 ({answered})", measure(conn, requests, check(True), key, checked)),
                (f"POST check, 500 without + ({answered})", measure(conn, requests, check(False), key, checked)),
            ]
            conn.close()
            counts = _answered_by(server.base_url)
            print(f"  RECEIVER_BLACKLIST_MIRROR={mirror}: checks answered by {counts}", flush=True)
    print(f"\n{entries} blacklisted numbers; one request at a time; milliseconds at the client (goal: p99 < 5)")
    print(f"{_where(layout)}; load average before {load[0]}, after {_load()}")
    print(f"{'request':<44} {'n':>6} {'p50':>8} {'p99':>8} {'max':>8}")
    for name, times in results:
        print(row(name, times))


def _answered_by(base_url: str) -> dict[str, int]:
    """What answered the checks, from the service's own metrics (the first few go to PostgreSQL
    while the copy loads)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    return {
        sample.labels["answered_by"]: int(sample.value)
        for family in families
        if family.name == "receiver_blacklist_checks"
        for sample in family.samples
        if sample.name == "receiver_blacklist_checks_total"
    }


def _where(layout: Layout | None) -> str:
    if not layout:
        return f"client, server and PostgreSQL placed by the scheduler on {os.cpu_count()} CPUs"
    server, client = (",".join(map(str, sorted(cpus))) for cpus in layout)
    where = f"all on CPU {server}" if server == client else f"server and PostgreSQL on CPU {server}, client on CPU {client}"
    return f"{where} (of {os.cpu_count()})"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--database-url", help="an empty database of yours (default: an embedded PostgreSQL)")
    last = str(max(os.sched_getaffinity(0)))
    parser.add_argument("--server-cpus", default=last, help=f"CPUs for the server and PostgreSQL (default {last})")
    parser.add_argument("--client-cpus", default=None, help="CPUs for the client (default: the server's)")
    parser.add_argument("--no-pinning", action="store_true", help="let the scheduler place everything")
    args = parser.parse_args()
    layout = None
    if not args.no_pinning:
        server_cpus = parse_cpus(args.server_cpus)
        layout = server_cpus, parse_cpus(args.client_cpus) if args.client_cpus else server_cpus
        os.sched_setaffinity(0, server_cpus)  # inherited by PostgreSQL and the server started next
    if args.database_url:
        run(args.database_url, args.entries, args.requests, layout)
        return
    base = world_readable_tmpdir("receiver-bench-pg-")
    server = start_embedded(base)
    try:
        print(f"embedded PostgreSQL in {base}", flush=True)
        run(server.url, args.entries, args.requests, layout)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
