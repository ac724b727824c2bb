"""structlog set-up (JSON lines, or readable console output in a terminal) and personal-data masking."""

from __future__ import annotations

import logging
import sys
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
        logger_factory=(
            structlog.PrintLoggerFactory(sys.stderr) if console else structlog.BytesLoggerFactory(sys.stderr.buffer)
        ),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


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


def mask_text(text: str | None) -> str | None:
    """Reply texts are personal data too: keep only their length."""
    if text is None:
        return None
    return f"<{len(text)} chars>"
