"""The two baselines the receiver is measured against, served as ``receiver serve`` serves.

* ``plain`` ("plain Starlette"): the handler a user of this stack would write,
  ``form = await request.form()`` and ``Response(status_code=200)``. Nothing is stored: the
  ceiling for "HTTP + a form".
* ``naive``: the same, then one ``INSERT`` per request through an asyncpg pool (one pool per
  worker) before answering: the obvious way to make a callback durable. It answers with the
  request's ``X-Request-Id``, as the receiver does, so that the load generator can tell which
  requests were acknowledged (bench/ingest.lua).

Both run under the receiver's own uvicorn settings (uvloop, the receiver's httptools protocol,
the same worker count, access log off, TLS contexts from :mod:`receiver.tls`) on a listening
socket made as ``receiver serve`` makes its own (``TCP_DEFER_ACCEPT``), but without the
writer process that :func:`receiver.server.run` starts beside the workers::

    python -m bench.baselines plain --port 8101 --workers 2 [--tls-cert F --tls-key F]
    BENCH_NAIVE_DSN=postgresql://... python -m bench.baselines naive --port 8102
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

NAIVE_DSN_ENV = "BENCH_NAIVE_DSN"
NAIVE_POOL_SIZE = 16
PATH = "/callbacks/{token}/status-report"  # the receiver's path shape: the load generator sends identical requests

NAIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_reports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sms_msg_id   text,
    status       text,
    total        text,
    sequence     text,
    source       text,
    update_time  text,
    org_code     text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS naive_reports_sms_msg_id ON naive_reports (sms_msg_id);
"""

_INSERT = """
INSERT INTO naive_reports (sms_msg_id, status, total, sequence, source, update_time, org_code)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_FIELDS = ("smsMsgId", "status", "total", "sequence", "source", "updateTime", "orgCode")


async def plain_status_report(request: Request) -> Response:
    form = await request.form()
    del form
    return Response(status_code=200)


async def naive_status_report(request: Request) -> Response:
    form = await request.form()
    pool: asyncpg.Pool = request.app.state.pool
    await pool.execute(_INSERT, *(form.get(name) for name in _FIELDS))
    # As the receiver does: the load generator learns from it which request got this answer.
    return Response(status_code=200, headers={"x-request-id": request.headers.get("x-request-id", "")})


def plain_app() -> Starlette:
    return Starlette(routes=[Route(PATH, plain_status_report, methods=["POST"])])


def naive_app() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(os.environ[NAIVE_DSN_ENV], min_size=1, max_size=NAIVE_POOL_SIZE)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    return Starlette(routes=[Route(PATH, naive_status_report, methods=["POST"])], lifespan=lifespan)


async def create_naive_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(NAIVE_SCHEMA)
    finally:
        await conn.close()


def serve(app: str, *, host: str, port: int, workers: int, tls_cert: str | None, tls_key: str | None) -> None:
    """uvicorn configured as :func:`receiver.server.run` configures it, minus the writer process."""
    import uvicorn

    from receiver import server, uvicorn_adapter
    from receiver.config import Settings

    settings = Settings(host=host, port=port, workers=workers)
    config = server.uvicorn_config(
        settings, f"bench.baselines:{app}_app", tls_cert=tls_cert, tls_key=tls_key, callbacks=False
    )  # no callback lane: uvicorn's protocol from the first byte
    sock = server.listening_socket(config)  # as receiver serve makes it
    if config.workers > 1:
        uvicorn_adapter.Supervisor(config, sockets=[sock]).run()
    else:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baselines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", choices=["plain", "naive"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    serve(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


if __name__ == "__main__":
    main()
