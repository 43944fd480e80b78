"""The writer's insert of raw ledger rows, as the driver's SQL with parameters prepared here.

SQLAlchemy's ``insert(ledger)`` builds each row's parameters through its generic machinery (about 17 us a row on
the event loop); the ledger's rows all have the same columns, so the writer prepares them itself, with the same
bind processors (the money quantized to 1e-12 USD, the timestamp as SQLite stores it), and sends one statement
per slice of rows:

* SQLite: ``INSERT ... VALUES (...), (...) ON CONFLICT (row_key) DO NOTHING RETURNING row_key``;
* PostgreSQL: ``INSERT ... SELECT * FROM unnest($1::timestamptz[], ...) ON CONFLICT (row_key) DO NOTHING
  RETURNING row_key``: one array per column, encoded by asyncpg, one statement text whatever the slice's size.

Both return the ``row_key`` of each row really written: a row already in the table (a batch retried after a
commit whose reply was lost) is skipped, and the rollups add only the rows returned.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from decimal import Decimal
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy.engine import Dialect

from gateway.accounting.schema import MONEY_COLUMNS, MONEY_PLACES, ledger

#: Every column the writer fills: all but the auto-increment id.
COLUMNS: tuple[str, ...] = tuple(c.name for c in ledger.columns if c.name != "id")
_QUOTED = ", ".join(f'"{name}"' for name in COLUMNS)
_SKIP = " ON CONFLICT (row_key) DO NOTHING"
_RETURNING = " RETURNING row_key"
_Q = Decimal(1).scaleb(-MONEY_PLACES)


def _units(value: Any) -> int | None:
    """Money as SQLite stores it, integer 1e-12 USD (:class:`~gateway.accounting.schema.Money`'s arithmetic)."""
    return None if value is None else int(Decimal(value).quantize(_Q).scaleb(MONEY_PLACES))


def _quantized(value: Any) -> Decimal | None:
    """Money as PostgreSQL's ``NUMERIC(20, 12)`` takes it (:class:`~gateway.accounting.schema.Money`'s arithmetic)."""
    return None if value is None else Decimal(value).quantize(_Q)


class Statement(NamedTuple):
    """A slice's insert: the SQL, the driver's parameters, and each row's cost, baseline cost and savings as
    integer 1e-12 USD (as stored: what the rollups add up)."""

    sql: str
    params: Any
    units: list[tuple[int, int, int]]


class RawInsert:
    """The raw-row insert for one dialect (``sqlite`` or ``postgresql``): :meth:`statement` for a slice of rows."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect.name
        sqlite = self.dialect == "sqlite"
        # The columns whose values the driver cannot take as they are: the money (quantized; integer units on
        # SQLite) and, on SQLite, the timestamp (stored as text, by SQLAlchemy's processor). Booleans and floats
        # go as they are.
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(COLUMNS):
            if name.endswith("_usd"):
                self._processors.append((i, _units if sqlite else _quantized))
            elif name == "ts" and sqlite:
                process = ledger.c.ts.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    self._processors.append((i, process))
        self._money = [COLUMNS.index(name) for name in MONEY_COLUMNS]
        self._get = itemgetter(*COLUMNS)
        self._sqlite_sql: dict[int, str] = {}
        casts = ", ".join(f"${i}::{ledger.c[n].type.compile(dialect=dialect)}[]" for i, n in enumerate(COLUMNS, 1))
        self._pg_sql = f"INSERT INTO gw_ledger ({_QUOTED}) SELECT * FROM unnest({casts}){_SKIP}"
        self._one = f"({', '.join('?' * len(COLUMNS))})"
        self._sqlite_many = f"INSERT INTO gw_ledger ({_QUOTED}) VALUES {self._one}{_SKIP}"

    def _values(self, row: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return self._get(row)  # type: ignore[no-any-return]
        except KeyError:  # a row without some column: NULL there
            return tuple(row.get(name) for name in COLUMNS)

    def statement(self, rows: Sequence[dict[str, Any]], returning: bool) -> Statement:
        """The SQL and parameters that insert ``rows`` (a missing column is NULL), skipping a row whose ``row_key``
        is already there; with ``returning``, the statement returns the key of each row it wrote."""
        columns: list[Sequence[Any]] = list(zip(*map(self._values, rows), strict=True))
        for i, process in self._processors:
            columns[i] = list(map(process, columns[i]))
        cost, base, saved = (columns[i] for i in self._money)
        if self.dialect == "postgresql":
            places = MONEY_PLACES
            units = [
                (int(c.scaleb(places)), int(b.scaleb(places)), int(s.scaleb(places)))
                for c, b, s in zip(cost, base, saved, strict=True)
            ]
            return Statement(self._pg_sql + (_RETURNING if returning else ""), tuple(list(c) for c in columns), units)
        units = list(zip(cost, base, saved, strict=True))
        if not returning:  # the driver's executemany: one prepared statement, row after row
            return Statement(self._sqlite_many, list(zip(*columns, strict=True)), units)
        return Statement(
            self._sqlite_returning(len(rows)), tuple(itertools.chain.from_iterable(zip(*columns, strict=True))), units
        )

    def joined(self, parts: Sequence[Statement]) -> Statement:
        """One statement inserting the rows of ``parts``: statements from :meth:`statement` with the same
        ``returning``, prepared a slice of rows at a time (short steps on the event loop) and sent as one."""
        if len(parts) == 1:
            return parts[0]
        chain = itertools.chain.from_iterable
        units = list(chain(p.units for p in parts))
        first = parts[0]
        if self.dialect == "postgresql":  # an array per column: the slices' arrays end to end
            columns = zip(*(p.params for p in parts), strict=True)
            return Statement(first.sql, tuple(list(chain(column)) for column in columns), units)
        if first.sql == self._sqlite_many:  # a tuple per row
            return Statement(first.sql, list(chain(p.params for p in parts)), units)
        return Statement(self._sqlite_returning(len(units)), tuple(chain(p.params for p in parts)), units)

    def _sqlite_returning(self, n: int) -> str:
        """SQLite's insert of ``n`` rows returning each written row's key (its ``VALUES`` grows with ``n``)."""
        sql = self._sqlite_sql.get(n)
        if sql is None:
            sql = f"INSERT INTO gw_ledger ({_QUOTED}) VALUES {', '.join([self._one] * n)}{_SKIP}{_RETURNING}"
            self._sqlite_sql[n] = sql
        return sql
