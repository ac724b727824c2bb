"""The two baselines the receiver is measured against, served exactly as ``receiver serve`` serves.

* ``noop``: reads the body, parses it with :func:`receiver.protocol.parse_status_report_form`,
  answers ``200`` with an empty body. Nothing is stored: the ceiling for "HTTP + parsing".
* ``naive``: the same, then one ``INSERT`` per request through an asyncpg pool (one pool per
  worker) before answering: the obvious way to make a callback durable.

Both run through :func:`receiver.server.run` itself with only the application swapped, so
uvicorn's settings (uvloop, httptools, workers, access log off, TLS) are the receiver's own::

    python -m bench.baselines noop  --port 8101 --workers 1 [--tls-cert F --tls-key F]
    BENCH_NAIVE_DSN=postgresql://... python -m bench.baselines naive --port 8102
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.protocol import ProtocolError, parse_status_report_form

NAIVE_DSN_ENV = "BENCH_NAIVE_DSN"
NAIVE_POOL_SIZE = 16

NAIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_reports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sms_msg_id   text NOT NULL,
    status       text NOT NULL,
    total        smallint,
    sequence     smallint,
    source       text,
    update_time  timestamptz,
    org_code     text,
    raw_body     text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS naive_reports_sms_msg_id ON naive_reports (sms_msg_id);
"""

_INSERT = """
INSERT INTO naive_reports (sms_msg_id, status, total, sequence, source, update_time, org_code, raw_body)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


async def _body(request: Request) -> bytes:
    return await request.body()


async def noop_status_report(request: Request) -> Response:
    body = await _body(request)
    try:
        parse_status_report_form(body)
    except ProtocolError:
        return Response(status_code=400)
    return Response(status_code=200)


async def naive_status_report(request: Request) -> Response:
    body = await _body(request)
    try:
        r = parse_status_report_form(body)
    except ProtocolError:
        return Response(status_code=400)
    pool: asyncpg.Pool = request.app.state.pool
    await pool.execute(
        _INSERT,
        r.sms_msg_id,
        r.status,
        r.total,
        r.sequence,
        r.source,
        r.update_time,
        r.org_code,
        body.decode(),
    )
    return Response(status_code=200)


def _routes(handler: object) -> list[Route]:
    # Same path shape as the receiver's, so the load generator sends identical requests.
    return [Route("/callbacks/{token}/status-report", handler, methods=["POST"])]  # type: ignore[arg-type]


def noop_app() -> Starlette:
    return Starlette(routes=_routes(noop_status_report))


def naive_app() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(os.environ[NAIVE_DSN_ENV], min_size=1, max_size=NAIVE_POOL_SIZE)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    return Starlette(routes=_routes(naive_status_report), lifespan=lifespan)


async def create_naive_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(NAIVE_SCHEMA)
    finally:
        await conn.close()


def main() -> None:
    from receiver import server
    from receiver.config import Settings

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("app", choices=["noop", "naive"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    overrides = {"host": args.host, "port": args.port}
    if args.workers:
        overrides["workers"] = args.workers
    settings = Settings(**overrides)  # type: ignore[arg-type]
    # The receiver's own uvicorn call, with only the application swapped.
    server.APP = f"bench.baselines:{args.app}_app"
    server.run(settings, tls_cert=args.tls_cert, tls_key=args.tls_key)


if __name__ == "__main__":
    main()
