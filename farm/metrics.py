"""Every Prometheus metric the farm exports, plus the exposition helpers.

Conventions (STYLE.md point 12): names are ``farm_<noun>_<unit|total>``, durations are
seconds, and labels are bounded (quality, queue, route template, outcome, kind, ...);
never a job id, an API key or a URL.

Multi-process servers (gunicorn for ``farm api``, Celery prefork for ``farm worker``)
need ``PROMETHEUS_MULTIPROC_DIR`` pointing at an empty writable directory *before*
``prometheus_client`` is first imported, because the library picks its value storage at
import time. The ``farm`` CLI therefore sets/validates the variable and only then imports
this module.

Who exports what:

* API (gunicorn workers, multiprocess): ``HTTP_*``, ``JOBS_SUBMITTED``, ``HTTP_CLIENT_ERRORS``,
  and the job-end metrics of the jobs it ends (cancels, cache hits).
* Workers (Celery prefork, multiprocess): chunk/stitch/job/webhook/credit metrics.
* Scheduler (exactly one process): ``QUEUE_*``, ``REAPER_REQUEUED``, and the job-end metrics of
  the jobs the reaper gives up on. Workers must not set the queue gauges, or every replica would
  report its own copy of the queue state.

The job-end metrics (``JOBS_COMPLETED``, ``JOBS_FAILED``, ``CREDITS_SETTLED``, ``JOB_DURATION``)
are counted by ``farm.endings.job_ended``, which every path that ends a job calls once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
    multiprocess,
    start_http_server,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The WSGI callable type as prometheus_client builds it (environ, start_response) -> body.
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_Metric = Counter | Gauge | Histogram
_GaugeMode = Literal["livesum", "mostrecent"]
_ALL: list[_Metric] = []


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    metric = Counter(name, doc, labels)
    _ALL.append(metric)
    return metric


def _histogram(
    name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
) -> Histogram:
    metric = Histogram(name, doc, labels, buckets=buckets)
    _ALL.append(metric)
    return metric


def _gauge(name: str, doc: str, labels: tuple[str, ...], mode: _GaugeMode) -> Gauge:
    # "livesum" sums the live processes of one server (prefork children, gunicorn workers)
    # and drops a process's share once mark_process_dead() is called for it.
    metric = Gauge(name, doc, labels, multiprocess_mode=mode)
    _ALL.append(metric)
    return metric


# Buckets. A chunk renders in about half a second (low, a few frames) up to the
# 30-minute chunk timeout (fourk); whole jobs add queueing and stitching on top.
HTTP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CHUNK_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800)
STITCH_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
JOB_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)
PLAN_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- API -----------------------------------------------------------------------------
# route is the URL rule template ("/v2/jobs/<job_id>"), or "unmatched" for 404s; never
# the raw path, which would carry job ids.
HTTP_REQUESTS = _counter(
    "farm_http_requests_total", "HTTP requests served.", ("route", "method", "status")
)
HTTP_REQUEST_DURATION = _histogram(
    "farm_http_request_duration_seconds",
    "Time to serve an HTTP request.",
    ("route", "method"),
    HTTP_BUCKETS,
)
JOBS_SUBMITTED = _counter("farm_jobs_submitted_total", "Render jobs accepted.", ("quality",))
HTTP_CLIENT_ERRORS = _counter(
    "farm_http_client_errors_total",
    "4xx responses by machine error code (the 'error' field of the JSON body).",
    ("code",),
)

# --- Workers -------------------------------------------------------------------------
CHUNKS_RENDERED = _counter(
    "farm_chunks_rendered_total", "Chunks rendered successfully.", ("queue",)
)
ANIM_CACHE_PLAYS = _counter(
    "farm_anim_cache_plays_total",
    "Animations looked up in the animation cache at planning, by result (hit or miss).",
    ("result",),
)
ANIM_CACHE_EVICTED = _counter(
    "farm_anim_cache_evicted_total", "Cached animation movies evicted (age or size)."
)
CHUNKS_FAILED = _counter(
    "farm_chunks_failed_total", "Chunk render attempts that failed.", ("queue", "kind")
)
CHUNK_RENDER_SECONDS = _histogram(
    "farm_chunk_render_seconds",
    "Wall time of one successful chunk render.",
    ("quality",),
    CHUNK_BUCKETS,
)
STITCH_SECONDS = _histogram(
    "farm_stitch_seconds", "Wall time to stitch a job's chunks.", ("quality",), STITCH_BUCKETS
)
JOBS_COMPLETED = _counter(
    "farm_jobs_completed_total", "Jobs that reached 'completed'.", ("quality",)
)
# kind: scene_error | timeout | platform_error | canceled | insufficient_credits
JOBS_FAILED = _counter(
    "farm_jobs_failed_total",
    "Jobs that reached a terminal non-success state, by error kind.",
    ("quality", "kind"),
)
JOB_DURATION = _histogram(
    "farm_job_duration_seconds",
    "Time from submission to a terminal state.",
    ("quality",),
    JOB_BUCKETS,
)
FRAMES_RENDERED = _counter(
    "farm_frames_rendered_total", "Frames rendered (rate() gives frames/s).", ("quality",)
)
# task is the short Celery task name ("render_chunk", "stitch_job", "deliver_webhook").
TASK_RETRIES = _counter("farm_task_retries_total", "Celery task retries scheduled.", ("task",))
CHUNKS_IN_FLIGHT = _gauge(
    "farm_chunks_in_flight", "Chunks being rendered right now.", (), "livesum"
)
# Each worker sets its concurrency once per queue it consumes; a pool consuming several
# queues shares its slots, so the dashboard uses max by (instance) for totals.
WORKER_SLOTS = _gauge(
    "farm_worker_slots",
    "Concurrency slots of the worker consuming a queue.",
    ("queue",),
    "livesum",
)
# outcome: success | http_error | timeout | connect_error | refused
WEBHOOK_ATTEMPTS = _counter(
    "farm_webhook_attempts_total", "Webhook delivery attempts by outcome.", ("outcome",)
)
CREDITS_SETTLED = _counter(
    "farm_credits_settled_total", "Credits charged when jobs settle.", ("quality",)
)
PLAN_SECONDS = _histogram(
    "farm_plan_seconds", "Time to plan a job into chunks.", ("quality",), PLAN_BUCKETS
)

# --- Scheduler (single process) ------------------------------------------------------
QUEUE_DEPTH = _gauge(
    "farm_queue_depth",
    "Messages waiting in each Celery queue (Redis LLEN).",
    ("queue",),
    "mostrecent",
)
QUEUE_OLDEST_JOB_AGE = _gauge(
    "farm_queue_oldest_job_age_seconds",
    "Age of the oldest queued job per quality, from the job store (0 when none).",
    ("quality",),
    "mostrecent",
)
QUEUE_CONSUMERS = _gauge(
    "farm_queue_consumers", "Workers heartbeating on each queue.", ("queue",), "mostrecent"
)
REAPER_REQUEUED = _counter(
    "farm_reaper_requeued_total", "Chunks re-queued after their lease expired.", ("kind",)
)

# Fair dispatch (scheduler). owner is bounded: the dispatch_metric_owners busiest owners get
# their own label, every other owner is summed under "other".
OWNER_WAITING = _gauge(
    "farm_owner_waiting_steps",
    "Plan and chunk steps waiting for the dispatcher, per owner (top N, the rest 'other').",
    ("owner",),
    "mostrecent",
)
OWNER_RUNNING = _gauge(
    "farm_owner_running_steps",
    "Plan and chunk steps rendering now, per owner (top N, the rest 'other').",
    ("owner",),
    "mostrecent",
)
OWNER_OLDEST_WAIT = _gauge(
    "farm_owner_oldest_wait_seconds",
    "Age of the owner's oldest job that still has work waiting for dispatch (0 when none).",
    ("owner",),
    "mostrecent",
)
DISPATCHED = _counter(
    "farm_dispatched_total", "Plan and chunk steps published by the dispatcher.", ("kind",)
)
DISPATCH_WAIT = _histogram(
    "farm_dispatch_wait_seconds",
    "Seconds from submit to the dispatch of a job's plan (its wait for a fair share).",
    ("quality",),
    JOB_BUCKETS,
)


def all_metrics() -> tuple[_Metric, ...]:
    """Every metric object defined in this module."""
    return tuple(_ALL)


def _sample_names(metric: _Metric) -> Iterator[str]:
    for family in metric.describe():
        if family.type == "counter":
            yield f"{family.name}_total"
        elif family.type == "histogram":
            yield from (f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count")
        else:
            yield family.name


def exported_metric_names() -> set[str]:
    """Sample names as Prometheus stores them (counter _total, histogram _bucket/_sum/_count)."""
    return {name for metric in _ALL for name in _sample_names(metric)}


def prime_labels(qualities: Iterable[str], queues: Iterable[str]) -> None:
    """Create the zero-valued series for every quality/queue so increase() sees the first event.

    Without this a ratio such as failed/(completed+failed) has no denominator series
    until the first completion, and the first increment of a new series is invisible to
    rate() and increase().
    """
    qualities, queues = tuple(qualities), tuple(queues)
    for quality in qualities:
        JOBS_SUBMITTED.labels(quality=quality)
        JOBS_COMPLETED.labels(quality=quality)
        FRAMES_RENDERED.labels(quality=quality)
        CREDITS_SETTLED.labels(quality=quality)
    for queue in queues:
        CHUNKS_RENDERED.labels(queue=queue)


def _multiprocess_dir(environ: Mapping[str, str] | None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(MULTIPROC_ENV) or None


def _registry(multiprocess_dir: str | None) -> CollectorRegistry:
    if not multiprocess_dir:
        return REGISTRY
    # A fresh registry: the default one would also expose this process's own (empty,
    # per-process) copies, duplicating every family.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return registry


def metrics_app(multiprocess_dir: str | None) -> WSGIApp:
    """WSGI app serving the exposition; sums all processes' files when a dir is given."""
    app: WSGIApp = make_wsgi_app(_registry(multiprocess_dir))
    return app


def render_latest(environ: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """Exposition body and content type, for a framework view (the API's /metrics).

    Aggregates every process when PROMETHEUS_MULTIPROC_DIR is set in ``environ``
    (default ``os.environ``, read per call).
    """
    return generate_latest(_registry(_multiprocess_dir(environ))), CONTENT_TYPE_LATEST


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", environ: Mapping[str, str] | None = None
) -> None:
    """Serve /metrics on a background thread, aggregating processes if PROMETHEUS_MULTIPROC_DIR.

    ``environ`` defaults to ``os.environ``, read at call time (not at import).
    """
    start_http_server(port, addr, registry=_registry(_multiprocess_dir(environ)))


def mark_process_dead(pid: int, environ: Mapping[str, str] | None = None) -> None:
    """Drop a dead child's live gauges (gunicorn child_exit, Celery worker_process_shutdown)."""
    directory = _multiprocess_dir(environ)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
