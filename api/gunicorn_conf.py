"""gunicorn settings for ``farm api``: JSON logs, gunicorn's own error answers in the API's
JSON error shape, and a dead worker's metric files dropped.

``api.server`` applies every gunicorn setting this module names, and ``logconfig_dict`` built
from the process's settings by ``logging_config``. gunicorn's own lines (boot, worker
exits) go to the root handler; each request gets one access line with method, path, status,
duration and, for ``/api/v2/render/<jobId>...`` paths, the job id.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import gunicorn.util

from farm import metrics
from farm.config import Settings
from farm.logs import TEXT_FORMAT, JsonFormatter

# gunicorn 23+ opens a control socket at ~/.gunicorn/gunicorn.ctl by default; several
# `farm api` processes on one host (tests, local stacks) would fight over it, and we don't
# use gunicornc.
control_socket_disable = True

# The message of an access line (also the whole line in text mode).
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss'

_JOB_PATH = re.compile(r"^/api/v2/render/(?P<job_id>[^/]+)")


def _number(value: Any, kind: type[int] | type[float]) -> int | float | None:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


class AccessJsonFormatter(JsonFormatter):
    """gunicorn access records as JSON, with the request's parts as separate keys."""

    def format(self, record: logging.LogRecord) -> str:
        atoms = record.args if isinstance(record.args, Mapping) else None
        if atoms is not None:
            path = str(atoms.get("U") or "")
            fields: dict[str, Any] = {
                "method": atoms.get("m"),
                "path": path,
                "status": _number(atoms.get("s"), int),
                "bytes": _number(atoms.get("B"), int),
                "duration_s": _number(atoms.get("L"), float),
                "remote": atoms.get("h"),
                "user_agent": atoms.get("a"),
            }
            match = _JOB_PATH.match(path)
            if match:
                fields["job_id"] = match["job_id"]
            record.fields = fields
        return super().format(record)


def logging_config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict for gunicorn's master and workers."""
    level = settings.log_level.upper()
    if settings.log_format == "json":
        formatters: dict[str, Any] = {
            "farm": {"()": JsonFormatter, "process_kind": "api"},
            "access": {"()": AccessJsonFormatter, "process_kind": "api"},
        }
    else:
        formatters = {"farm": {"format": TEXT_FORMAT}, "access": {"format": TEXT_FORMAT}}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "farm",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }


_GUNICORN_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answers (request line or headers too long, malformed requests) in the
    API's one error shape instead of gunicorn's HTML page."""
    body = json.dumps(
        {"error": _GUNICORN_CODES.get(status_int, "http_error"), "message": mesg or reason}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn writes those answers with util.write_error, looked up at each call (gunicorn
# 27: workers/base.py handle_error); it has no setting for their format.
gunicorn.util.write_error = json_error


def child_exit(server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid)
