"""The ``receiver`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import pydantic
import structlog

from . import __version__, apikeys, applications, logs, metrics_dir, netaddr, partitions, retention, tls
from .blacklist import csvfile
from .blacklist import store as blacklist_store
from .blacklist.numbers import to_e164
from .blacklist.rules import Diff, Entry
from .config import Settings
from .correlation import links
from .db import embedded, migrate
from .simulate import command as simulate

log = structlog.get_logger("receiver")
T = TypeVar("T")


@contextlib.contextmanager
def database(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """The PostgreSQL URL in use: ``RECEIVER_DATABASE_URL``, or the embedded server, started if needed."""
    if settings.database_url:
        yield settings.database_url
        return
    server = embedded.start(
        settings.data_dir, keep_running=keep_running, shared_buffers=settings.embedded_shared_buffers
    )
    yield server.url


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key in ("host", "port", "workers", "public_url", "trusted_proxies")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=10)


async def _migrate(url: str) -> list[str]:
    conn = await _connect(url)
    try:
        applied = await migrate.apply(conn)
        await partitions.ensure(conn)  # a fresh database takes events at once
        return applied
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
    embedded.stop(settings.data_dir)
    return 0


def _push_keys(values: Sequence[str] | None) -> list[tuple[str, str]]:
    """``AK:SK`` arguments; ``AK:-`` reads the secret from a line of standard input (keeps it out
    of the process list and the shell history)."""
    pairs = []
    for value in values or []:
        if value.endswith(":-"):
            value = value[:-1] + sys.stdin.readline().rstrip("\r\n")
        pairs.append(applications.parse_push_key(value))
    if len(pairs) > applications.MAX_PUSH_KEYS:
        raise ValueError(f"at most {applications.MAX_PUSH_KEYS} push keys (two for a rotation)")
    if len({ak for ak, _ in pairs}) != len(pairs):
        raise ValueError("the access keys must differ")
    return pairs


def _sources(values: Sequence[str] | None, option: str) -> tuple[netaddr.IPNetwork, ...] | None:
    """CIDRs and names (``huawei``) as given; None, after a message, when one is neither."""
    try:
        networks = netaddr.parse_sources(values or ())
    except ValueError as error:
        print(f"{option}: {error}", file=sys.stderr)
        return None
    for name in sorted({v.strip().lower() for v in values or ()} & set(netaddr.NAMED_SOURCES)):
        print(
            f"{option} {name}: {', '.join(netaddr.NAMED_SOURCES[name])} (the ranges Huawei's documentation"
            " gives as examples; ask Huawei for the current list)",
            file=sys.stderr,
        )
    return networks


def _describe_sources(name: str, networks: Sequence[netaddr.IPNetwork]) -> str:
    if not networks:
        return f"{name}: pushes are accepted from any source"
    return f"{name}: pushes are accepted only from {', '.join(n.compressed for n in networks)}"


def cmd_app_create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        push_keys = _push_keys(args.push_key)
    except ValueError as error:
        print(f"--push-key: {error}", file=sys.stderr)
        return 2
    sources = _sources(args.allow_source, "--allow-source")
    if sources is None:
        return 2
    reply_numbers = _reply_numbers(args.reply_number, "--reply-number")
    if reply_numbers is None:
        return 2

    async def create(url: str) -> tuple[applications.Application, str]:
        await _migrate(url)
        conn = await _connect(url)
        try:
            async with conn.transaction():
                app, token = await applications.create(conn, args.name, args.channel or [], sources)
                if push_keys:
                    await applications.set_push_keys(conn, app.name, push_keys)
                if reply_numbers:
                    await applications.change_reply_numbers(conn, app.name, reply_numbers, [], settings.report_window)
                return app, token
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            app, token = asyncio.run(create(url))
        except asyncpg.UniqueViolationError:
            print(f"an application named {args.name!r} exists already", file=sys.stderr)
            return 1
        except applications.ReplyNumberTaken as error:
            print(f"--reply-number: {error}", file=sys.stderr)
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
        if push_keys:
            print(f"  signed pushes required, access key(s): {', '.join(ak for ak, _ in push_keys)}")
        if sources:
            print(f"  pushes accepted only from:  {', '.join(n.compressed for n in sources)}")
        if reply_numbers:
            print(f"  reply numbers:              {', '.join(sorted(set(reply_numbers)))}")
    return 0


def _reply_numbers(values: Sequence[str] | None, option: str) -> list[str] | None:
    """Reply numbers as given; None, after a message, when one is not."""
    try:
        return [applications.parse_reply_number(v) for v in values or ()]
    except ValueError as error:
        print(f"{option}: {error}", file=sys.stderr)
        return None


def cmd_app_reply_numbers(args: argparse.Namespace) -> int:
    """Show, add or remove (``--remove``) an application's reply numbers; link again the replies
    they concern."""
    settings = _settings(args)
    add = _reply_numbers(args.numbers, "reply-numbers")
    remove = _reply_numbers(args.remove, "--remove")
    if add is None or remove is None:
        return 2

    async def work(url: str) -> list[str] | None:
        await _migrate(url)
        conn = await _connect(url)
        try:
            return await applications.change_reply_numbers(conn, args.name, add, remove, settings.report_window)
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            numbers = asyncio.run(work(url))
        except applications.ReplyNumberTaken as error:
            print(f"reply-numbers: {error}", file=sys.stderr)
            return 1
    return _show_list(args.name, numbers, "replies to {} (and longer numbers starting so) are its replies",
                      "no reply numbers")  # fmt: skip


def cmd_relink(args: argparse.Namespace) -> int:
    """Apply the reply-matching rules again to stored replies (all, or those received since)."""
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)

    async def work(url: str) -> tuple[int, int]:
        await _migrate(url)
        conn = await _connect(url)
        try:
            since = await conn.fetchval("SELECT now() - $1::interval", args.since) if args.since else None
            return await links.relink(conn, settings.report_window, since=since)
        finally:
            await conn.close()

    with database(settings) as url:
        examined, changed = asyncio.run(work(url))
    print(f"relinked {examined} repl{'y' if examined == 1 else 'ies'}: {changed} link(s) made or changed")
    return 0


def cmd_app_allow_sources(args: argparse.Namespace) -> int:
    """Show, replace (CIDRs) or remove (``--any``) an application's source allow-list."""
    settings = _settings(args)
    if args.any and args.sources:
        print("give networks or --any, not both", file=sys.stderr)
        return 2
    sources = _sources(args.sources, "allow-sources")
    if sources is None:
        return 2
    change = bool(sources) or args.any

    async def work(url: str) -> list[netaddr.IPNetwork] | None:
        await _migrate(url)
        conn = await _connect(url)
        try:
            if change and not await applications.set_allowed_sources(conn, args.name, sources):
                return None
            stored = await conn.fetchrow("SELECT allowed_sources FROM applications WHERE name = $1", args.name)
            return None if stored is None else list(stored["allowed_sources"])
        finally:
            await conn.close()

    with database(settings) as url:
        networks = asyncio.run(work(url))
    if networks is None:
        print(f"no application named {args.name!r}", file=sys.stderr)
        return 1
    print(_describe_sources(args.name, networks))
    return 0


