"""``farm api``: gunicorn serving the Flask app, in this process, with the settings it loaded."""

from __future__ import annotations

import argparse
from typing import Any

from farm.cli import multiprocess_dir, with_settings
from farm.config import Settings


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    multiprocess_dir("api")  # before api.server imports prometheus_client
    from api.server import serve

    serve(settings, bind=args.bind or settings.api_bind, workers=args.workers)
    return 0


def register(sub: Any) -> None:
    """The ``farm.commands`` entry point of the API package."""
    p = sub.add_parser("api", help="serve the HTTP API (gunicorn)")
    p.add_argument("--bind", help="host:port (default FARM_API_BIND)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=with_settings(cmd_api))
