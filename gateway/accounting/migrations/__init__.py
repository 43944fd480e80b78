"""Alembic migration scripts of the ledger database (run by :mod:`gateway.accounting.migrate`)."""