def cmd_app_push_keys(args: argparse.Namespace) -> int:
    """Show, replace (``--set``, once or twice) or remove (``--clear``) an application's push keys."""
    settings = _settings(args)
    try:
        pairs = _push_keys(args.set)
    except ValueError as error:
        print(f"--set: {error}", file=sys.stderr)
        return 2
    change = bool(pairs) or args.clear

    async def work(url: str) -> list[str] | None:
        await _migrate(url)
        conn = await _connect(url)
        try:
            if change and not await applications.set_push_keys(conn, args.name, pairs):
                return None
            rows = await conn.fetch(
                "SELECT k.access_key FROM applications a LEFT JOIN push_keys k ON k.application_id = a.id"
                " WHERE a.name = $1 ORDER BY k.slot",
                args.name,
            )
            return None if not rows else [r["access_key"] for r in rows if r["access_key"] is not None]
        finally:
            await conn.close()

    with database(settings) as url:
        access_keys = asyncio.run(work(url))
    return _show_list(args.name, access_keys, "pushes must be signed with one of: {}",
                      "no push keys; pushes are not verified")  # fmt: skip


def _show_list(name: str, items: list[str] | None, some: str, none: str) -> int:
    """An application's list as a command changed or read it (None: there is no such application)."""
    if items is None:
        print(f"no application named {name!r}", file=sys.stderr)
        return 1
    print(f"{name}: {some.format(', '.join(items)) if items else none}")
    return 0


