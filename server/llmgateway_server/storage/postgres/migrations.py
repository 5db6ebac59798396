"""Versioned PostgreSQL schema: numbered steps, each applied in one transaction.

``schema_version`` holds one row per applied step. ``migrate`` takes a session advisory
lock first, so replicas starting together apply each step once (the others wait, then
find it done). A database migrated by a newer gateway raises ``SchemaTooNew``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmgateway_server.storage.base import SchemaTooNew
from llmgateway_server.storage.postgres.connection import Connection, connect


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: its number (1, 2, ... with no gap), what it does, its statements."""

    version: int
    description: str
    statements: tuple[str, ...]


# Times are ``double precision`` Unix seconds, as in the records: a value read back is the
# value written (timestamptz would round to microseconds). Money and tokens are bigint.
_BUDGET_COLUMNS = """
    usd_per_day_nano bigint,
    usd_per_month_nano bigint,
    tokens_per_day bigint,
    tokens_per_month bigint"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage ledger: one row per call, and its attempts",
        (
            """
            CREATE TABLE usage_calls (
                request_id text PRIMARY KEY,
                tenant text NOT NULL,
                route text NOT NULL,
                outcome text NOT NULL,
                finished_at_unix_s double precision NOT NULL,
                key_prefix text NOT NULL,
                key_id text NOT NULL,
                provider text NOT NULL,
                upstream_model text NOT NULL,
                tags jsonb NOT NULL,
                input_tokens bigint NOT NULL,
                output_tokens bigint NOT NULL,
                cached_input_tokens bigint NOT NULL,
                cost_nano_usd bigint NOT NULL,
                price_version text NOT NULL,
                usage_estimated boolean NOT NULL,
                streaming boolean NOT NULL,
                error_reason text NOT NULL,
                finish_reason text NOT NULL,
                attempt_count integer NOT NULL,
                trimmed_message_count integer NOT NULL,
                latency_s double precision NOT NULL,
                time_to_first_token_s double precision
            )
            """,
            "CREATE INDEX usage_calls_finished ON usage_calls (finished_at_unix_s)",
            "CREATE INDEX usage_calls_tenant_finished ON usage_calls (tenant, finished_at_unix_s)",
            """
            CREATE TABLE usage_attempts (
                request_id text NOT NULL REFERENCES usage_calls (request_id) ON DELETE CASCADE,
                attempt_index integer NOT NULL,
                provider text NOT NULL,
                upstream_model text NOT NULL,
                outcome text NOT NULL,
                latency_s double precision NOT NULL,
                input_tokens bigint NOT NULL,
                output_tokens bigint NOT NULL,
                cached_input_tokens bigint NOT NULL,
                cost_nano_usd bigint NOT NULL,
                usage_estimated boolean NOT NULL,
                PRIMARY KEY (request_id, attempt_index)
            )
            """,
        ),
    ),
    Migration(
        2,
        "tenants and their API keys",
        (
            f"""
            CREATE TABLE tenants (
                name text PRIMARY KEY,
                routes text[] NOT NULL,
                {_BUDGET_COLUMNS},
                requests_per_minute bigint,
                tokens_per_minute bigint,
                created_at_unix_s double precision NOT NULL
            )
            """,
            f"""
            CREATE TABLE api_keys (
                id text PRIMARY KEY,
                tenant text NOT NULL REFERENCES tenants (name),
                prefix text NOT NULL,
                sha256 text NOT NULL UNIQUE,
                created_at_unix_s double precision NOT NULL,
                {_BUDGET_COLUMNS},
                last_used_at_unix_s double precision,
                revoked_at_unix_s double precision
            )
            """,
            "CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at_unix_s)",
        ),
    ),
    Migration(
        3,
        "what the guardrails found, per call",
        ("ALTER TABLE usage_calls ADD COLUMN guardrails jsonb NOT NULL DEFAULT '{}'::jsonb",),
    ),
    Migration(
        4,
        "cache write, reasoning and image input tokens, per call and per attempt",
        # Parts of the token counts, as in types.Usage; rows written before this step
        # read back with 0 (a constant default: no table rewrite).
        (
            """
            ALTER TABLE usage_calls
                ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0,
                ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
                ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0,
                ADD COLUMN image_input_tokens bigint NOT NULL DEFAULT 0
            """,
            """
            ALTER TABLE usage_attempts
                ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0,
                ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
                ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0,
                ADD COLUMN image_input_tokens bigint NOT NULL DEFAULT 0
            """,
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

# pg_advisory_lock key for migrations: any constant no other code uses ("llmgwmig").
_LOCK_KEY = 0x6C6C6D67776D6967


def _check_numbering(steps: Sequence[Migration]) -> None:
    for expected, step in enumerate(steps, start=1):
        if step.version != expected:
            raise ValueError(f"migration steps must be numbered 1, 2, ...: got {step.version}")


_check_numbering(MIGRATIONS)


async def migrate(
    url: str, *, steps: Sequence[Migration] = MIGRATIONS, timeout_s: float = 60.0
) -> int:
    """Bring the database at ``url`` to the newest schema this code knows; return that
    version. Safe to run from several replicas at once; a no-op when up to date.

    Raises ``SchemaTooNew`` when the database is at a version this code does not know,
    ``StoreUnavailable`` when PostgreSQL cannot be reached."""
    _check_numbering(steps)
    latest = len(steps)
    async with connect(url, "migrate", timeout_s=timeout_s) as conn:
        # Held until the connection closes: one replica migrates, the others queue here.
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_version (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        current = await _current_version(conn)
        if current > latest:
            raise SchemaTooNew(
                f"the PostgreSQL schema is at version {current}, newer than this gateway "
                f"knows (version {latest}): run a gateway at least as new as the one that "
                "migrated it"
            )
        for step in steps[current:]:
            async with conn.transaction():
                for statement in step.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                    (step.version, step.description),
                )
        return latest


async def _current_version(conn: Connection) -> int:
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    row = await cur.fetchone()
    assert row is not None  # an aggregate always returns a row
    version = row[0]
    assert isinstance(version, int)
    return version
