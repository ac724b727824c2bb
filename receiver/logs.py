"""structlog set-up (JSON lines, or readable console output in a terminal) and personal-data masking."""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Every callback writes a line, so the JSON path is the fast one structlog documents:
    orjson straight to bytes, and a timestamp that formats each second once."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer(serializer=orjson.dumps)
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    # The processor list is changed in place: loggers already cached (module-level loggers used
    # before this call) share it, so a second configure, or structlog.testing.capture_logs(),
    # reaches them too.
    processors: list[structlog.typing.Processor] = structlog.get_config()["processors"]
    processors[:] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_timestamp,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(structlog.PrintLoggerFactory(sys.stderr) if console else _batched_factory),
        cache_logger_on_first_use=True,
    )
    _direct[:] = [processors, renderer if not console else None, numeric <= logging.INFO]
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


class BatchedWriter:
    """Log lines are written in batches, off the event loop: every callback writes one, and a
    ``write`` per line (to a pipe, say) would cost more than the line itself. A thread writes
    what gathered every :attr:`interval` seconds; at exit, what is left."""

    def __init__(self, fd: int, interval: float = 0.05) -> None:
        self.fd = fd
        self.interval = interval
        self._lines: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = False  # this process's thread is started (a forked child starts its own)
        os.register_at_fork(after_in_child=self._forked)

    def msg(self, message: bytes) -> None:
        self._lines.append(message + b"\n")  # deque.append is thread-safe: no lock on this path
        if not self._running:  # the first line of this process
            self._start()

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = log = msg

    def _forked(self) -> None:
        # The parent's thread is not here: its lock may have been held at the fork, and the
        # lines it had not written yet are its own to write.
        self._running = False
        self._thread = None
        self._lock = threading.Lock()
        self._lines = collections.deque()

    def _start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines = self._lines
            batch = [lines.popleft() for _ in range(len(lines))]
            data = b"".join(batch)
            with contextlib.suppress(OSError):
                while data:
                    data = data[os.write(self.fd, data) :]


_stderr_writer = BatchedWriter(2)
_callbacks = structlog.get_logger("receiver.callbacks")
# The configured processor list, its JSON renderer (None: console output), and whether info
# lines are on: what :func:`callback` needs to tell that it may render the line itself.
_direct: list[Any] = [None, None, True]


def callback(fields: dict[str, Any]) -> None:
    """The one ``callback`` line of a callback request. With JSON output it is rendered here,
    in the same shape structlog gives it, without the processor chain: every callback writes
    one. Otherwise (console output, or ``structlog.testing.capture_logs`` in force, which
    replaces the renderer) it goes through structlog like any other line."""
    processors, renderer, enabled = _direct
    if renderer is not None and processors and processors[-1] is renderer:
        if enabled:
            fields["event"], fields["level"] = "callback", "info"
            add_timestamp(None, "info", fields)
            _stderr_writer.msg(orjson.dumps(fields))
        return
    _callbacks.info("callback", **fields)


def _batched_factory(*args: Any) -> BatchedWriter:
    return _stderr_writer


def flush() -> None:
    """Write the log lines gathered so far now (before the process hands its output on)."""
    _stderr_writer.flush()


_second: list[Any] = [None, ""]  # the last whole second seen, and its ISO text


def add_timestamp(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``: UTC, ISO 8601 with milliseconds (``2026-11-22T12:43:08.123Z``), as
    structlog's ``TimeStamper(fmt="iso", utc=True)`` but without a datetime per line."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    event["timestamp"] = f"{_second[1]}.{int((now - second) * 1000):03d}Z"
    return event


def mask_number(number: str | None) -> str | None:
    """``+8615112346789`` -> ``+86151****6789``: enough to tell numbers apart, not to dial one."""
    if not number:
        return number
    if len(number) <= 7:
        return "*" * len(number)
    return number[:-8] + "****" + number[-4:] if len(number) >= 12 else number[:3] + "****" + number[-4:]
