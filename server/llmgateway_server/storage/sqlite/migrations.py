"""The SQLite schema, as numbered migrations, and the code that applies them.

``schema_version`` holds one row per applied migration. Each migration is applied in its
own ``BEGIN IMMEDIATE`` transaction that first re-reads the version, so several processes
starting on one fresh file at once apply each step exactly once (the others wait for the
write lock, then find it done). A file whose version is newer than this code's raises
``SchemaTooNew``: an older gateway never writes into a schema it does not know.

A new migration is appended to ``MIGRATIONS`` with the next number; a released one is
never edited.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from llmgateway_server.storage.base import SchemaTooNew


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step: statements applied together in one transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


_V1 = Migration(
    1,
    "usage ledger, budgets and rate limits, tenants and keys",
    (
        # -- the ledger: one row per request_id, written once ---------------------------
        """CREATE TABLE usage_calls (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            key_prefix TEXT NOT NULL,
            key_id TEXT NOT NULL,
            route TEXT NOT NULL,
            provider TEXT NOT NULL,
            upstream_model TEXT NOT NULL,
            outcome TEXT NOT NULL,
            finished_at_unix_s REAL NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            cost_nano_usd INTEGER NOT NULL,
            price_version TEXT NOT NULL,
            usage_estimated INTEGER NOT NULL,
            streaming INTEGER NOT NULL,
            error_reason TEXT NOT NULL,
            finish_reason TEXT NOT NULL,
            attempt_count INTEGER NOT NULL,
            trimmed_message_count INTEGER NOT NULL,
            latency_s REAL NOT NULL,
            time_to_first_token_s REAL
        )""",
        "CREATE INDEX usage_calls_finished ON usage_calls (finished_at_unix_s)",
        "CREATE INDEX usage_calls_tenant_finished ON usage_calls (tenant, finished_at_unix_s)",
        """CREATE TABLE usage_tags (
            call_id INTEGER NOT NULL REFERENCES usage_calls (id),
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (call_id, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE usage_attempts (
            call_id INTEGER NOT NULL REFERENCES usage_calls (id),
            seq INTEGER NOT NULL,
            provider TEXT NOT NULL,
            upstream_model TEXT NOT NULL,
            outcome TEXT NOT NULL,
            latency_s REAL NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            cost_nano_usd INTEGER NOT NULL,
            usage_estimated INTEGER NOT NULL,
            PRIMARY KEY (call_id, seq)
        ) WITHOUT ROWID""",
        # -- budgets: counters per scope, window and period; reservations ---------------
        """CREATE TABLE budget_counters (
            scope_kind TEXT NOT NULL CHECK (scope_kind IN ('tenant', 'key')),
            scope_id TEXT NOT NULL,
            window TEXT NOT NULL CHECK (window IN ('day', 'month')),
            period TEXT NOT NULL,
            spent_nano_usd INTEGER NOT NULL DEFAULT 0,
            reserved_nano_usd INTEGER NOT NULL DEFAULT 0,
            spent_tokens INTEGER NOT NULL DEFAULT 0,
            reserved_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (scope_kind, scope_id, window, period)
        ) WITHOUT ROWID""",
        """CREATE TABLE budget_reservations (
            request_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            key_prefix TEXT NOT NULL,
            route TEXT NOT NULL,
            scopes TEXT NOT NULL,
            day TEXT NOT NULL,
            month TEXT NOT NULL,
            day_ends_unix_s REAL NOT NULL,
            month_ends_unix_s REAL NOT NULL,
            nano_usd INTEGER NOT NULL CHECK (nano_usd >= 0),
            tokens INTEGER NOT NULL CHECK (tokens >= 0),
            lease_until_unix_s REAL NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('held', 'settled', 'expired')),
            charged_nano_usd INTEGER,
            charged_tokens INTEGER,
            created_at_unix_s REAL NOT NULL,
            finished_at_unix_s REAL
        ) WITHOUT ROWID""",
        # expire() looks only at held reservations, by lease.
        """CREATE INDEX budget_reservations_held_lease
            ON budget_reservations (lease_until_unix_s) WHERE state = 'held'""",
        # -- rate limits: one token bucket per tenant and dimension ---------------------
        """CREATE TABLE rate_buckets (
            tenant TEXT NOT NULL,
            dimension TEXT NOT NULL CHECK (dimension IN ('requests', 'tokens')),
            level REAL NOT NULL,
            updated_at_unix_s REAL NOT NULL,
            PRIMARY KEY (tenant, dimension)
        ) WITHOUT ROWID""",
        # -- tenants and their keys (digests only) --------------------------------------
        """CREATE TABLE tenants (
            name TEXT PRIMARY KEY,
            routes TEXT NOT NULL,
            usd_per_day_nano INTEGER,
            usd_per_month_nano INTEGER,
            tokens_per_day INTEGER,
            tokens_per_month INTEGER,
            requests_per_minute INTEGER,
            tokens_per_minute INTEGER,
            created_at_unix_s REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants (name),
            prefix TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            created_at_unix_s REAL NOT NULL,
            usd_per_day_nano INTEGER,
            usd_per_month_nano INTEGER,
            tokens_per_day INTEGER,
            tokens_per_month INTEGER,
            last_used_at_unix_s REAL,
            revoked_at_unix_s REAL
        ) WITHOUT ROWID""",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at_unix_s)",
    ),
)

_V2 = Migration(
    2,
    "reservations by creation time, for prune()",
    (
        """CREATE INDEX IF NOT EXISTS budget_reservations_created
            ON budget_reservations (created_at_unix_s)""",
    ),
)

_V3 = Migration(
    3,
    "what the guardrails found, per call",
    ("ALTER TABLE usage_calls ADD COLUMN guardrails TEXT NOT NULL DEFAULT '{}'",),
)

_V4 = Migration(
    4,
    "cache write, reasoning and image input tokens, per call and per attempt",
    # Parts of the token counts, as in types.Usage (SQLite adds one column per ALTER);
    # rows written before this step read back with 0.
    (
        "ALTER TABLE usage_calls ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_calls ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_calls ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_calls ADD COLUMN image_input_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_attempts ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_attempts ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_attempts ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_attempts ADD COLUMN image_input_tokens INTEGER NOT NULL DEFAULT 0",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = MIGRATIONS[-1].version


def current_version(conn: sqlite3.Connection) -> int:
    """The version the file is at (0: never migrated)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply every migration the file lacks, each in one transaction; return the version.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Raises SchemaTooNew
    when the file is newer than ``migrations``; a failing step is rolled back whole and
    its exception raised, the steps before it staying applied."""
    latest = migrations[-1].version if migrations else 0
    if [m.version for m in migrations] != list(range(1, latest + 1)):
        raise ValueError("migrations must be numbered 1, 2, 3, ... in order")
    while True:
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: one process migrates at a time
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                    version INTEGER PRIMARY KEY,
                    description TEXT NOT NULL,
                    applied_at_unix_s REAL NOT NULL
                )"""
            )
            version = current_version(conn)
            if version > latest:
                raise SchemaTooNew(
                    f"the database is at schema version {version}, newer than this "
                    f"gateway's {latest}: it was migrated by a newer gateway; run that "
                    "version (or restore a backup taken before the upgrade)"
                )
            if version == latest:
                conn.execute("COMMIT")
                return version
            step = migrations[version]  # the next one: versions are 1-based and dense
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at_unix_s) "
                "VALUES (?, ?, ?)",
                (step.version, step.description, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
