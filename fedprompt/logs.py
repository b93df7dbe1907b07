"""structlog setup, called only by entry points (never at import time)."""

from __future__ import annotations

import logging
import sys

import structlog

from fedprompt.errors import ConfigError

#: The levels ``configure`` takes (``--log-level``'s choices).
LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info", json_logs: bool = False) -> None:
    """Human-readable key=value logs on stderr by default; JSON lines with ``json_logs``.  An unknown level is
    refused: it used to mean info, so a misspelt ``--log-level`` silently hid the debug lines asked for."""
    if level not in LEVELS:
        raise ConfigError(f"log level {level[:40]!r}: choose {', '.join(LEVELS)}")
    numeric = getattr(logging, level.upper())
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
