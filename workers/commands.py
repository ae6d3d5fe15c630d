"""``farm worker``, ``farm scheduler`` and ``farm webhooks``: the commands of the Celery side.

Registering them imports nothing heavy; each command imports Celery (and the worker, manim)
only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from farm import jobs, webhooks
from farm.cli import multiprocess_dir, with_settings
from farm.config import Settings
from farm.jobs import iso
from farm.services import build_services


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    multiprocess_dir("worker")  # before the worker imports prometheus_client
    if args.renderer:
        settings = settings.with_(renderer=args.renderer)
    from farm import cpus

    # The rule (farm/cpus.py): one render slot per usable CPU, and the CPUs a slot has to
    # itself as manim's encoders in flight, unless the operator set them.
    concurrency = args.concurrency or cpus.render_slots()
    if settings.max_inflight_encoders <= 0:
        settings = settings.with_(max_inflight_encoders=cpus.inflight_encoders(concurrency))
    from workers.worker import run

    run(settings, [q.strip() for q in args.queues.split(",") if q.strip()], concurrency)
    return 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from farm.logs import configure_logging
    from workers.scheduler import run_forever

    configure_logging(settings, "scheduler")
    run_forever(settings)
    return 0


def _list_deliveries(conn: Any, job: dict[str, Any], as_json: bool) -> None:
    rows = webhooks.list_deliveries(conn, job["id"])
    if as_json:
        print(json.dumps([{**r, "created_at": iso(r["created_at"])} for r in rows]))
        return
    for r in rows:
        print(
            f"{iso(r['created_at'])}  series {r['series']} try {r['try']}"
            f"  {r['event']:<9} {r['status_code']:>3}  {r['duration_ms']:>6} ms"
            f"  {r['url']}  {r['error'] or ''}"
        )


def cmd_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    from workers.celery_app import configure
    from workers.publish import Publisher

    services = build_services(settings, Publisher(configure(settings)), pool_size=1)
    with services.pool.connection() as conn:
        job = jobs.get_job(conn, args.job)
        if args.webhooks_command == "list":
            _list_deliveries(conn, job, args.json)
            services.close()
            return 0
        target = webhooks.target_for(conn, job)
        attempt = webhooks.next_series_attempt(conn, job["id"])
    services.close()
    if target is None:
        print(
            f"{job['id']} is {job['status']} with no webhook URL: nothing to replay",
            file=sys.stderr,
        )
        return 1
    services.publisher.webhook(job["id"], attempt)
    series, _ = webhooks.split_attempt(attempt)
    print(f"queued series {series} (attempt {attempt}) of {target.event} to {target.url}")
    return 0


def register(sub: Any) -> None:
    """The ``farm.commands`` entry point of the workers package."""
    p = sub.add_parser("worker", help="run a Celery worker for some queues")
    p.add_argument("--queues", required=True, help="comma separated, e.g. render.low,stitch")
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="render slots; default: the CPUs this process may use (affinity, cgroup quota)",
    )
    p.add_argument("--renderer", choices=["cairo", "opengl"])
    p.set_defaults(func=with_settings(cmd_worker))

    p = sub.add_parser("scheduler", help="reaper and queue metrics (run exactly one)")
    p.set_defaults(func=with_settings(cmd_scheduler))

    p = sub.add_parser("webhooks", help="inspect and replay a job's webhook deliveries")
    ws = p.add_subparsers(dest="webhooks_command", required=True)
    c = ws.add_parser("list", help="every delivery attempt of a job")
    c.add_argument("job")
    c.add_argument("--json", action="store_true")
    c = ws.add_parser("replay", help="start a new delivery series of the job's terminal event")
    c.add_argument("job")
    p.set_defaults(func=with_settings(cmd_webhooks))
