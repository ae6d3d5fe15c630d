"""The JSON log format and the hooks that put job ids on lines (no services needed)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import pytest

from api.gunicorn_conf import AccessJsonFormatter, logging_config
from farm.config import load_settings
from farm.logs import JsonFormatter, bind, current_context, log_context, unbind
from workers.worker import _bind_task, _TaskMessageFields, _unbind_task, job_fields


@pytest.fixture()
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("worker"))
    handler.addFilter(_TaskMessageFields())
    logger = logging.getLogger("farm.test_logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.handlers.clear()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_the_context(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    with log_context(job_id="job_1", chunk=3):
        logger.info("rendering\nwith a newline %s", "arg", extra={"fields": {"frames": 9}})
    logger.info("after")
    first, second = _lines(stream)
    assert first["msg"] == "rendering\nwith a newline arg"
    assert first["job_id"] == "job_1" and first["chunk"] == 3 and first["frames"] == 9
    assert first["level"] == "info" and first["process"] == "worker" and first["pid"] > 0
    assert first["logger"] == "farm.test_logs" and first["ts"].endswith("+00:00")
    assert "job_id" not in second


def test_exceptions_are_one_field(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed")
    (line,) = _lines(stream)
    assert line["msg"] == "failed" and "ValueError: bad" in line["exc"]


def test_bind_and_unbind_nest() -> None:
    outer = bind(job_id="a")
    inner = bind(chunk=1)
    assert current_context() == {"job_id": "a", "chunk": 1}
    unbind(inner)
    assert current_context() == {"job_id": "a"}
    unbind(outer)
    assert current_context() == {}


def test_job_fields_from_task_arguments() -> None:
    assert job_fields("farm.render_chunk", ("job_1", 4)) == {"job_id": "job_1", "chunk": 4}
    assert job_fields("farm.plan_job", ["job_1"]) == {"job_id": "job_1"}
    # the second argument of a webhook delivery is its attempt, not a chunk
    assert job_fields("farm.deliver_webhook", ("job_1", 2)) == {"job_id": "job_1"}
    assert job_fields("farm.plan_job", ()) == {}
    assert job_fields("other", None) == {}


class _FakeTask:
    name = "farm.render_chunk"


def test_task_signals_bind_the_job_for_the_task(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    _bind_task(task_id="t1", task=_FakeTask(), args=("job_9", 2))
    logger.info("inside")
    _unbind_task(task_id="t1")
    logger.info("outside")
    inside, outside = _lines(stream)
    assert (inside["job_id"], inside["chunk"], inside["task"]) == ("job_9", 2, "render_chunk")
    assert "job_id" not in outside and "task" not in outside


def test_celerys_received_line_gets_the_job_from_its_data(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    # Celery's strategy logs "received" with the args' repr in extra={"data": ...}
    data = {"id": "x", "name": "farm.render_chunk", "args": "('job_5', 1)", "kwargs": "{}"}
    logger.info("Task %(name)s[%(id)s] received", data, extra={"data": data})
    data = {"id": "y", "name": "farm.plan_job", "args": "<unparsable>", "kwargs": "{}"}
    logger.info("Task %(name)s[%(id)s] received", data, extra={"data": data})
    chunk, other = _lines(stream)
    assert chunk["msg"] == "Task farm.render_chunk[x] received"
    assert (chunk["job_id"], chunk["chunk"]) == ("job_5", 1)
    assert "job_id" not in other


def _access_record(path: str, status: str = "200") -> logging.LogRecord:
    atoms = {
        "h": "127.0.0.1",
        "m": "GET",
        "U": path,
        "q": "",
        "s": status,
        "B": 12,
        "L": "0.004200",
        "a": "curl/8",
    }
    return logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss',
        (atoms,),
        None,
    )


def test_gunicorn_access_lines_are_structured() -> None:
    formatter = AccessJsonFormatter("api")
    line = json.loads(formatter.format(_access_record("/api/v2/render/job_7/logs")))
    assert line["msg"] == '127.0.0.1 "GET /api/v2/render/job_7/logs" 200 12 0.004200s'
    assert (line["method"], line["status"], line["bytes"]) == ("GET", 200, 12)
    assert line["duration_s"] == pytest.approx(0.0042) and line["job_id"] == "job_7"
    assert "job_id" not in json.loads(formatter.format(_access_record("/healthz")))


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_gunicorn_logconfig_is_valid(log_format: str) -> None:
    config = logging_config(load_settings({}).with_(log_format=log_format))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        handler = logging.getLogger("gunicorn.access").handlers[0]
        expected = AccessJsonFormatter if log_format == "json" else logging.Formatter
        assert type(handler.formatter) is expected
        assert logging.getLogger("gunicorn.error").propagate
    finally:
        for name in ("gunicorn.access", "gunicorn.error"):
            logging.getLogger(name).handlers.clear()
        root.handlers[:], root.level = saved[0], saved[1]
