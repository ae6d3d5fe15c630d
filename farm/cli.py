"""The ``farm`` command. Server commands import their adapters (Flask, Celery) lazily, so this
module, like the rest of ``farm``, stays free of them."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from farm import db, keys, users
from farm.config import Settings, load_settings
from farm.errors import FarmError
from farm.jobs import iso


def _multiprocess_dir(kind: str) -> None:
    """Prometheus multiprocess mode must be set up before prometheus_client is imported."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        tempfile.gettempdir(), f"farm-metrics-{kind}-{os.getpid()}"
    )
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    _multiprocess_dir("api")
    bind = args.bind or settings.api_bind
    argv = [
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        str(args.workers),
        "--timeout",
        "60",
        "--config",
        "python:api.gunicorn_conf",
        "--access-logfile",
        "-",
        "api.wsgi:app",
    ]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])
    return 0  # not reached


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    _multiprocess_dir("worker")
    if args.renderer:
        settings = settings.with_(renderer=args.renderer)
    from workers.worker import run

    run(settings, [q.strip() for q in args.queues.split(",") if q.strip()], args.concurrency)
    return 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from farm.logs import configure_logging
    from workers.scheduler import run_forever

    configure_logging(settings, "scheduler")
    run_forever(settings)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if args.create_database:
        db.ensure_database(settings.database_url)
    applied = db.migrate(settings.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    from farm.captions import ensure_empty_captions
    from farm.storage import S3Storage

    storage = S3Storage(settings)
    storage.ensure_bucket()  # results need it; creating it is idempotent
    ensure_empty_captions(storage)
    print(f"bucket: {settings.s3_bucket}")
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    pool = db.open_pool(settings, max_size=1)
    with pool.connection() as conn:
        if args.keys_command == "create":
            user_id = users.find_user(conn, args.user).id if args.user else None
            new = keys.create_key(
                conn, args.name, Decimal(args.credits), args.webhook_url, user_id=user_id
            )
            doc = {
                "key": new.key,
                "webhookSecret": new.webhook_secret,
                **users.key_json(conn, new.api_key),
            }
            if args.json:
                print(json.dumps(doc))
            else:
                print(
                    f"key:            {new.key}\nwebhook secret: {new.webhook_secret}\n"
                    f"key id:         {new.api_key.id}\nuser id:        {new.api_key.user_id}\n"
                    "(shown once: store them now)"
                )
        elif args.keys_command == "list":
            owner = users.find_user(conn, args.user).id if args.user else None
            rows = [users.key_json(conn, k) for k in keys.list_keys(conn, owner)]
            if args.json:
                print(json.dumps(rows))
            else:
                for r in rows:
                    state = "revoked" if r["revokedAt"] else "active"
                    print(
                        f"{r['keyId']}  {r['keyPrefix']}…  {r['name']:<20} {state:<8}"
                        f" user={r['userId']} credits={r['credits']['total']}"
                    )
        elif args.keys_command == "revoke":
            print(json.dumps(users.key_json(conn, keys.revoke_key(conn, args.key))))
        elif args.keys_command == "grant":  # the key's user gets the credits
            key = keys.find_key(conn, args.key)
            users.grant_command(conn, key.user_id, Decimal(args.amount))
            print(json.dumps(users.key_json(conn, keys.get_key(conn, key.id))))
        elif args.keys_command == "rotate-webhook-secret":
            secret = keys.rotate_webhook_secret(conn, args.key)
            print(json.dumps({"webhookSecret": secret}) if args.json else secret)
    pool.close()
    return 0


def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    pool = db.open_pool(settings, max_size=1)
    doc: Any
    with pool.connection() as conn:
        if args.users_command == "create":
            doc = users.create_command(
                conn,
                args.name,
                credits=Decimal(args.credits),
                free_allowance=Decimal(args.free_allowance),
                max_active_jobs=args.max_active_jobs,
            )
        elif args.users_command == "list":
            doc = users.list_command(conn)
        elif args.users_command == "show":
            doc = users.show(conn, args.user)
        elif args.users_command == "grant":
            doc = users.grant_command(conn, args.user, Decimal(args.amount))
        else:  # update
            users.update_user(
                conn,
                args.user,
                name=args.name,
                free_allowance=None
                if args.free_allowance is None
                else Decimal(args.free_allowance),
                max_active_jobs=args.max_active_jobs,
                clear_max_active_jobs=args.default_max_active_jobs,
            )
            doc = users.show(conn, args.user)
    pool.close()
    print(json.dumps(doc))
    return 0


def cmd_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    from farm import jobs, webhooks

    pool = db.open_pool(settings, max_size=1)
    with pool.connection() as conn:
        job = jobs.get_job(conn, args.job)
        if args.webhooks_command == "list":
            rows = webhooks.list_deliveries(conn, job["id"])
            if args.json:
                print(json.dumps([{**r, "created_at": iso(r["created_at"])} for r in rows]))
            for r in [] if args.json else rows:
                print(
                    f"{iso(r['created_at'])}  series {r['series']} try {r['try']}"
                    f"  {r['event']:<9} {r['status_code']:>3}  {r['duration_ms']:>6} ms"
                    f"  {r['url']}  {r['error'] or ''}"
                )
            pool.close()
            return 0
        target = webhooks.target_for(conn, job)
        attempt = webhooks.next_series_attempt(conn, job["id"])
    pool.close()
    if target is None:
        print(
            f"{job['id']} is {job['status']} with no webhook URL: nothing to replay",
            file=sys.stderr,
        )
        return 1
    from workers.celery_app import configure
    from workers.publish import Publisher

    Publisher(configure(settings)).webhook(job["id"], attempt)
    series, _ = webhooks.split_attempt(attempt)
    print(f"queued series {series} (attempt {attempt}) of {target.event} to {target.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="manim render farm")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="serve the HTTP API (gunicorn)")
    p.add_argument("--bind", help="host:port (default FARM_API_BIND)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker for some queues")
    p.add_argument("--queues", required=True, help="comma separated, e.g. render.low,stitch")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--renderer", choices=["cairo", "opengl"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("scheduler", help="reaper and queue metrics (run exactly one)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument(
        "--create-database",
        action="store_true",
        help="create the database first if missing (local stacks)",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("keys", help="manage API keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="a new key, for --user or else for a new user")
    c.add_argument("--name", required=True)
    c.add_argument("--user", help="user id or name owning the key (default: a new user)")
    c.add_argument("--credits", default="0", help="paid credits granted to the key's user")
    c.add_argument("--webhook-url")
    c.add_argument("--json", action="store_true")
    c = ks.add_parser("list")
    c.add_argument("--user", help="only this user's keys")
    c.add_argument("--json", action="store_true")
    for name in ("revoke", "rotate-webhook-secret"):
        c = ks.add_parser(name)
        c.add_argument("key", help="key id or display prefix")
        c.add_argument("--json", action="store_true")
    c = ks.add_parser("grant")
    c.add_argument("key")
    c.add_argument("amount")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("users", help="manage users: they own keys, jobs and credits")
    us = p.add_subparsers(dest="users_command", required=True)
    c = us.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--credits", default="0", help="paid credits to start with")
    c.add_argument("--free-allowance", default="0", help="free credits granted each month")
    c.add_argument("--max-active-jobs", type=int, help="jobs rendering at once (more queue)")
    us.add_parser("list")
    c = us.add_parser("show")
    c.add_argument("user", help="user id or name")
    c = us.add_parser("grant", help="add paid credits (negative: take back, not below zero)")
    c.add_argument("user")
    c.add_argument("amount")
    c = us.add_parser("update")
    c.add_argument("user")
    c.add_argument("--name")
    c.add_argument("--free-allowance")
    c.add_argument("--max-active-jobs", type=int)
    c.add_argument(
        "--default-max-active-jobs",
        action="store_true",
        help="drop the user's own limit: FARM_MAX_ACTIVE_JOBS_PER_USER applies",
    )
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("webhooks", help="inspect and replay a job's webhook deliveries")
    ws = p.add_subparsers(dest="webhooks_command", required=True)
    c = ws.add_parser("list", help="every delivery attempt of a job")
    c.add_argument("job")
    c.add_argument("--json", action="store_true")
    c = ws.add_parser("replay", help="start a new delivery series of the job's terminal event")
    c.add_argument("job")
    p.set_defaults(func=cmd_webhooks)

    from farm import client_cli

    client_cli.add_commands(sub)  # render, status, logs, cancel, jobs: HTTP clients of the API
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    try:
        return int(args.func(settings, args))
    except FarmError as exc:  # an operator's mistake (unknown user, overdraft): no traceback
        print(f"farm: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
