"""The cost ledger: one row per request, stored through SQLAlchemy (SQLite by default, PostgreSQL by URL).

* :mod:`gateway.accounting.schema`: tables, the exact ``Money`` column type and the versioned migrations.
* :mod:`gateway.accounting.db`: the engine for ``ledger.url`` (created, migrated, disposed).
* :mod:`gateway.accounting.ledger`: :class:`SqlLedger`, the batching :class:`~gateway.hooks.Recorder`.
* :mod:`gateway.accounting.queries`: spend aggregations for the spend API, the dashboard and the CLI.
"""

from gateway.accounting.db import Database, open_database
from gateway.accounting.ledger import SqlLedger, row_from_context

__all__ = ["Database", "SqlLedger", "open_database", "row_from_context"]