def cmd_apikey_create(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def create(url: str) -> str:
        await _migrate(url)
        conn = await _connect(url)
        try:
            return await apikeys.create(conn, args.name, args.application)
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            key = asyncio.run(create(url))
        except apikeys.UnknownApplication:
            print(f"--application: no application named {args.application!r}", file=sys.stderr)
            return 1
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


def _blacklist(
    args: argparse.Namespace, work: Callable[[asyncpg.Connection, blacklist_store.Config], Awaitable[T]]
) -> T:
    """Run ``work(conn, config)`` in one transaction on the migrated database; return its result."""
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)  # log lines to stderr, never into the output

    async def go(url: str) -> T:
        await _migrate(url)
        conn = await _connect(url)
        try:
            async with conn.transaction():
                return await work(conn, blacklist_store.Config.of(settings))
        finally:
            await conn.close()

    with database(settings) as url:
        return asyncio.run(go(url))


def _e164(raw: str) -> str | None:
    number = to_e164(raw, Settings().default_region)
    if number is None:
        print(f"{raw!r} is no phone number", file=sys.stderr)
    return number


def cmd_blacklist_add(args: argparse.Namespace) -> int:
    number = _e164(args.number)
    if number is None:
        return 1

    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> bool:
        return await blacklist_store.add(
            conn, config, number, reason=args.reason, actor=args.by, channel=args.scope_channel
        )

    created = _blacklist(args, work)
    scope = f"channel {args.scope_channel}" if args.scope_channel else "every channel"
    print(f"{number} {'blacklisted' if created else 'was blacklisted by hand already'} ({scope})")
    return 0


def cmd_blacklist_remove(args: argparse.Namespace) -> int:
    number = _e164(args.number)
    if number is None:
        return 1

    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> list[Entry]:
        return await blacklist_store.remove(
            conn, config, number, reason=args.reason, actor=args.by, channel=args.scope_channel
        )

    removed = _blacklist(args, work)
    if not removed:
        print(f"{number} is not blacklisted{' on ' + args.scope_channel if args.scope_channel else ''}", file=sys.stderr)
        return 1
    for entry in removed:
        print(f"removed {entry.number}\t{entry.channel or '*'}\t{entry.source}\t{entry.reason}")
    return 0


def _print_entries(entries: Sequence[Entry]) -> None:
    for e in entries:
        at = e.added_at.isoformat()
        print(f"{e.number}\t{e.channel or '*'}\t{e.source}\t{at}\t{e.added_by or '-'}\t{e.reason}")


