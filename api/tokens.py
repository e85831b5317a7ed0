"""API bearer tokens: created and revoked from the CLI, verified by the API.

A token reads ``sym_<id>_<secret>``: the id finds its row, and the SHA-256 of the whole token
is compared with the stored one in constant time.  The secret has 256 bits of entropy, so a
plain hash is enough (no password-stretching needed) and verification stays cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

PREFIX = "sym_"
_FORMAT = re.compile(r"^sym_([0-9]{1,18})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    partner = "partner"
    integration = "integration"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's role, for the partner role its partner, and its name."""

    token_id: int
    role: Role
    partner: str | None
    name: str = ""


@dataclass(frozen=True, slots=True)
class CreatedToken:
    id: int
    token: str
    role: Role
    partner: str | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(
    conn: asyncpg.Connection, role: Role | str, partner: str | None = None, name: str = ""
) -> CreatedToken:
    """A new token; ``partner`` is required for the partner role and refused for others."""
    role = Role(role)
    if role is Role.partner:
        if not partner:
            raise ValueError("the partner role needs --partner ID")
        known = await conn.fetchval(
            "SELECT 1 FROM partners WHERE id = $1 AND retired_at IS NULL", partner
        )
        if known is None:
            raise ValueError(f"unknown partner '{partner}' (apply the network file first)")
    elif partner:
        raise ValueError(f"--partner only goes with the partner role, not {role.value}")
    async with conn.transaction():
        token_id: int = await conn.fetchval(
            "INSERT INTO api_tokens (role, partner_id, name, token_hash)"
            " VALUES ($1, $2, $3, '\\x') RETURNING id",
            role.value,
            partner,
            name,
        )
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        await conn.execute(
            "UPDATE api_tokens SET token_hash = $2 WHERE id = $1", token_id, token_hash(token)
        )
    return CreatedToken(token_id, token, role, partner)


async def revoke_token(conn: asyncpg.Connection, token_id: int) -> bool:
    """Revoke; False when there is no such token or it was revoked already."""
    status: str = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id
    )
    return status.endswith(" 1")


def parse_token(token: str) -> int | None:
    """The token's id when it has the right shape, else None."""
    match = _FORMAT.match(token)
    return int(match.group(1)) if match else None


async def verify_token(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> Principal | None:
    token_id = parse_token(token)
    if token_id is None:
        return None
    row = await conn.fetchrow(
        "SELECT role, partner_id, name, token_hash FROM api_tokens"
        " WHERE id = $1 AND revoked_at IS NULL",
        token_id,
    )
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), token_hash(token)):
        return None
    return Principal(token_id, Role(row["role"]), row["partner_id"], row["name"] or "")
