"""Helpers shared by test modules (fixtures stay in tests/conftest.py).

Nothing here imports ``tests.conftest`` at import time: conftest imports this package.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from tests.conftest import Process

SLOT_PORT_BASE = 8100


def download(url: str, path: Path) -> Path:
    """Fetch a result URL (a presigned S3 URL) into ``path``."""
    with urllib.request.urlopen(url, timeout=30) as response:
        path.write_bytes(response.read())
    return path


def wait_until_answers(
    url: str, running: Callable[[], bool], what: str, timeout: float = 60
) -> None:
    """Return once ``url`` answers 2xx; fail early if the process (``running``) exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running():
            raise AssertionError(f"{what} exited at start")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:  # not listening yet, or still importing
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} did not answer on {url} within {timeout} s")


def new_database(database_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``database_url``; returns its URL.

    A stack that runs its own scheduler needs its own database: the dispatcher publishes every
    queued step it finds in its database, so two stacks sharing one would take each other's."""
    import psycopg

    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return str(psycopg.conninfo.make_conninfo(database_url, dbname=name))


def drop_database(database_url: str) -> None:
    import psycopg

    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class RecordingPublisher:
    """A publisher that only records what it was asked to send (nothing reaches Redis)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def step(self, *args: Any) -> None:
        self.sent.append(("step", *args))

    def webhook(self, job_id: str, attempt: int, countdown: float = 0) -> None:
        self.sent.append(("webhook", job_id, attempt, countdown))

    @property
    def webhooks(self) -> list[tuple[str, int, float]]:
        """(job id, attempt, countdown) of each webhook sent, in order."""
        return [(s[1], s[2], s[3]) for s in self.sent if s[0] == "webhook"]


# --- a `farm api` subprocess (client and playground tests) ----------------------------------


def api_port(slot: int) -> int:
    return SLOT_PORT_BASE + slot


def start_api(farm_env: dict[str, str], log: Path) -> Process:
    """``farm api`` on the slot's port; returns once /healthz answers."""
    from tests.conftest import SLOT, Process

    port = api_port(SLOT)
    proc = Process(["api", "--bind", f"127.0.0.1:{port}", "--workers", "1"], farm_env, log)
    proc.start()
    try:
        wait_until_answers(
            f"http://127.0.0.1:{port}/healthz",
            lambda: proc.proc is not None and proc.proc.poll() is None,
            f"farm api (see {log})",
            timeout=30,
        )
    except AssertionError:
        proc.stop()
        raise
    return proc


def failing_scene(message: str) -> str:
    """A scene that raises ``ValueError(message)`` as soon as it runs."""
    return (
        "from manim import *\n\n\n"
        "class Broken(Scene):\n"
        "    def construct(self):\n"
        f"        raise ValueError({message!r})\n"
    )


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (cert.pem, key.pem): the tests'
    HTTPS servers (webhook receiver, asset server) present it and the farm trusts it as a CA."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
