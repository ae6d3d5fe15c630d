"""Credits: every change is a ledger row, so a key's balance is always the ledger's sum."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from farm.errors import InsufficientCredits
from farm.keys import Conn


def balance(conn: Conn, key_id: str) -> Decimal:
    row = conn.execute(
        "SELECT COALESCE(sum(amount), 0) AS total FROM credit_ledger WHERE key_id = %s", (key_id,)
    ).fetchone()
    return Decimal(row["total"]) if row else Decimal(0)


def _entry(conn: Conn, key_id: str, job_id: str, kind: str, amount: Decimal) -> None:
    conn.execute(
        "INSERT INTO credit_ledger (key_id, job_id, kind, amount) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (key_id, job_id, kind, amount),
    )


def reserve(
    conn: Conn, key_id: str, job_id: str, amount: Decimal, insert_job: Callable[[], Any]
) -> None:
    """Hold ``amount`` for a new job; the caller holds the key's row lock."""
    available = balance(conn, key_id)
    if available < amount:
        raise InsufficientCredits(
            f"this render needs at least {amount} credits; the key has {available}"
        )
    insert_job()
    _entry(conn, key_id, job_id, "reserve", -amount)


def settle(conn: Conn, key_id: str, job_id: str, reserved: Decimal, cost: Decimal) -> bool:
    """Return the reserve and charge the real cost; False (and no charge) if it can't be covered."""
    conn.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (key_id,))
    _entry(conn, key_id, job_id, "refund", reserved)
    if cost > balance(conn, key_id):
        return False
    if cost > 0:
        _entry(conn, key_id, job_id, "settle", -cost)
    return True


def grant(conn: Conn, key_id: str, amount: Decimal) -> None:
    """Add (or, negative, take back) credits; never takes the balance below zero."""
    conn.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (key_id,))
    if amount < 0 and balance(conn, key_id) + amount < 0:
        raise InsufficientCredits(
            f"cannot take {-amount} credits: the key has {balance(conn, key_id)}"
        )
    conn.execute(
        "INSERT INTO credit_ledger (key_id, kind, amount) VALUES (%s, 'grant', %s)",
        (key_id, amount),
    )
