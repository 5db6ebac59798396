"""The multi-replica ledger and tenant store, in PostgreSQL (psycopg 3, async).

``PostgresLedger`` writes each record to a local SQLite outbox first (durable, group
commit) and delivers it to PostgreSQL in the background; ``PostgresTenantStore`` keeps
tenants and keys; ``migrate`` brings the schema up to date (``llmgateway migrate``).
"""

from llmgateway_server.storage.postgres.ledger import PostgresLedger
from llmgateway_server.storage.postgres.migrations import LATEST_VERSION, MIGRATIONS, migrate
from llmgateway_server.storage.postgres.outbox import Outbox, outbox_path_for
from llmgateway_server.storage.postgres.tenants import PostgresTenantStore
from llmgateway_server.storage.postgres.usage import PostgresUsageReader

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Outbox",
    "PostgresLedger",
    "PostgresTenantStore",
    "PostgresUsageReader",
    "migrate",
    "outbox_path_for",
]
