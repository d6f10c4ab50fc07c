"""structlog set-up: pretty on a terminal, JSON lines otherwise (for log shippers)."""

from __future__ import annotations

import logging
import sys

import structlog

from consentd.safe_text import escape_controls


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    renderer: structlog.typing.Processor
    pretty = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    escape: list[structlog.typing.Processor] = []
    if pretty:
        renderer = structlog.dev.ConsoleRenderer()
        escape = [_escape_values]  # JSON escapes every control character itself
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def _escape_values(
    logger: object, name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Console logs print strings raw: escape control characters a caller may have sent
    (tracebacks keep their lines). The renderer's own colours come after this."""
    return {
        key: escape_controls(value, keep="\n") if isinstance(value, str) else value
        for key, value in event.items()
    }
