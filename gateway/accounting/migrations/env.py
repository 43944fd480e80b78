"""Alembic's environment: always online, on the connection that :mod:`gateway.accounting.migrate` passes in."""

from __future__ import annotations

from alembic import context

from gateway.accounting.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("ledger migrations run through gateway.accounting.migrate, on an open connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them ("batch mode"); PostgreSQL alters in place.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
