"""``farm migrate`` and ``farm keys``: the commands that need only the domain and its stores."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from farm import credits, db, keys
from farm.cli import with_settings
from farm.config import Settings
from farm.jobs import iso
from farm.services import build_services
from farm.storage import S3Storage


def key_json(key: keys.ApiKey) -> dict[str, Any]:
    return {
        "keyId": key.id,
        "name": key.name,
        "keyPrefix": key.prefix,
        "credits": float(key.credits),
        "webhookUrl": key.webhook_url,
        "createdAt": iso(key.created_at),
        "revokedAt": iso(key.revoked_at),
    }


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if args.create_database:
        db.ensure_database(settings.database_url)
    applied = db.migrate(settings.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    S3Storage(settings).ensure_bucket()  # results need it; creating it is idempotent
    print(f"bucket: {settings.s3_bucket}")
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    services = build_services(settings, pool_size=1)
    with services.pool.connection() as conn:
        if args.keys_command == "create":
            new = keys.create_key(conn, args.name, Decimal(args.credits), args.webhook_url)
            doc = {"key": new.key, "webhookSecret": new.webhook_secret, **key_json(new.api_key)}
            if args.json:
                print(json.dumps(doc))
            else:
                print(
                    f"key:            {new.key}\nwebhook secret: {new.webhook_secret}\n"
                    f"key id:         {new.api_key.id}\n(shown once: store them now)"
                )
        elif args.keys_command == "list":
            rows = [key_json(k) for k in keys.list_keys(conn)]
            if args.json:
                print(json.dumps(rows))
            else:
                for r in rows:
                    state = "revoked" if r["revokedAt"] else "active"
                    print(
                        f"{r['keyId']}  {r['keyPrefix']}…  {r['name']:<20} {state:<8}"
                        f" credits={r['credits']}"
                    )
        elif args.keys_command == "revoke":
            print(json.dumps(key_json(keys.revoke_key(conn, args.key))))
        elif args.keys_command == "grant":
            key = keys.find_key(conn, args.key)
            credits.grant(conn, key.id, Decimal(args.amount))  # never below zero
            print(json.dumps(key_json(keys.get_key(conn, key.id))))
        elif args.keys_command == "rotate-webhook-secret":
            secret = keys.rotate_webhook_secret(conn, args.key)
            print(json.dumps({"webhookSecret": secret}) if args.json else secret)
    services.close()
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
    c = ks.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--credits", default="0")
    c.add_argument("--webhook-url")
    c.add_argument("--json", action="store_true")
    c = ks.add_parser("list")
    c.add_argument("--json", action="store_true")
    for name in ("revoke", "rotate-webhook-secret"):
        c = ks.add_parser(name)
        c.add_argument("key", help="key id or display prefix")
        c.add_argument("--json", action="store_true")
    c = ks.add_parser("grant")
    c.add_argument("key")
    c.add_argument("amount")
    p.set_defaults(func=with_settings(cmd_keys))
    # `farm users` registers here too (issue 16's farm/ commands).
