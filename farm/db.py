"""PostgreSQL access: the connection pool and the numbered migrations."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from farm.config import Settings

Pool = ConnectionPool[Connection[dict[str, Any]]]


def open_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 8, timeout: float = 30.0
) -> Pool:
    """A pool whose connections return rows as dicts; ``timeout``: how long a caller waits for
    a connection (PostgreSQL down) before ``PoolTimeout``."""
    pool: Pool = ConnectionPool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": False},
        open=False,
        # A connection that died with a PostgreSQL restart is replaced, not handed out.
        check=ConnectionPool.check_connection,
        timeout=timeout,
    )
    pool.open(wait=True, timeout=30)
    return pool


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every shipped migration, in order."""
    found = []
    for entry in resources.files("farm.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text()))
    return sorted(found)


def migrate(database_url: str) -> list[str]:
    """Apply the migrations not yet applied; returns the names applied. Safe to run concurrently."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        # One migrator at a time across the cluster (a Helm hook and a developer, say).
        conn.execute("SELECT pg_advisory_lock(727274)")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " number integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = conn.execute("SELECT number FROM schema_migrations").fetchall()
            done = {r[0] for r in rows}
            for number, name, sql in migrations():
                if number in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (number, name) VALUES (%s, %s)",
                        (number, name),
                    )
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(727274)")
    return applied


def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist (local stack and tests)."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.get("dbname")
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
