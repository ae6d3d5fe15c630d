"""Credits: every change is a ledger row, so a user's balance is always a sum over the ledger.

Two pools per user, as Kodisc's ``/api/v2/me`` splits them: ``paid`` (operator grants; never
expires) and ``free`` (the user's monthly allowance). A month's free balance is the allowance plus
that month's free ledger rows (negative for spending); spending draws on free credits first.
A job's reserve records which pool (and month) it came from, so its refund goes back there: free
credits reserved in a month that has since ended lapse with that month's allowance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from farm.errors import InsufficientCredits
from farm.keys import Conn

_PERIOD = "(date_trunc('month', now() AT TIME ZONE 'UTC'))::date"


@dataclass(frozen=True)
class Balance:
    paid: Decimal
    free: Decimal

    @property
    def total(self) -> Decimal:
        return self.paid + self.free

    def as_json(self) -> dict[str, float]:
        return {"paid": float(self.paid), "free": float(self.free), "total": float(self.total)}


def balances(conn: Conn, user_id: str) -> Balance:
    row = conn.execute(
        "SELECT"
        " (SELECT COALESCE(sum(amount), 0) FROM credit_ledger"
        "   WHERE user_id = u.id AND pool = 'paid') AS paid,"
        " GREATEST(0, u.free_allowance + (SELECT COALESCE(sum(amount), 0) FROM credit_ledger"
        f"   WHERE user_id = u.id AND pool = 'free' AND period = {_PERIOD})) AS free"
        " FROM users u WHERE u.id = %s",
        (user_id,),
    ).fetchone()
    if row is None:
        return Balance(Decimal(0), Decimal(0))
    return Balance(Decimal(row["paid"]), Decimal(row["free"]))


def balance(conn: Conn, user_id: str) -> Decimal:
    """Paid plus this month's free credits."""
    return balances(conn, user_id).total


def _lock(conn: Conn, user_id: str) -> None:
    conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))


def _draw(
    conn: Conn, user_id: str, key_id: str | None, job_id: str, kind: str, amount: Decimal
) -> None:
    """Take ``amount`` from the free pool first, then the paid one (the caller checked it fits)."""
    free = min(amount, balances(conn, user_id).free)
    if free > 0:
        conn.execute(
            "INSERT INTO credit_ledger (user_id, key_id, job_id, kind, amount, pool, period)"
            f" VALUES (%s, %s, %s, %s, %s, 'free', {_PERIOD}) ON CONFLICT DO NOTHING",
            (user_id, key_id, job_id, kind, -free),
        )
    if amount - free > 0:
        conn.execute(
            "INSERT INTO credit_ledger (user_id, key_id, job_id, kind, amount, pool)"
            " VALUES (%s, %s, %s, %s, %s, 'paid') ON CONFLICT DO NOTHING",
            (user_id, key_id, job_id, kind, -(amount - free)),
        )


def reserve(
    conn: Conn,
    user_id: str,
    key_id: str,
    job_id: str,
    amount: Decimal,
    insert_job: Callable[[], Any],
) -> None:
    """Hold ``amount`` for a new job; the caller holds the user's row lock."""
    available = balance(conn, user_id)
    if available < amount:
        raise InsufficientCredits(
            f"this render needs at least {amount} credits; the account has {available}"
        )
    insert_job()
    _draw(conn, user_id, key_id, job_id, "reserve", amount)


def settle(conn: Conn, user_id: str, job_id: str, cost: Decimal) -> bool:
    """Return the job's reserve and charge the real cost; False (and no charge) if it can't be
    covered."""
    _lock(conn, user_id)
    conn.execute(
        "INSERT INTO credit_ledger (user_id, key_id, job_id, kind, amount, pool, period)"
        " SELECT user_id, key_id, job_id, 'refund', -amount, pool, period FROM credit_ledger"
        " WHERE job_id = %s AND kind = 'reserve' ON CONFLICT DO NOTHING",
        (job_id,),
    )
    if cost > balance(conn, user_id):
        return False
    if cost > 0:
        key = conn.execute("SELECT key_id FROM jobs WHERE id = %s", (job_id,)).fetchone()
        _draw(conn, user_id, key["key_id"] if key else None, job_id, "settle", cost)
    return True


def grant(conn: Conn, user_id: str, amount: Decimal) -> None:
    """Add (or, negative, take back) paid credits; never takes the paid balance below zero."""
    _lock(conn, user_id)
    paid = balances(conn, user_id).paid
    if amount < 0 and paid + amount < 0:
        raise InsufficientCredits(f"cannot take {-amount} credits: the account has {paid} paid")
    conn.execute(
        "INSERT INTO credit_ledger (user_id, kind, amount, pool) VALUES (%s, 'grant', %s, 'paid')",
        (user_id, amount),
    )
