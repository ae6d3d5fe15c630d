"""API keys: creation, lookup by bearer token, revocation. Only a SHA-256 of a key is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection

from farm.errors import NotFound, Unauthorized

KEY_PREFIX = "farm_live_"
KEY_PATTERN = re.compile(r"^farm_live_[0-9a-f]{48}$")
Conn = Connection[dict[str, Any]]


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    webhook_url: str | None
    created_at: datetime
    revoked_at: datetime | None
    credits: Decimal


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: the only time the key and webhook secret are seen in clear."""

    key: str
    webhook_secret: str
    api_key: ApiKey


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_SELECT = """
    SELECT k.id, k.name, k.prefix, k.webhook_url, k.created_at, k.revoked_at,
           COALESCE((SELECT sum(amount) FROM credit_ledger l WHERE l.key_id = k.id), 0) AS credits
      FROM api_keys k
"""


def _row(row: dict[str, Any]) -> ApiKey:
    return ApiKey(**row)


def create_key(
    conn: Conn, name: str, credits: Decimal | int = 0, webhook_url: str | None = None
) -> NewKey:
    key = KEY_PREFIX + secrets.token_hex(24)
    key_id = "key_" + secrets.token_hex(8)
    webhook_secret = "whsec_" + secrets.token_hex(24)
    conn.execute(
        "INSERT INTO api_keys (id, name, prefix, key_hash, webhook_url, webhook_secret)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (key_id, name, key[: len(KEY_PREFIX) + 6], hash_key(key), webhook_url, webhook_secret),
    )
    if credits:
        grant(conn, key_id, Decimal(credits))
    return NewKey(key=key, webhook_secret=webhook_secret, api_key=get_key(conn, key_id))


def grant(conn: Conn, key_id: str, amount: Decimal) -> None:
    conn.execute(
        "INSERT INTO credit_ledger (key_id, kind, amount) VALUES (%s, 'grant', %s)",
        (key_id, amount),
    )


def get_key(conn: Conn, key_id: str) -> ApiKey:
    row = conn.execute(_SELECT + " WHERE k.id = %s", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"no API key {key_id!r}")
    return _row(row)


def find_key(conn: Conn, id_or_prefix: str) -> ApiKey:
    """A key by id or display prefix (operators name keys either way)."""
    rows = conn.execute(
        _SELECT + " WHERE k.id = %s OR k.prefix = %s", (id_or_prefix, id_or_prefix)
    ).fetchall()
    if len(rows) != 1:
        raise NotFound(f"no single API key matches {id_or_prefix!r}")
    return _row(rows[0])


def authenticate(conn: Conn, authorization: str | None) -> ApiKey:
    """The key behind an ``Authorization: Bearer`` header; every failure is the same 401."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <key>'")
    key = authorization[len("Bearer ") :].strip()
    if not KEY_PATTERN.match(key):
        raise Unauthorized("malformed API key")
    row = conn.execute(
        _SELECT + " WHERE k.key_hash = %s AND k.revoked_at IS NULL", (hash_key(key),)
    ).fetchone()
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    return _row(row)


def list_keys(conn: Conn) -> list[ApiKey]:
    return [_row(r) for r in conn.execute(_SELECT + " ORDER BY k.created_at").fetchall()]


def revoke_key(conn: Conn, key_id: str) -> ApiKey:
    key = find_key(conn, key_id)
    conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key.id,))
    return get_key(conn, key.id)


def webhook_secret(conn: Conn, key_id: str) -> str:
    row = conn.execute("SELECT webhook_secret FROM api_keys WHERE id = %s", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"no API key {key_id!r}")
    return str(row["webhook_secret"])


def rotate_webhook_secret(conn: Conn, key_id: str) -> str:
    key = find_key(conn, key_id)
    secret = "whsec_" + secrets.token_hex(24)
    conn.execute("UPDATE api_keys SET webhook_secret = %s WHERE id = %s", (secret, key.id))
    return secret
