"""The database behind the ledger and the virtual keys: one async engine per process, migrated on open."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.accounting.migrate import migrate
from gateway.accounting.priority import WriterPriority, record_thread_id
from gateway.errors import ConfigError

log = logging.getLogger("gateway.accounting")

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


def async_url(url: str) -> URL:
    """``url`` with an async driver (``sqlite://`` -> aiosqlite, ``postgresql://`` -> asyncpg)."""
    parsed = make_url(url)
    if parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    return parsed


#: The SQLite page cache of each connection (negative: KiB).
SQLITE_CACHE_KIB = -8192


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer; replicas may share a file
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 8 MiB a connection (default 2): the ledger's indexes are written every batch. Each pooled connection fills its
    # own cache (bench/RESULTS.md, "SQLite page cache"): 32 MiB made the writer 12% faster on a 1.2 M-row ledger and
    # cost +63 MiB of RSS in a Responses API soak.
    cursor.execute(f"PRAGMA cache_size={SQLITE_CACHE_KIB}")
    cursor.close()
    record_thread_id(dbapi_connection, record.info)


class Database:
    """An async engine for ``ledger.url``, migrated to the current schema on first use."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.migrated = False
        #: The ledger writer's thread priority: switchable on SQLite (its connections' threads), inert elsewhere.
        self.writer_priority = WriterPriority.probe() if engine.dialect.name == "sqlite" else WriterPriority(False)
        self._lock = asyncio.Lock()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return self.engine.url.render_as_string(hide_password=True)

    async def ensure_schema(self, attempts: int = 3) -> None:
        """Bring the schema up to date once per process.

        Raises:
            SQLAlchemyError, OSError: the database cannot be reached or migrated (after ``attempts`` tries:
                replicas creating the same SQLite file at once can collide on the first try).
        """
        if self.migrated:
            return
        async with self._lock:
            for attempt in range(1, attempts + 1):
                if self.migrated:
                    return
                try:
                    async with self.engine.begin() as conn:
                        await migrate(conn)
                        if conn.dialect.name == "sqlite":  # a write, as every batch makes: a read-only file fails here
                            version = (await conn.exec_driver_sql("PRAGMA user_version")).scalar()
                            await conn.exec_driver_sql(f"PRAGMA user_version = {int(version or 0)}")
                    self.migrated = True
                except OperationalError as exc:
                    if attempt == attempts:
                        raise
                    log.info("schema migration collided (%s); retrying", exc.orig)
                    await asyncio.sleep(0.2 * attempt)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _engine(url: str, connect_timeout_s: float) -> AsyncEngine:
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a statement's error (logged) would carry the row's values, a client's ``user`` among them
        engine = create_async_engine(parsed, connect_args={"timeout": 10}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # asyncpg waits 60 s for a server that accepted the connection but does not answer (a partition)
    connect_args: dict[str, Any] = {"timeout": connect_timeout_s} if parsed.get_driver_name() == "asyncpg" else {}
    if parsed.get_driver_name() == "asyncpg":
        parsed = _libpq_options(parsed, connect_args)
    return create_async_engine(
        parsed,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_recycle=1800,
        hide_parameters=True,
    )


def _libpq_options(url: URL, connect_args: dict[str, Any]) -> URL:
    """``url`` with libpq's options (``?sslmode=require``, the form hosted PostgreSQL services give out) as asyncpg
    takes them: ``ssl``, and ``connect_timeout`` and ``application_name`` in ``connect_args``."""
    query = dict(url.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    if "connect_timeout" in query:
        seconds = float(str(query.pop("connect_timeout")))
        if seconds > 0:  # libpq's 0 is "wait for ever": the ledger's own connect timeout then applies
            connect_args["timeout"] = seconds
    if "application_name" in query:
        connect_args["server_settings"] = {"application_name": str(query.pop("application_name"))}
    return url.set(query=query)


class LedgerUnusable(ConfigError):
    """The ledger's database answers, but can never hold the ledger (not a database, read-only, no such database,
    role or permission): unlike an outage, waiting does not help, so the gateway does not start."""


#: PostgreSQL's error classes that no retry mends: an unknown database (3D), refused credentials (28), and a
#: privilege missing (42501).
_PERMANENT_SQLSTATES = ("3D", "28", "42501")
#: SQLite's messages for a file that is not, or cannot be written as, a database.
_PERMANENT_SQLITE = ("file is not a database", "unable to open database file", "readonly database", "is encrypted")


def permanent_problem(exc: BaseException) -> str | None:
    """What makes ``exc`` a database that can never hold the ledger (its first line), or None for an outage."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    text = str(orig if orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(state, str) and state.startswith(_PERMANENT_SQLSTATES):
        return first
    return first if any(marker in text for marker in _PERMANENT_SQLITE) else None


async def open_database(url: str, *, require: bool = False, connect_timeout_s: float = 10.0) -> Database:
    """The database for ``url``, its schema migrated when it can be reached.

    With ``require`` an unreachable database raises (the CLI); otherwise the gateway starts anyway and the
    ledger keeps its rows in memory, migrating and writing once the database answers. Opening a PostgreSQL
    connection gives up after ``connect_timeout_s`` (so does the start-up, at most that long).

    Raises:
        SQLAlchemyError, OSError: only with ``require``.
        LedgerUnusable: the database answered, but can never hold the ledger (:func:`permanent_problem`): serving
            would record nothing (spend, budgets, savings) while every health check passed.
    """
    db = Database(_engine(url, connect_timeout_s))
    try:
        await db.ensure_schema()
    except (SQLAlchemyError, OSError) as exc:
        problem = None if require else permanent_problem(exc)
        if require or problem is not None:
            await db.aclose()
        if problem is not None:
            where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "ledger.url"
            raise LedgerUnusable(
                f"{where} {db.display_url} cannot hold the ledger: {problem}; fix the URL, the file's permissions "
                "or the database's grants"
            ) from None
        if require:
            raise
        log.warning(
            "ledger database %s unreachable at start-up (%s); rows are kept until it answers",
            db.display_url,
            str(exc) or type(exc).__name__,  # a connect timeout has no message
        )
    return db
