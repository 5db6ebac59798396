"""The single-node store: one SQLite file (WAL) holding the usage ledger, budgets and rate
limits, and tenants and keys, shared by every gateway process on the host.

Build one ``SqliteDatabase`` per process (``await SqliteDatabase.open(path)``: it creates
and migrates the file) and the stores on it; ``migrate_file`` is what
``llmgateway migrate`` runs.
"""

from llmgateway_server.storage.sqlite.budgets import BudgetCounter, SqliteBudgetStore
from llmgateway_server.storage.sqlite.db import SqliteDatabase, migrate_file
from llmgateway_server.storage.sqlite.ledger import SqliteLedger
from llmgateway_server.storage.sqlite.migrations import SCHEMA_VERSION
from llmgateway_server.storage.sqlite.tenants import SqliteTenantStore

__all__ = [
    "SCHEMA_VERSION",
    "BudgetCounter",
    "SqliteBudgetStore",
    "SqliteDatabase",
    "SqliteLedger",
    "SqliteTenantStore",
    "migrate_file",
]
