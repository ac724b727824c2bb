"""structlog set-up (JSON lines, or readable console output in a terminal) and personal-data masking."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


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
