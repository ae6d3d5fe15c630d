"""``farm migrate``, ``farm keys``, ``farm users``: commands needing only the domain."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from farm import db, keys, users
from farm.captions import ensure_empty_captions
from farm.cli import with_settings
from farm.config import Settings
from farm.services import build_services
from farm.storage import S3Storage


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if args.create_database:
        db.ensure_database(settings.database_url)
    applied = db.migrate(settings.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    storage = S3Storage(settings)
    storage.ensure_bucket()  # results need it; creating it is idempotent
    ensure_empty_captions(storage)
    print(f"bucket: {settings.s3_bucket}")
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    services = build_services(settings, pool_size=1)
    with services.pool.connection() as conn:
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
    services.close()
    return 0


def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    services = build_services(settings, pool_size=1)
    doc: Any
    with services.pool.connection() as conn:
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
    services.close()
    print(json.dumps(doc))
    return 0


def register(sub: Any) -> None:
    """The ``farm.commands`` entry point of the domain package."""
    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument(
        "--create-database",
        action="store_true",
        help="create the database first if missing (local stacks)",
    )
    p.set_defaults(func=with_settings(cmd_migrate))

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
    p.set_defaults(func=with_settings(cmd_keys))

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
    p.set_defaults(func=with_settings(cmd_users))