def cmd_blacklist_list(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> list[Entry]:
        return await blacklist_store.all_entries(conn)

    _print_entries(_blacklist(args, work))
    return 0


def cmd_blacklist_check(args: argparse.Namespace) -> int:
    parsed = [_e164(raw) for raw in args.numbers]
    numbers = [n for n in parsed if n is not None]
    if len(numbers) < len(parsed):
        return 1

    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> list[list[Entry]]:
        return [await blacklist_store.entries(conn, n, args.channel) for n in numbers]

    for number, entries in zip(numbers, _blacklist(args, work), strict=True):
        if entries:
            _print_entries(entries)
        else:
            print(f"{number}\tnot blacklisted")
    return 0


def cmd_blacklist_import(args: argparse.Namespace) -> int:
    with open(args.file, encoding="utf-8", newline="") as f:
        parsed = csvfile.parse(f.read(), default_reason=args.reason, region=Settings().default_region)
    if parsed.errors:
        for error in parsed.errors:
            print(f"{args.file}: {error}", file=sys.stderr)
        print("nothing imported", file=sys.stderr)
        return 1

    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> int:
        return await blacklist_store.import_entries(conn, config, parsed.rows, actor=args.by)

    new = _blacklist(args, work)
    print(f"imported {len(parsed.rows)} row(s): {new} new entr{'y' if new == 1 else 'ies'}")
    return 0


def cmd_blacklist_export(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> list[Entry]:
        return await blacklist_store.all_entries(conn)

    text = csvfile.export(_blacklist(args, work))
    if args.file and args.file != "-":
        with open(args.file, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_blacklist_rebuild(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, config: blacklist_store.Config) -> tuple[Diff, int]:
        changes = await blacklist_store.rebuild(conn, config)
        return changes, await conn.fetchval("SELECT count(*) FROM blacklist")

    changes, total = _blacklist(args, work)
    added = sum(1 for c in changes.history if c.action == "add")
    removed = sum(1 for c in changes.history if c.action == "remove")
    print(f"rebuilt: {total} entr{'y' if total == 1 else 'ies'}; {added} added, {removed} removed")
    for change in changes.history:
        e = change.entry
        print(f"  {change.action}\t{e.number}\t{e.channel or '*'}\t{e.source}\t{change.reason}")
    return 0


def _duration(text: str) -> timedelta:
    try:
        return retention.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above zero")
    return int(text)


class _SchemaBehind(Exception):
    def __init__(self, versions: list[str]) -> None:
        super().__init__(versions)
        self.versions = versions


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)

    async def work(url: str) -> retention.Result:
        if not args.dry_run:
            await _migrate(url)
        conn = await _connect(url)
        try:
            if args.dry_run and (behind := await migrate.pending(conn)):  # a dry run changes nothing, schema neither
                raise _SchemaBehind(behind)
            return await retention.prune(
                conn, args.older_than, dry_run=args.dry_run, batch_size=args.batch_size, connect=lambda: _connect(url)
            )
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            result = asyncio.run(work(url))
        except retention.Busy:
            print("receiver prune: another prune is running; nothing done", file=sys.stderr)
            return 1
        except _SchemaBehind as behind:
            print(f"receiver prune: the database lacks migrations {', '.join(behind.versions)}; a dry run"
                  " applies none: run `receiver migrate` first", file=sys.stderr)  # fmt: skip
            return 1
    days = f"{len(result.dropped)} day partitions whole"
    if result.dry_run:
        print(f"would delete rows older than {result.cutoff.isoformat()}, {days} (dry run: nothing deleted)")
    else:
        print(f"deleted rows older than {result.cutoff.isoformat()}, {days}")
    for table, n in result.counts.items():
        print(f"{table}\t{n}")
    return 0


def cmd_writer(args: argparse.Namespace) -> int:
    from . import writer_process

    return writer_process.main(supervised=args.supervised, boosted=args.boosted, run=args.run)


def cmd_serve(args: argparse.Namespace) -> int:
    from . import server

    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    try:
        tls_cert, tls_key = _tls_files(args, settings)
    except tls.TLSConfigError as error:
        print(f"TLS: {error}", file=sys.stderr)
        return 2
    stop = _ExitQuietly()
    migrate.available()  # a broken installation stops here, before anything starts (see main)
    with database(settings) as url:
        os.environ["RECEIVER_DATABASE_URL"] = url
        for key in ("host", "port", "workers", "public_url"):
            value = getattr(settings, key)
            if value is not None:
                os.environ[f"RECEIVER_{key.upper()}"] = str(value)
        os.environ["RECEIVER_TRUSTED_PROXIES"] = ",".join(n.compressed for n in settings.trusted_proxies)
        settings = Settings()
        try:
            asyncio.run(_migrate(url))
            asyncio.run(server.announce(settings, tls=tls_cert is not None))
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as error:
            # Callbacks must not wait for the database: serve from the journal and the application
            # snapshot; each worker's writer applies migrations once PostgreSQL answers. (A
            # migrate.BrokenInstallation is no OSError: it goes on to main and stops serve.)
            log.warning("serve.database_unreachable", error=type(error).__name__)
            print("PostgreSQL is unreachable: acknowledging from the journal until it returns", flush=True)
        metrics_dir.prepare(settings.data_dir)  # before the workers start: /metrics adds them up through it
        with stop.installed():
            server.run(settings, tls_cert=tls_cert, tls_key=tls_key)
    return 0


def _tls_files(args: argparse.Namespace, settings: Settings) -> tuple[str | None, str | None]:
    """The certificate and key to serve with (absolute paths), checked before anything starts."""
    key: Path | None
    if args.tls_self_signed:
        public_host = urlsplit(settings.public_url).hostname if settings.public_url else None
        cert, key = tls.self_signed(settings.data_dir / "tls", [settings.host, *([public_host] if public_host else [])])
        print(f"TLS: self-signed certificate {cert} (SHA-256 {tls.fingerprint(cert)})", flush=True)
    elif args.tls_cert:
        cert, key = Path(args.tls_cert), Path(args.tls_key) if args.tls_key else None
    elif args.tls_key:
        raise tls.TLSConfigError("--tls-key needs --tls-cert")
    else:
        return None, None
    tls.server_context(cert, key)
    return str(cert.resolve()), str(key.resolve()) if key else None


def _network(value: str) -> netaddr.IPNetwork:
    try:
        return netaddr.parse_network(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
    parser.add_argument("--version", action="version", version=f"receiver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations, then serve the callbacks")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes (default: the number of cores)")
    serve.add_argument("--public-url", help="base URL the platform reaches us at, for the printed callback URLs")
    tls_source = serve.add_mutually_exclusive_group()
    tls_source.add_argument("--tls-cert", help="PEM certificate chain (SIGHUP reloads it, and the key)")
    tls_source.add_argument(
        "--tls-self-signed", action="store_true", help="serve TLS with a certificate made once in DATA_DIR/tls"
    )
    serve.add_argument("--tls-key", help="PEM private key (default: in the --tls-cert file)")
    serve.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        type=_network,
        metavar="CIDR",
        help="a load balancer or proxy whose X-Forwarded-For is believed (repeatable; replaces "
        "RECEIVER_TRUSTED_PROXIES)",
    )
    serve.set_defaults(handler=cmd_serve)

    commands.add_parser("migrate", help="apply the SQL migrations").set_defaults(handler=cmd_migrate)
    writer = commands.add_parser(
        "writer", help="move the journal into PostgreSQL until SIGTERM (`receiver serve` runs it for you)"
    )
    writer.set_defaults(handler=cmd_writer)
    # `receiver serve` starts its writer with these: exit to be started at another priority; run boosted.
    writer.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    writer.add_argument("--boosted", action="store_true", help=argparse.SUPPRESS)
    writer.add_argument("--run", default=None, help=argparse.SUPPRESS)  # the service's run: the same for each writer

    app = commands.add_parser("app", help="Huawei SMS applications").add_subparsers(dest="app_command", required=True)
    create = app.add_parser("create", help="register an application and print its callback URLs")
    create.add_argument("name")
    create.add_argument("--channel", action="append", help="a channel number of the application (repeatable)")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.add_argument("--public-url", help="base URL for the printed callback URLs")
    create.add_argument("--tls", action="store_true", help="print https URLs")
    create.add_argument(
        "--push-key",
        action="append",
        metavar="AK:SK",
        help="verify the platform's signed pushes (SDK-HMAC-SHA256) with this push AK/SK; twice for a "
        "rotation; AK:- reads SK from standard input",
    )
    create.add_argument(
        "--allow-source",
        action="append",
        metavar="CIDR",
        help="accept pushes only from this network (repeatable); 'huawei': the platform's documented ranges",
    )
    create.add_argument(
        "--reply-number",
        action="append",
        metavar="NUMBER",
        help="a number the application's recipients reply to (the 106... number they see; repeatable); replies"
        " to it, or to it followed by extension digits, are the application's",
    )
    create.set_defaults(handler=cmd_app_create)
    push_keys = app.add_parser("push-keys", help="show or rotate an application's push keys (signed pushes)")
    push_keys.add_argument("name")
    group = push_keys.add_mutually_exclusive_group()
    group.add_argument(
        "--set", action="append", metavar="AK:SK", help="replace the push keys (once or twice); AK:- reads SK from stdin"
    )
    group.add_argument("--clear", action="store_true", help="remove the push keys: pushes are no longer verified")
    push_keys.set_defaults(handler=cmd_app_push_keys)
    allow = app.add_parser("allow-sources", help="show or change the networks an application's pushes may come from")
    allow.add_argument("name")
    allow.add_argument(
        "sources", nargs="*", metavar="CIDR", help="replace the list by these networks ('huawei': the platform's ranges)"
    )
    allow.add_argument("--any", action="store_true", help="remove the list: pushes are accepted from any source")
    allow.set_defaults(handler=cmd_app_allow_sources)
    reply = app.add_parser("reply-numbers", help="show or change the numbers an application's recipients reply to")
    reply.add_argument("name")
    reply.add_argument("numbers", nargs="*", metavar="NUMBER", help="add these reply numbers")
    reply.add_argument("--remove", action="append", metavar="NUMBER", help="remove this reply number (repeatable)")
    reply.set_defaults(handler=cmd_app_reply_numbers)
    app.add_parser("list", help="list the applications").set_defaults(handler=cmd_app_list)

    apikey = commands.add_parser("apikey", help="API keys for the /v1 query API").add_subparsers(
        dest="apikey_command", required=True
    )
    key_create = apikey.add_parser("create", help="issue a new API key")
    key_create.add_argument("name", help="who the key is for")
    key_create.add_argument("--json", action="store_true", help="print one JSON object")
    key_create.add_argument(
        "--application", metavar="APP", help="scope the key to this application: the sends it registers are the app's"
    )
    key_create.set_defaults(handler=cmd_apikey_create)

    blacklist = commands.add_parser("blacklist", help="numbers that must get no more SMS").add_subparsers(
        dest="blacklist_command", required=True
    )
    bl_add = blacklist.add_parser("add", help="blacklist a number by hand")
    bl_add.add_argument("number")
    bl_add.add_argument("--by", required=True, help="who does it, for the history")
    bl_add.add_argument("--reason", required=True, help="why, for the history")
    bl_add.add_argument("--scope-channel", help="only for sends from this channel number (default: every channel)")
    bl_add.set_defaults(handler=cmd_blacklist_add)
    bl_remove = blacklist.add_parser("remove", help="lift every entry of a number")
    bl_remove.add_argument("number")
    bl_remove.add_argument("--by", required=True, help="who does it, for the history")
    bl_remove.add_argument("--reason", required=True, help="why, for the history")
    bl_remove.add_argument("--scope-channel", help="only the entries of this channel number")
    bl_remove.set_defaults(handler=cmd_blacklist_remove)
    blacklist.add_parser("list", help="every entry, tab-separated").set_defaults(handler=cmd_blacklist_list)
    bl_check = blacklist.add_parser("check", help="are these numbers blacklisted?")
    bl_check.add_argument("numbers", nargs="+")
    bl_check.add_argument("--channel", help="for sends from this channel number")
    bl_check.set_defaults(handler=cmd_blacklist_check)
    bl_import = blacklist.add_parser("import", help="blacklist the numbers of a CSV file by hand")
    bl_import.add_argument("file")
    bl_import.add_argument("--by", required=True, help="who does it, for the history")
    bl_import.add_argument("--reason", default="imported", help="for rows without a reason")
    bl_import.set_defaults(handler=cmd_blacklist_import)
    bl_export = blacklist.add_parser("export", help="every entry as CSV, to FILE or standard output")
    bl_export.add_argument("file", nargs="?")
    bl_export.set_defaults(handler=cmd_blacklist_export)
    blacklist.add_parser(
        "rebuild", help="derive the keyword and platform entries again from the stored replies and reports"
    ).set_defaults(handler=cmd_blacklist_rebuild)

    prune = commands.add_parser(
        "prune", help="delete events older than a duration; the blacklist, applications and keys stay"
    )
    prune.add_argument(
        "--older-than", required=True, type=_duration, metavar="DURATION", help="e.g. 180d, 12h or 26w"
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, per table; delete nothing"
    )
    prune.add_argument(
        "--batch-size", type=_positive, default=10_000, metavar="N", help="candidates per transaction (default 10000)"
    )
    prune.set_defaults(handler=cmd_prune)

    relink = commands.add_parser("relink", help="apply the reply-matching rules again to stored replies")
    relink.add_argument(
        "--since", type=_duration, metavar="DURATION", help="only replies received this long ago or later (e.g. 30d)"
    )
    relink.set_defaults(handler=cmd_relink)

    simulate.add_parser(commands)

    db = commands.add_parser("db", help="the database").add_subparsers(dest="db_command", required=True)
    db.add_parser("url", help="print the PostgreSQL URL in use (starts the embedded one)").set_defaults(
        handler=cmd_db_url
    )
    db.add_parser("stop", help="stop the embedded PostgreSQL").set_defaults(handler=cmd_db_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Until a command configures its logging from the settings (some never do), structlog prints
    # to standard output by default: a line logged on the way (new day partitions made by a
    # command that migrates) would land in the command's output, `--json` included.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        return int(args.handler(args))
    except migrate.BrokenInstallation as error:  # one line, never a traceback or a half-started service
        print(f"receiver: {error}", file=sys.stderr)
        return 2
    except pydantic.ValidationError as error:
        if error.title != Settings.__name__:
            raise
        for problem in error.errors():  # a line a setting: which variable, what is wrong, what it was
            name = "RECEIVER_" + "_".join(str(part) for part in problem["loc"][:1]).upper()
            shown = "..." if any(word in name for word in ("URL", "KEY", "SECRET", "TOKEN")) else problem.get("input")
            print(f"receiver: {name}={shown!s}: {problem['msg']}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
