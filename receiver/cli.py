"""The ``receiver`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence

import asyncpg

from . import apikeys, applications, logs
from .config import Settings
from .db import embedded, migrate


@contextlib.contextmanager
def database(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """The PostgreSQL URL in use: ``RECEIVER_DATABASE_URL``, or the embedded server, started if needed."""
    if settings.database_url:
        yield settings.database_url
        return
    server = embedded.start(settings.data_dir, keep_running=keep_running)
    yield server.url


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key in ("host", "port", "workers", "public_url")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=10)


async def _migrate(url: str) -> list[str]:
    conn = await _connect(url)
    try:
        return await migrate.apply(conn)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with database(settings) as url:
        applied = asyncio.run(_migrate(url))
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with database(settings, keep_running=True) as url:
        print(url)
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.database_url:
        print("RECEIVER_DATABASE_URL is set: there is no embedded server to stop", file=sys.stderr)
        return 1
    embedded.start(settings.data_dir, keep_running=True).stop()
    return 0


def cmd_app_create(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def create(url: str) -> tuple[applications.Application, str]:
        await _migrate(url)
        conn = await _connect(url)
        try:
            return await applications.create(conn, args.name, args.channel or [])
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            app, token = asyncio.run(create(url))
        except asyncpg.UniqueViolationError:
            print(f"an application named {args.name!r} exists already", file=sys.stderr)
            return 1
    urls = applications.callback_urls(settings.base_url(tls=args.tls), token)
    if args.json:
        print(json.dumps({"name": app.name, "token": token, **urls}))
    else:
        print(f"application {app.name!r} created. Its token is shown only now; keep it secret.")
        print(f"  token:                      {token}")
        print(f"  status report URL:          {urls['status_report_url']}")
        print(f"  batch status report URL:    {urls['batch_status_report_url']}")
        print(f"  uplink SMS URL:             {urls['uplink_url']}")
    return 0


def cmd_apikey_create(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def create(url: str) -> str:
        await _migrate(url)
        conn = await _connect(url)
        try:
            return await apikeys.create(conn, args.name)
        finally:
            await conn.close()

    with database(settings) as url:
        key = asyncio.run(create(url))
    if args.json:
        print(json.dumps({"name": args.name, "key": key}))
    else:
        print(f"API key {args.name!r} (shown only now; send it as `Authorization: Bearer <key>`):")
        print(f"  {key}")
    return 0


def cmd_app_list(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def fetch(url: str) -> list[asyncpg.Record]:
        await _migrate(url)
        conn = await _connect(url)
        try:
            return await conn.fetch("SELECT id, name, channels, created_at FROM applications ORDER BY id")
        finally:
            await conn.close()

    with database(settings) as url:
        rows = asyncio.run(fetch(url))
    for row in rows:
        channels = ",".join(row["channels"]) or "-"
        print(f"{row['id']}\t{row['name']}\t{channels}\t{row['created_at'].isoformat()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import server

    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    stop = _ExitQuietly()
    with database(settings) as url:
        os.environ["RECEIVER_DATABASE_URL"] = url
        for key in ("host", "port", "workers", "public_url"):
            value = getattr(settings, key)
            if value is not None:
                os.environ[f"RECEIVER_{key.upper()}"] = str(value)
        settings = Settings()
        asyncio.run(_migrate(url))
        asyncio.run(server.announce(settings, tls=bool(args.tls_cert)))
        with stop.installed():
            server.run(settings, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return 0


class _ExitQuietly:
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn that into a normal exit."""

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="receiver", description="Durable receiver for Huawei Cloud SMS callbacks")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations, then serve the callbacks")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes (default: the number of cores)")
    serve.add_argument("--public-url", help="base URL the platform reaches us at, for the printed callback URLs")
    serve.add_argument("--tls-cert", help="PEM certificate chain")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.set_defaults(handler=cmd_serve)

    commands.add_parser("migrate", help="apply the SQL migrations").set_defaults(handler=cmd_migrate)

    app = commands.add_parser("app", help="Huawei SMS applications").add_subparsers(dest="app_command", required=True)
    create = app.add_parser("create", help="register an application and print its callback URLs")
    create.add_argument("name")
    create.add_argument("--channel", action="append", help="a channel number of the application (repeatable)")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.add_argument("--public-url", help="base URL for the printed callback URLs")
    create.add_argument("--tls", action="store_true", help="print https URLs")
    create.set_defaults(handler=cmd_app_create)
    app.add_parser("list", help="list the applications").set_defaults(handler=cmd_app_list)

    apikey = commands.add_parser("apikey", help="API keys for the /v1 query API").add_subparsers(
        dest="apikey_command", required=True
    )
    key_create = apikey.add_parser("create", help="issue a new API key")
    key_create.add_argument("name", help="who the key is for")
    key_create.add_argument("--json", action="store_true", help="print one JSON object")
    key_create.set_defaults(handler=cmd_apikey_create)

    db = commands.add_parser("db", help="the database").add_subparsers(dest="db_command", required=True)
    db.add_parser("url", help="print the PostgreSQL URL in use (starts the embedded one)").set_defaults(
        handler=cmd_db_url
    )
    db.add_parser("stop", help="stop the embedded PostgreSQL").set_defaults(handler=cmd_db_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
