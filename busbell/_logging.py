"""structlog set-up: JSON lines when not on a TTY, readable console output on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, TextIO, cast

import structlog

__all__ = ["configure_logging", "get_logger"]


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: IO[str] | None = None
) -> None:
    """Configure structlog (and stdlib logging) for a busbell process.

    Args:
        level: minimum level name (``debug``, ``info``, ``warning``, ``error``).
        json: force JSON (``True``) or console (``False``); by default JSON unless
            ``stream`` is a TTY.
        stream: where logs go (standard error by default).
    """
    out: IO[str] = stream if stream is not None else cast(IO[str], _CurrentStderr())
    if json is None:
        probe = stream if stream is not None else sys.stderr
        json = not (hasattr(probe, "isatty") and probe.isatty())
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream, force=True)


def get_logger(name: str, **bind: Any) -> Any:
    """A lazy structlog logger bound to ``component=name`` (and ``bind``).

    Lazy: a logger made at import time still follows a later :func:`configure_logging`
    and ``structlog.testing.capture_logs()``.
    """
    return structlog.get_logger(component=name, **bind)
