"""``farm worker``: a Celery worker for chosen queues, with metrics, JSON logs and a heartbeat.

Logging: ``farm.logs.configure_logging`` sets the root handler before Celery starts, and the
``setup_logging`` receiver below tells Celery to leave it alone, so Celery's own lines ("Task
... received", "... succeeded in", tracebacks) go through the same JSON formatter. While a task
runs, ``task_prerun``/``task_postrun`` bind its job id (first argument) and, for
``render_chunk``, the chunk index (second argument) into the log context.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import threading
from typing import Any

from celery import signals

from farm import logs, metrics
from farm.config import Settings
from farm.presets import QUALITIES
from workers import registry, runtime
from workers.celery_app import app, configure
from workers.routing import ALL_QUEUES, RENDER_QUEUES, TASKS

# Tasks whose second positional argument is a chunk index.
_CHUNK_TASKS = frozenset({TASKS["chunk"]})
# Bound log-context tokens by Celery task id (one prefork child runs one task at a time).
_bound: dict[str, logs.Token[dict[str, Any]]] = {}


def job_fields(task_name: str, args: Any) -> dict[str, Any]:
    """The log fields a task's positional arguments identify: job_id, and chunk for chunks."""
    fields: dict[str, Any] = {}
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], str):
        fields["job_id"] = args[0]
        if task_name in _CHUNK_TASKS and len(args) > 1:
            fields["chunk"] = args[1]
    return fields


class _TaskMessageFields(logging.Filter):
    """Adds job_id/chunk to Celery's "Task ... received" lines, logged by the main process.

    Those lines run outside any task, so nothing is bound; Celery passes the task's name and
    the repr of its arguments as ``extra={"data": ...}``, which is enough to recover the ids.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, dict) and "job_id" not in logs.current_context():
            args = data.get("args")
            if isinstance(args, str):
                try:
                    args = ast.literal_eval(args)
                except (ValueError, SyntaxError):
                    args = None
            fields = job_fields(str(data.get("name") or ""), args)
            if fields:
                record.fields = {**fields, **(getattr(record, "fields", None) or {})}
        return True


def configure_worker_logging(settings: Settings) -> None:
    """JSON (or text) logs on stderr for the worker and its prefork children."""
    logs.configure_logging(settings, "worker")
    logging.captureWarnings(True)  # Celery's start-up warnings come before its own capture
    for handler in logging.getLogger().handlers:
        handler.addFilter(_TaskMessageFields())


def run(settings: Settings, queues: list[str], concurrency: int) -> None:
    unknown = set(queues) - set(ALL_QUEUES)
    if unknown:
        raise SystemExit(f"unknown queues: {', '.join(sorted(unknown))}")
    # The chunk runner patches manim internals: refuse to start on another manim version.
    from workers.jail.jail import sweep_stale
    from workers.jail.program.manim_patch import check_manim_version

    check_manim_version()
    sweep_stale()  # jail directories and cgroups a crashed worker left behind
    configure_worker_logging(settings)
    configure(settings)
    runtime.set_settings(settings)
    import workers.tasks  # noqa: F401  (registers the tasks on the app)
    from workers.steps import cache_environment

    cache_environment()  # before the fork: every child inherits it, no job waits for it

    metrics.prime_labels(QUALITIES, RENDER_QUEUES)
    for queue in queues:
        metrics.WORKER_SLOTS.labels(queue=queue).set(concurrency)
    metrics.start_metrics_server(settings.worker_metrics_port)
    logging.getLogger("farm.worker").info(
        "worker for %s; metrics on :%s/metrics", ",".join(queues), settings.worker_metrics_port
    )
    threading.Thread(
        target=registry.beat_forever, args=(settings, queues, concurrency), daemon=True
    ).start()
    signals.worker_shutdown.connect(lambda **_: registry.forget(settings), weak=False)
    # --quiet drops Celery's startup banner, which is printed, not logged (not JSON).
    quiet = ["--quiet"] if settings.log_format == "json" else []
    app.worker_main(
        [
            *quiet,
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--loglevel",
            settings.log_level.upper(),
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"farm-{'+'.join(q.split('.')[-1] for q in queues)}@%h",
        ]
    )


def _keep_farm_logging(**_: Any) -> None:
    """Having a receiver stops Celery from installing its own text handlers."""
    # Celery only redirects stdout/stderr when it configures logging itself; do it here so a
    # stray print() or an uncaught traceback in a child still comes out as a JSON line.
    app.log.redirect_stdouts("WARNING")  # a name: prefork children re-read it from the env


def _bind_task(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", "") or ""
    fields = {"task": name.rsplit(".", 1)[-1], **job_fields(name, args)}
    if task_id:
        _bound[task_id] = logs.bind(**fields)


def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _bound.pop(task_id or "", None)
    if token is not None:
        with contextlib.suppress(ValueError):  # bound in another context: nothing to undo
            logs.unbind(token)


def _after_fork(**_: Any) -> None:
    # Connections don't survive a fork: build this child's own runtime now, which also starts
    # warming its first jail while the worker waits for work, not when the first chunk arrives.
    runtime.reset_after_fork()
    runtime.get_runtime()


def _process_gone(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


# Connected by call, not as decorators: Celery's connect is untyped.
signals.setup_logging.connect(_keep_farm_logging)
signals.task_prerun.connect(_bind_task)
signals.task_postrun.connect(_unbind_task)
signals.worker_process_init.connect(_after_fork)
signals.worker_process_shutdown.connect(_process_gone)
