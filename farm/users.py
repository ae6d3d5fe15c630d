"""Users (accounts): they own API keys, jobs and credits, as Kodisc scopes them.

A user's credits are two pools: ``paid`` (granted by an operator, never expires) and ``free``
(an allowance granted afresh each calendar month, UTC; what is left at the month's end lapses).
Spending draws on the free pool first. See ``farm.credits`` for the ledger.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from farm.errors import FarmError, NotFound
from farm.keys import Conn


@dataclass(frozen=True)
class User:
    id: str
    name: str
    free_allowance: Decimal
    max_active_jobs: int | None
    created_at: datetime


def new_user_id() -> str:
    return "usr_" + secrets.token_hex(8)


_COLUMNS = "id, name, free_allowance, max_active_jobs, created_at"


def create_user(
    conn: Conn,
    name: str,
    *,
    free_allowance: Decimal | int = 0,
    max_active_jobs: int | None = None,
    user_id: str | None = None,
) -> User:
    if Decimal(free_allowance) < 0:
        raise FarmError("free allowance: must not be negative")
    if max_active_jobs is not None and max_active_jobs < 1:
        raise FarmError("max active jobs: must be at least 1")
    row = conn.execute(
        f"INSERT INTO users (id, name, free_allowance, max_active_jobs) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (user_id or new_user_id(), name, Decimal(free_allowance), max_active_jobs),
    ).fetchone()
    assert row is not None
    return User(**row)


def get_user(conn: Conn, user_id: str) -> User:
    row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,)).fetchone()
    if row is None:
        raise NotFound(f"no user {user_id!r}")
    return User(**row)


def find_user(conn: Conn, id_or_name: str) -> User:
    """A user by id, or by name when exactly one user has it (operators name users either way)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM users WHERE id = %s OR name = %s", (id_or_name, id_or_name)
    ).fetchall()
    exact = [r for r in rows if r["id"] == id_or_name]
    if exact:
        return User(**exact[0])
    if len(rows) != 1:
        raise NotFound(f"no single user matches {id_or_name!r}")
    return User(**rows[0])


def list_users(conn: Conn) -> list[User]:
    return [User(**r) for r in conn.execute(f"SELECT {_COLUMNS} FROM users ORDER BY created_at")]


def update_user(
    conn: Conn,
    user_id: str,
    *,
    name: str | None = None,
    free_allowance: Decimal | None = None,
    max_active_jobs: int | None = None,
    clear_max_active_jobs: bool = False,
) -> User:
    user = find_user(conn, user_id)
    if free_allowance is not None and free_allowance < 0:
        raise FarmError("free allowance: must not be negative")
    if max_active_jobs is not None and max_active_jobs < 1:
        raise FarmError("max active jobs: must be at least 1")
    limit = None if clear_max_active_jobs else (max_active_jobs or user.max_active_jobs)
    conn.execute(
        "UPDATE users SET name = %s, free_allowance = %s, max_active_jobs = %s WHERE id = %s",
        (
            name or user.name,
            user.free_allowance if free_allowance is None else free_allowance,
            limit,
            user.id,
        ),
    )
    return get_user(conn, user.id)


def active_jobs(conn: Conn, user_id: str) -> dict[str, int]:
    """The user's unfinished jobs: ``rendering`` (started or published) and ``held`` (waiting)."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE held_limit IS NULL) AS rendering,"
        " count(*) FILTER (WHERE held_limit IS NOT NULL) AS held"
        " FROM jobs WHERE user_id = %s AND status IN ('queued', 'running')",
        (user_id,),
    ).fetchone()
    return {"rendering": int(row["rendering"]), "held": int(row["held"])} if row else {}


def user_json(user: User, balance: dict[str, Any]) -> dict[str, Any]:
    """How ``farm users`` prints a user."""
    return {
        "userId": user.id,
        "name": user.name,
        "freeAllowance": float(user.free_allowance),
        "maxActiveJobs": user.max_active_jobs,
        "credits": balance,
        "createdAt": user.created_at.isoformat(),
    }


# --- `farm users` and `farm keys` (the CLI module parses arguments and prints these) --------


def key_json(conn: Conn, key: Any) -> dict[str, Any]:
    """How ``farm keys`` prints a key (``key`` is a ``farm.keys.ApiKey``)."""
    from farm import credits

    return {
        "keyId": key.id,
        "userId": key.user_id,
        "name": key.name,
        "keyPrefix": key.prefix,
        "credits": credits.balances(conn, key.user_id).as_json(),
        "webhookUrl": key.webhook_url,
        "createdAt": key.created_at.isoformat(),
        "revokedAt": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def show(conn: Conn, user_id: str) -> dict[str, Any]:
    """A user with their balance, active jobs and keys."""
    from farm import credits, keys

    user = find_user(conn, user_id)
    doc = user_json(user, credits.balances(conn, user.id).as_json())
    doc["activeJobs"] = active_jobs(conn, user.id)
    doc["keys"] = [key_json(conn, k) for k in keys.list_keys(conn, user.id)]
    return doc


def create_command(
    conn: Conn,
    name: str,
    *,
    credits: Decimal = Decimal(0),
    free_allowance: Decimal = Decimal(0),
    max_active_jobs: int | None = None,
) -> dict[str, Any]:
    from farm import credits as ledger

    user = create_user(conn, name, free_allowance=free_allowance, max_active_jobs=max_active_jobs)
    if credits:
        ledger.grant(conn, user.id, credits)
    return show(conn, user.id)


def grant_command(conn: Conn, user_id: str, amount: Decimal) -> dict[str, Any]:
    from farm import credits as ledger

    user = find_user(conn, user_id)
    ledger.grant(conn, user.id, amount)  # never below zero
    return show(conn, user.id)


def list_command(conn: Conn) -> list[dict[str, Any]]:
    from farm import credits

    return [user_json(u, credits.balances(conn, u.id).as_json()) for u in list_users(conn)]
