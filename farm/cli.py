"""The ``farm`` command: a small dispatcher over the commands each package registers.

A package adds subcommands through the ``farm.commands`` entry point group (``setup.cfg``), the
way Flask discovers ``flask.commands``: ``farm.commands`` (migrate, keys), ``api.commands``
(api), ``workers.commands`` (worker, scheduler, webhooks) and the client distribution's
``farm_client.cli`` (render, status, logs, cancel, jobs). Each entry point is a
``register(subparsers)`` function whose subcommands set ``func(args) -> int``. So this module
imports neither the adapters nor the client, and a command only loads what it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from farm.config import Settings, load_settings
from farm.errors import FarmError

GROUP = "farm.commands"

Command = Callable[[argparse.Namespace], int]


def with_settings(func: Callable[[Settings, argparse.Namespace], int]) -> Command:
    """A server command: the settings are loaded here, once for the whole process."""

    def run(args: argparse.Namespace) -> int:
        return func(load_settings(), args)

    return run


def multiprocess_dir(kind: str) -> None:
    """Prometheus multiprocess mode must be set up before prometheus_client is imported."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        tempfile.gettempdir(), f"farm-metrics-{kind}-{os.getpid()}"
    )
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="manim render farm")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    if not found:  # an install from before the entry points (or a copy without its metadata)
        parser.error(f"no {GROUP} entry points installed: reinstall the package (make venv)")
    for ep in found:
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FarmError as exc:  # an operator's mistake (unknown user, overdraft): no traceback
        print(f"farm: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
