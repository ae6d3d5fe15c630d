"""Structured logs: one JSON object a line, carrying the job id and chunk index in context."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from farm.config import Settings

# The default is never mutated: bind() always sets a new dict.
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "farm_log",
    default={},  # noqa: B039
)

Token = contextvars.Token


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every log line inside carries ``fields`` (e.g. job_id, chunk)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def bind(**fields: Any) -> Token[dict[str, Any]]:
    """Add ``fields`` to the context until ``unbind(token)``; for hooks that can't use ``with``

    (Celery's task_prerun/task_postrun signals, a web framework's before/teardown request).
    """
    return _context.set({**_context.get(), **fields})


def unbind(token: Token[dict[str, Any]]) -> None:
    """Undo the ``bind`` that returned ``token``."""
    _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields bound right now (a copy)."""
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, process, msg, the bound context, extras.

    ``extra={"fields": {...}}`` on a logging call adds keys to that one line.
    """

    def __init__(self, process_kind: str = "farm") -> None:
        super().__init__()
        self.process_kind = process_kind

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_kind,
            "pid": record.process,
            "msg": record.getMessage(),
            **_context.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def make_formatter(settings: Settings, process_kind: str) -> logging.Formatter:
    """The formatter ``settings.log_format`` asks for (json or text)."""
    if settings.log_format == "json":
        return JsonFormatter(process_kind)
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings, process_kind: str) -> None:
    """Send every logger's records to stderr through one handler (JSON unless text is asked)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings, process_kind))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
