"""Running the service: the callback URLs on start, then uvicorn with its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

import asyncpg
import uvicorn

from . import applications, tls, uvicorn_adapter, writer_process
from .config import Settings

APP = "receiver.http.app:create_app"


async def announce(settings: Settings, *, tls: bool) -> None:
    """Print every application's callback URLs. The first start creates an application named
    ``default``, so a new user has URLs to paste into the Huawei console straight away."""
    base = settings.base_url(tls=tls)
    assert settings.database_url
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        names = [row["name"] for row in await conn.fetch("SELECT name FROM applications ORDER BY id")]
        if not names:
            app, token = await applications.create(conn, "default", [])
            print(f"Created application {app.name!r}. Paste these URLs into the Huawei console", flush=True)
            print("(the token in them is shown only now; `receiver app create NAME` makes more):", flush=True)
            for key, url in applications.callback_urls(base, token).items():
                print(f"  {key:<24} {url}", flush=True)
        else:
            print("Callback URLs (each application's token was shown by `receiver app create`):", flush=True)
            for name in names:
                for key, url in applications.callback_urls(base, f"<token of {name}>").items():
                    print(f"  {name}: {key:<24} {url}", flush=True)
    finally:
        await conn.close()


def uvicorn_config(
    settings: Settings, app: str, *, tls_cert: str | None = None, tls_key: str | None = None, callbacks: bool = True
) -> uvicorn.Config:
    """How the workers are served: uvloop, httptools with deadlines for slow clients, no access
    log, TLS contexts from :mod:`receiver.tls` (the benchmarks serve their baselines the same way,
    without ``callbacks``: the protocol a connection starts with to answer callbacks at once,
    :mod:`receiver.callback_protocol`, which hands every other request to uvicorn's)."""
    config = uvicorn.Config(
        app,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        ws="none",  # no WebSocket routes: an Upgrade is an ordinary request
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_drain_seconds) + 5,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        ssl_context_factory=tls.context_factory if tls_cert else None,
    )
    _raise_open_files_limit()
    return uvicorn_adapter.configure(config, client_timeout=settings.client_timeout_seconds, callbacks=callbacks)


def run(settings: Settings, *, tls_cert: str | None = None, tls_key: str | None = None) -> None:
    """uvicorn's own ``run``, with two changes: TLS contexts come from :mod:`receiver.tls`, and
    SIGHUP reloads the certificate in every worker instead of restarting the workers."""
    config = uvicorn_config(settings, APP, tls_cert=tls_cert, tls_key=tls_key)
    server = uvicorn.Server(config)
    # The workers only acknowledge; the writer, a process of its own, stores.
    os.environ["RECEIVER_WRITER"] = "process"
    writer = writer_process.Supervisor(Settings())
    writer.start()
    try:
        # Listening before the line that says so: a client that connects at once (a script that
        # waits for the line) waits in the backlog until a worker has started, not refused.
        sock = listening_socket(config)
        print(f"Listening on {settings.base_url(tls=tls_cert is not None)}", flush=True)
        if config.workers > 1:
            uvicorn_adapter.Supervisor(config, sockets=[sock]).run()
        else:
            if not tls_cert:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        writer.stop()  # after the workers: it stores what they acknowledged last
    if config.workers == 1 and not server.started:
        sys.exit(uvicorn_adapter.STARTUP_FAILURE)


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The socket the workers accept on: bound, listening, and handing a connection over once its
    first bytes are in (:func:`defer_accept`)."""
    sock = config.bind_socket()
    sock.listen(config.backlog)
    defer_accept(sock)
    return sock


# How long a connection may stay silent before it is accepted all the same (Linux rounds it to
# the handshake's retransmissions: about a second).
DEFER_ACCEPT_SECONDS = 1


def defer_accept(sock: socket.socket) -> bool:
    """Have the kernel hand a TCP connection to a worker once its first bytes are in, not when
    its handshake completes (Linux's ``TCP_DEFER_ACCEPT``). The platform opens a connection for
    each callback and sends the request at once: the worker then accepts and reads it in one
    wake-up instead of two. A connection that sends nothing (a port probe, a load balancer's
    TCP check) costs the workers nothing until it has been silent for about a second; then it
    is accepted as before and meets the client timeout. False where the system has no such
    option, or for a socket that is not TCP (the kernel refuses the option)."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, DEFER_ACCEPT_SECONDS)
    except OSError:
        return False
    return True


def _raise_open_files_limit() -> None:
    """Each connection, stalled ones too, holds a file descriptor until its deadline: let the
    workers (which inherit this limit) have as many as the system allows."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

