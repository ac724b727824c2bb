"""structlog set-up (JSON lines, or readable console output in a terminal) and personal-data masking."""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, cast

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
    what gathered every :attr:`interval` seconds; at exit, what is left.

    When the lines go to a file, the kernel is asked to start writing them to the disk every
    :attr:`write_back_bytes` (``sync_file_range``, which does not wait for it). Left to itself
    it writes a file's pages back once they are 30 seconds old, all of them at once: at a
    campaign's rate that is a pile of a hundred megabytes or more of log, and every
    ``fdatasync`` of the journal on the same disk waits behind it."""

    write_back_bytes = 1 << 20

    def __init__(self, fd: int, interval: float = 0.05) -> None:
        self.fd = fd
        self.interval = interval
        self._unwritten = 0  # bytes written to a file since its write-back was last started
        self._to_file: bool | None = None  # the descriptor is a regular file (asked at the first write)
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
            if not data:
                return
            self._unwritten += len(data)
            with contextlib.suppress(OSError):
                while data:
                    data = data[os.write(self.fd, data) :]
            if self._unwritten >= self.write_back_bytes:
                self._unwritten = 0
                if self._to_file is None:
                    self._to_file = _regular_file(self.fd)
                if self._to_file:
                    start_write_back(self.fd)


def _regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the dirty pages, do not wait


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range = _libc_sync_file_range()


def start_write_back(fd: int) -> bool:
    """Have the kernel start writing the file's dirty pages to its disk, without waiting for
    it; False where it cannot be asked (not Linux, not a file)."""
    if _sync_file_range is None:
        return False
    return _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0


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
