"""API keys: creation, lookup by bearer token, revocation. Only a SHA-256 of a key is stored.

Every key belongs to a user (``farm.users``): the user owns the jobs and credits, and all of a
user's keys see the same jobs and spend the same balance. The webhook secret is per key.
"""

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
KEY_PATTERN = re.compile(r"farm_live_[0-9a-f]{48}")
# Kodisc's keyPrefix: "the first 16 characters of the API key".
DISPLAY_PREFIX_CHARS = 16
Conn = Connection[dict[str, Any]]


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str
    name: str
    prefix: str
    webhook_url: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: the only time the key and webhook secret are seen in clear."""

    key: str
    webhook_secret: str
    api_key: ApiKey


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_SELECT = """
    SELECT k.id, k.user_id, k.name, k.prefix, k.webhook_url, k.created_at, k.revoked_at
      FROM api_keys k
"""


def _row(row: dict[str, Any]) -> ApiKey:
    return ApiKey(**row)


def create_key(
    conn: Conn,
    name: str,
    credits: Decimal | int = 0,
    webhook_url: str | None = None,
    *,
    user_id: str | None = None,
) -> NewKey:
    """A new key for ``user_id``; without one, a new user of the same name owns it, with
    ``credits`` paid credits granted to that user."""
    # Imported here: users and credits import this module for ``Conn``.
    from farm import credits as ledger
    from farm import users

    key = KEY_PREFIX + secrets.token_hex(24)
    key_id = "key_" + secrets.token_hex(8)
    webhook_secret = "whsec_" + secrets.token_hex(24)
    owner = users.find_user(conn, user_id) if user_id else users.create_user(conn, name)
    conn.execute(
        "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, webhook_url, webhook_secret)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            key_id,
            owner.id,
            name,
            key[:DISPLAY_PREFIX_CHARS],
            hash_key(key),
            webhook_url,
            webhook_secret,
        ),
    )
    if credits:
        ledger.grant(conn, owner.id, Decimal(credits))
    return NewKey(key=key, webhook_secret=webhook_secret, api_key=get_key(conn, key_id))


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
    scheme, _, key = (authorization or "").strip().partition(" ")
    # The auth scheme is case-insensitive (RFC 7235 section 2.1).
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <key>'")
    key = key.strip()
    if not KEY_PATTERN.fullmatch(key):
        raise Unauthorized("malformed API key")
    row = conn.execute(
        _SELECT + " WHERE k.key_hash = %s AND k.revoked_at IS NULL", (hash_key(key),)
    ).fetchone()
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    return _row(row)


def list_keys(conn: Conn, user_id: str | None = None) -> list[ApiKey]:
    rows = conn.execute(
        _SELECT + " WHERE %s::text IS NULL OR k.user_id = %s ORDER BY k.created_at",
        (user_id, user_id),
    ).fetchall()
    return [_row(r) for r in rows]


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
