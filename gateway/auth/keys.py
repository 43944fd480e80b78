"""Virtual API keys: generation, hashing, and their table.

A key is ``sk-gw-`` followed by 43 URL-safe characters (256 random bits). Only its SHA-256 is stored (a
slow password hash adds nothing for a key of that entropy), plus its first characters for display; the
secret is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from gateway.accounting.db import Database
from gateway.accounting.queries import money, totals
from gateway.accounting.schema import api_keys

KEY_PREFIX = "sk-gw-"
_DISPLAY_CHARS = 10
#: The largest ``rpm`` or ``tpm`` a key may have (PostgreSQL's INTEGER).
MAX_LIMIT = 2**31 - 1
#: The longest ``name`` or ``team`` a key may have.
MAX_NAME_CHARS = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidKeyField(ValueError):
    """A field of a new key that is refused; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _checked_text(param: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidKeyField(param, f"'{param}' must be a string.")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidKeyField(param, f"'{param}' must be at most {MAX_NAME_CHARS} characters.")
    if _CONTROL.search(value):
        raise InvalidKeyField(param, f"'{param}' must not contain control characters.")
    return value


def checked_key_fields(name: object, team: object, rpm: object, tpm: object) -> tuple[str, str | None]:
    """A new key's ``name`` (stripped) and ``team`` (None for none or empty), with ``rpm`` and ``tpm`` checked: one
    check for the admin API and ``gateway keys create``. Nothing is cut short: a team is a tenant (its keys share
    spend, feedback and cached answers), so two teams cut to the same 128 characters would be one.

    Raises:
        InvalidKeyField: a field that is refused (blank name, a name or team that is not a string, is too long or
            holds a control character, a limit that is not an integer from 1 to :data:`MAX_LIMIT`).
    """
    name = _checked_text("name", name).strip()
    if not name:
        raise InvalidKeyField("name", "'name' is required.")
    if team is not None:
        team = _checked_text("team", team) or None
    for param, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT):
            raise InvalidKeyField(param, f"'{param}' must be an integer from 1 to {MAX_LIMIT}.")
    return name, team


def generate_key() -> str:
    """A new secret key (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One virtual key as stored (never its secret)."""

    id: str
    name: str
    team: str | None
    key_prefix: str
    budget_usd: Decimal | None
    rpm: int | None
    tpm: int | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (money as a decimal string)."""
        return {
            "id": self.id,
            "name": self.name,
            "team": self.team,
            "key_prefix": self.key_prefix,
            "budget_usd": None if self.budget_usd is None else money(self.budget_usd),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created_at": self.created_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; they were stored in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: Any) -> KeyRecord:
    created = _aware(row.created_at)
    assert created is not None
    return KeyRecord(
        id=row.id,
        name=row.name,
        team=row.team,
        key_prefix=row.key_prefix,
        budget_usd=row.budget_usd,
        rpm=row.rpm,
        tpm=row.tpm,
        created_at=created,
        revoked_at=_aware(row.revoked_at),
    )


class KeyStore:
    """The ``gw_api_keys`` table. Every method may raise SQLAlchemyError or OSError."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        name: str,
        *,
        team: str | None = None,
        budget_usd: Decimal | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and its secret (shown once, never stored).

        Raises:
            InvalidKeyField: see :func:`checked_key_fields`.
        """
        name, team = checked_key_fields(name, team, rpm, tpm)
        await self.db.ensure_schema()
        secret = generate_key()
        values = {
            "id": "key_" + secrets.token_hex(8),
            "name": name,
            "team": team,
            "key_hash": hash_key(secret),
            "key_prefix": secret[:_DISPLAY_CHARS],
            "budget_usd": budget_usd,
            "rpm": rpm,
            "tpm": tpm,
            "created_at": datetime.now(UTC),
            "revoked_at": None,
        }
        async with self.db.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        record = await self.get(str(values["id"]))
        assert record is not None
        return record, secret

    async def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Every key, oldest first."""
        await self.db.ensure_schema()
        stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            stmt = stmt.where(api_keys.c.revoked_at.is_(None))
        async with self.db.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(stmt)).all()]

    async def get(self, key_id: str) -> KeyRecord | None:
        """The key with this id."""
        await self.db.ensure_schema()
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return None if row is None else _record(row)

    async def by_secret(self, secret: str) -> KeyRecord | None:
        """The key whose secret is ``secret`` (looked up by its hash)."""
        await self.db.ensure_schema()
        stmt = select(api_keys).where(api_keys.c.key_hash == hash_key(secret))
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _record(row)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark the key revoked (idempotent); None if there is no such key."""
        await self.db.ensure_schema()
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return await self.get(key_id)

    async def spent(self, key_id: str) -> Decimal:
        """What the ledger has recorded for this key so far."""
        return (await totals(self.db.engine, key_id=key_id)).cost_usd  # from the rollups: kept past retention
