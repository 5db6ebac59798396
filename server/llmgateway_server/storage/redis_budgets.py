"""Budgets and rate limits in Redis, shared by every replica: ``RedisBudgetStore``.

Every operation is one Lua script run atomically by Redis (``redis_scripts.py``):
reserve checks every limit of every scope and holds the amounts, all or nothing; settle
and expire move a held reservation into spend; take draws from token buckets. Two
replicas racing for the last of a budget are serialised by Redis itself.

Key layout (``lg`` is the namespace; ``{T}`` the tenant's hash tag, so every key of a
tenant, its keys' counters included, is in one hash slot and each script runs on one
Redis Cluster node):

- ``lg:{T}:b:<kind>:<id>:<day|month>:<period>``: a counter hash (``su``/``st`` spent
  nano-USD / tokens, ``ru``/``rt`` reserved), expiring ``counter_retention_s`` after its
  period ends.
- ``lg:{T}:r:<request_id>``: a reservation hash (state, amounts, the reservation as
  JSON, its counter keys). Held, it lives until its lease plus ``finished_ttl_s``;
  settled or expired, ``finished_ttl_s`` more: that long, the request_id is known
  (``DuplicateRequest``).
- ``lg:{T}:lz``: held request ids by lease; ``lg:{T}:uz``: expired ones not yet handed
  to the ledger (score: claimed until); ``lg:{T}:rl``: the rate-limit buckets.
- ``lg:{S}:ok``: the marker of hash slot S (``S`` a tag chosen to hash to that slot),
  written by ``rebuild``. Every script checks its slot's marker first: missing means
  Redis lost its data, and the operation raises ``CountersLost`` until ``rebuild`` has
  restored the counters from the ledger and the held reservations. A new, empty Redis
  is no different: the first start rebuilds from an empty ledger.
- ``lg:{S}:due``: the slot's index of tenants that hold reservations (or have expired
  ones to hand over), by the earliest lease or claim. Being in the tenant's slot, it is
  written by the same script as the reservation: a held reservation is never
  unindexed, and a reserve is one round trip.
- ``lg:{sweep}:slots``: the hint set, the slots whose index may hold tenants, so a
  sweep reads those and not all 16384 (~70 ms of Redis time). A reserve that makes a
  slot's index non-empty adds it (a second command, after the reservation); a sweep
  that finds a hinted slot's index empty removes it, atomically with that look. A hint
  lost (a client that died between the two) only delays a sweep: every
  ``full_scan_every_s`` (default 5 min, and at a process's first sweep) ``expire``
  looks at every slot, in chunks of a few ms.
- ``lg:{keys}:owner``: which tenant each key id belongs to, written once per key and
  process before its first reservation, so ``remaining`` of a key scope alone (a
  tenant without limits) finds the key's counters on any replica.

Limits and amounts are integers; Redis adds them in 64 bits (HINCRBY), and the limit
checks done in Lua (doubles) are exact while spent + reserved + amount of a scope stays
below 2^53 nano-USD (about 9 million USD per scope and period): larger amounts or limits
are refused with ValueError.

Clocks: leases and ``expire(now)`` use the replicas' clocks (NTP keeps them within far
less than the lease grace). Rate-limit buckets refill by the Redis server's clock
(``TIME`` in the script), the same for every replica; ``rate_clock="caller"`` uses the
``now_unix_s`` passed to ``take`` instead (tests).

Faults: connection refused or reset, a timeout (``timeout_s``, default 0.5 s, for
connecting and for each reply), a Redis that is loading, read-only, out of memory or
busy: ``StoreUnavailable``. A command whose connection dropped is sent once more on a
new connection (a restarted Redis leaves dead connections in the pool), never one that
timed out. Every script is safe to run twice: reserve and take carry a nonce per call,
so a resent one is recognised; an expired reservation whose hand-over was lost is handed
out again once its claim (``claim_s``) runs out, and the ledger keeps the first row of a
request_id.

Operating Redis for this: ``maxmemory-policy noeviction`` (an evicted counter is an
undetected loss), and AOF with ``appendfsync always`` for exact budgets across a Redis
crash (``everysec`` may lose the last second's charges, undetected: the marker survives).
Redis 7 or newer (script flags).
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hashlib
import logging
import math
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmgateway_server.storage import redis_scripts
from llmgateway_server.storage.base import (
    BudgetLimits,
    CountersLost,
    Dimension,
    DuplicateRequest,
    Periods,
    RateLimits,
    Refusal,
    Remaining,
    Reservation,
    Scope,
    ScopeKind,
    StoreUnavailable,
    Window,
)

__all__ = ["MAX_EXACT", "RedisBudgetStore", "SpentKey"]

log = logging.getLogger("llmgateway.storage")

MAX_EXACT: Final = 2**53 - 1
"""The largest amount or limit (nano-USD or tokens) the Lua limit checks compare exactly."""

SpentKey = tuple[str, ScopeKind, str, Window, str]
"""``(tenant, scope kind, scope id, window, period)``: what ``rebuild`` restores spend
for, e.g. ``("acme", "key", "k_123", "day", "2026-12-02")``."""

_SLOTS: Final = 16384
_SWEEP_BATCH: Final = 1000
_SCAN_CHUNK: Final = 1024  # slots per full-scan script: a few ms of Redis time
_DAY_S: Final = 86_400.0
_SECONDS_PER_MINUTE: Final = 60.0
_WINDOWS: Final[tuple[Window, ...]] = ("day", "month")

Clock = Callable[[], float]
NaiveGap = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str  # how EVALSHA names it

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


_RESERVE: Final = _Script.of(redis_scripts.RESERVE)
_SETTLE: Final = _Script.of(redis_scripts.SETTLE)
_EXPIRE: Final = _Script.of(redis_scripts.EXPIRE)
_ACK: Final = _Script.of(redis_scripts.ACK)
_REMAINING: Final = _Script.of(redis_scripts.REMAINING)
_TAKE: Final = _Script.of(redis_scripts.TAKE)
_DUE_TENANTS: Final = _Script.of(redis_scripts.DUE_TENANTS)
_HINT_SLOTS: Final = _Script.of(redis_scripts.HINT_SLOTS)
_REBUILD: Final = _Script.of(redis_scripts.REBUILD)
_MARK_ALL_SLOTS: Final = _Script.of(redis_scripts.MARK_ALL_SLOTS)

# Error replies that mean "Redis cannot serve now", not "the script is wrong".
_FAULT_PREFIXES: Final = ("BUSY", "MISCONF", "NOREPLICAS", "UNBLOCKED", "MASTERDOWN")


def key_slot(tag: str) -> int:
    """The Redis Cluster hash slot of a hash tag (CRC16-XMODEM mod 16384)."""
    return binascii.crc_hqx(tag.encode(), 0) % _SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For every slot, a short tag that hashes to it (built once per process, 0.1-0.4 s)."""
    tags: list[str | None] = [None] * _SLOTS
    missing = _SLOTS
    i = 0
    while missing:
        tag = format(i, "x")
        slot = key_slot(tag)
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


async def _default_naive_gap() -> None:
    # Long enough that concurrent calls' checks overlap their charges.
    await asyncio.sleep(0.05)


class RedisBudgetStore:
    """BudgetStore on Redis (standalone, or Cluster-safe keys); see the module docstring.

    ``rebuild`` restores what a Redis that lost its data forgot; operations raise
    ``CountersLost`` until it has run.
    """

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        *,
        namespace: str = "lg",
        clock: Clock = time.time,
        rate_clock: Literal["redis", "caller"] = "redis",
        counter_retention_s: float = 7 * _DAY_S,
        finished_ttl_s: float = 7 * _DAY_S,
        claim_s: float = 30.0,
        full_scan_every_s: float = 300.0,
        naive_for_tests: bool = False,
        naive_gap: NaiveGap = _default_naive_gap,
    ) -> None:
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError("namespace: non-empty, without braces")
        self._r = client
        self._ns = namespace
        self._clock = clock
        self._rate_from_redis = rate_clock == "redis"
        self._retention_s = counter_retention_s
        self._finished_ttl_ms = str(int(finished_ttl_s * 1000))
        self._finished_ttl_s = finished_ttl_s
        self._claim_s = claim_s
        self._naive = naive_for_tests
        self._naive_gap = naive_gap
        self._owners: dict[str, str] = {}  # key id -> tenant, as recorded in Redis
        self._owner_key = f"{namespace}:{{keys}}:owner"
        self._hint_key = f"{namespace}:{{sweep}}:slots"
        self._full_scan_every_s = full_scan_every_s
        self._next_full_scan = 0.0  # monotonic; the first sweep of a process scans all

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        timeout_s: float = 0.5,
        max_connections: int = 512,
        **options: Any,
    ) -> RedisBudgetStore:
        """A store on ``redis://`` / ``rediss://`` ``url`` with ``timeout_s`` for
        connecting and for every reply (see Faults in the module docstring);
        ``options`` go to the constructor.

        A connection is opened per command in flight, up to ``max_connections``; one
        more is refused (StoreUnavailable), as redis-py's pool does. Its default of 100
        is raised: a burst of calls must not look like a Redis that is down. (A pool
        that waits for a free connection instead costs ~50 µs of CPU per command.)

        ``cluster``: ``url`` is one node of a Redis Cluster; the client learns the slot
        map from it and sends each script to the node of its keys' slot (every key of
        a script is in one slot), pipelines node by node, and SCRIPT LOAD to every
        primary. ``max_connections`` is then per node."""
        if cluster:
            cluster_client = aioredis.RedisCluster.from_url(
                url,
                max_connections=max_connections,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
            )
            return cls(cluster_client, **options)
        client = aioredis.Redis.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One resend when a connection drops (a restarted Redis leaves dead ones in
            # the pool); never after a timeout: a hung Redis must fail in timeout_s.
            retry=Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
            health_check_interval=0,
        )
        return cls(client, **options)

    # -- keys ------------------------------------------------------------------------------

    def _prefix(self, tenant: str) -> str:
        if not tenant or "{" in tenant or "}" in tenant:
            raise ValueError(f"tenant {tenant!r}: non-empty, without braces (a hash tag)")
        return f"{self._ns}:{{{tenant}}}:"

    def _marker(self, tenant: str) -> str:
        return self._slot_marker(key_slot(tenant))

    def _slot_marker(self, slot: int) -> str:
        return f"{self._ns}:{{{_slot_tags()[slot]}}}:ok"

    def _index(self, tenant: str) -> str:
        return self._slot_index(key_slot(tenant))

    def _slot_index(self, slot: int) -> str:
        return f"{self._ns}:{{{_slot_tags()[slot]}}}:due"

    def _counter_key(self, tenant: str, kind: ScopeKind, scope_id: str, w: Window, p: str) -> str:
        return f"{self._prefix(tenant)}b:{kind}:{scope_id}:{w}:{p}"

    # -- the protocol ----------------------------------------------------------------------

    async def remaining(self, scopes: Sequence[Scope], periods: Periods) -> Remaining:
        """The smallest ``limit - spent - reserved`` over every limit of ``scopes`` (0
        when over; None for a dimension without a limit)."""
        limited = [s for s in scopes if not s.limits.unlimited]
        if not limited:
            return Remaining(None, None)
        counters = await self._read_counters(limited, periods)
        usd: int | None = None
        tokens: int | None = None
        for scope in limited:
            for window in _WINDOWS:
                usd_limit, token_limit = _limits(scope.limits, window)
                su, ru, st, rt = counters.get((scope.kind, scope.id, window), (0, 0, 0, 0))
                if usd_limit is not None:
                    left = max(0, usd_limit - su - ru)
                    usd = left if usd is None else min(usd, left)
                if token_limit is not None:
                    left = max(0, token_limit - st - rt)
                    tokens = left if tokens is None else min(tokens, left)
        return Remaining(nano_usd=usd, tokens=tokens)

    async def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold the amounts against every limit of every scope in one script, or refuse
        with the first limit (scopes in order, day before month, USD before tokens) that
        would be exceeded. A request_id seen before raises DuplicateRequest."""
        r = reservation
        _check_amount("nano_usd", r.nano_usd)
        _check_amount("tokens", r.tokens)
        for scope in r.scopes:
            for value in _limit_values(scope.limits):
                _check_amount(f"{scope.kind} {scope.id!r} limit", value)
        if self._naive:
            return await self._naive_reserve(r)
        return await self._reserve(r, check_limits=True)

    async def settle(self, request_id: str, tenant: str, nano_usd: int, tokens: int) -> None:
        """Turn a held reservation into spend of the actual amounts; anything else
        (unknown, settled, expired, another tenant's) is a no-op."""
        _check_amount("nano_usd", nano_usd)
        _check_amount("tokens", tokens)
        prefix = self._prefix(tenant)
        keys = (self._marker(tenant), f"{prefix}r:{request_id}", f"{prefix}lz")
        args = (request_id, str(nano_usd), str(tokens), self._finished_ttl_ms)
        if await self._eval(_SETTLE, keys, args) == b"lost":
            raise CountersLost("Redis lost the budget counters: rebuild them")

    async def expire(self, now_unix_s: float) -> list[Reservation]:
        """Charge every held reservation whose lease ended before ``now_unix_s`` at its
        reserved amounts and return them; each is returned once (one handed out but not
        acknowledged, because the caller died, is handed out again after ``claim_s``).
        One call looks at up to 1000 tenants whose earliest lease (or claim) has come;
        the gateway's periodic sweep gets to the rest on its next turn. It looks in the
        slots the hint set names; every ``full_scan_every_s`` (and at its first call) it
        first looks at every slot for one a hint missed."""
        if time.monotonic() >= self._next_full_scan:
            await self._hint_every_slot()
            self._next_full_scan = time.monotonic() + self._full_scan_every_s
        # Claim everything first, acknowledge after: a failure on the way leaves what was
        # claimed to be handed out again once its claim runs out, never lost.
        claimed = [
            (tenant, await self._claim_expired(tenant, now_unix_s))
            for tenant in await self._due_tenants(now_unix_s)
        ]
        expired: list[Reservation] = []
        for tenant, batch in claimed:
            if not batch:
                continue
            prefix = self._prefix(tenant)
            try:
                await self._eval(
                    _ACK,
                    (f"{prefix}lz", f"{prefix}uz", self._index(tenant)),
                    (f"{prefix}r:", tenant, *(r.request_id for r in batch)),
                )
            except StoreUnavailable as exc:
                if not expired:
                    raise
                # Those acknowledged are returned (they would not be again); the rest
                # are handed out after their claim.
                log.warning("expire: acknowledgement failed, the rest comes later: %s", exc)
                break
            expired.extend(batch)
        return expired

    async def take(
        self, tenant: str, limits: RateLimits, *, requests: int, tokens: int, now_unix_s: float
    ) -> Refusal | None:
        """Take from the tenant's per-minute buckets, all or nothing; a Refusal names the
        short bucket and when it will have enough."""
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is None and tpm is None:
            return None
        if requests < 0 or tokens < 0:
            raise ValueError("requests and tokens must not be negative")
        keys = (self._marker(tenant), f"{self._prefix(tenant)}rl")
        args = (
            "" if rpm is None else str(rpm),
            "" if tpm is None else str(tpm),
            str(requests),
            str(tokens),
            "" if self._rate_from_redis else repr(now_unix_s),
            secrets.token_hex(8),
        )
        reply = await self._eval(_TAKE, keys, args)
        status = reply[0]
        if status == b"ok":
            return None
        if status == b"lost":
            raise CountersLost("Redis lost the budget counters: rebuild them")
        dimension: Literal["requests", "tokens"] = (
            "requests" if reply[1] == b"requests" else "tokens"
        )
        capacity = rpm if dimension == "requests" else tpm
        assert capacity is not None
        lacking = float(reply[2])
        rate = capacity / _SECONDS_PER_MINUTE
        return Refusal(
            scope_kind="tenant",
            scope_id=tenant,
            window="minute",
            dimension=dimension,
            limit=capacity,
            used=math.ceil(lacking),
            retry_after_s=lacking / rate if rate > 0 else _SECONDS_PER_MINUTE,
        )

    async def admit(
        self,
        reservation: Reservation,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now_unix_s: float,
    ) -> Refusal | None:
        """``take``, then ``reserve`` if the rate limits allowed the call: two scripts,
        two round trips (a take is not given back when the reservation is refused: the
        request counted against the rate limit)."""
        refusal = await self.take(
            reservation.tenant, limits, requests=requests, tokens=tokens, now_unix_s=now_unix_s
        )
        return refusal if refusal is not None else await self.reserve(reservation)

    async def aclose(self) -> None:
        """Close the connection pool."""
        with _faults():
            await self._r.aclose()

    # -- after a data loss ---------------------------------------------------------------

    async def rebuild(
        self, spent: Mapping[SpentKey, tuple[int, int]], held: Sequence[Reservation]
    ) -> None:
        """Restore the counters after Redis lost them, then admit again.

        ``spent``: the ledger's (nano-USD, tokens) per tenant, scope, window and period;
        ``held``: the reservations this replica still holds (calls in flight). One
        script per hash slot sets its counters and reservations and then its marker:
        atomic per slot, so per tenant. The first replica to rebuild a slot sets the
        spend; a later one (every replica rebuilds when it sees ``CountersLost``) only
        adds held reservations the slot does not know. Then every other slot's marker
        is set. Idempotent: safe to run again, or from several replicas at once.
        """
        counters: dict[int, list[tuple[str, int, int, int]]] = defaultdict(list)
        for (tenant, kind, scope_id, window, period), (usd, tok) in spent.items():
            _check_amount("spent nano_usd", usd)
            _check_amount("spent tokens", tok)
            ends = _period_end(window, period)
            key = self._counter_key(tenant, kind, scope_id, window, period)
            counters[key_slot(tenant)].append((key, usd, tok, self._expire_at(ends)))
        holds: dict[int, list[Reservation]] = defaultdict(list)
        owners = {scope_id: tenant for tenant, kind, scope_id, _, _ in spent if kind == "key"}
        for r in held:
            holds[key_slot(r.tenant)].append(r)
            owners.update((s.id, r.tenant) for s in r.scopes if s.kind == "key")
        await self._record_owners(owners)
        for slot in sorted(counters.keys() | holds.keys()):
            keys, args = self._rebuild_args(slot, counters.get(slot, []), holds.get(slot, []))
            await self._eval(_REBUILD, keys, args)
        if holds:
            with _faults():
                await self._command("SADD", self._hint_key, *(_slot_tags()[s] for s in holds))
        await self._mark_all_slots()

    async def _mark_all_slots(self) -> None:
        """Set every slot's marker that is not set: one script where Redis allows it
        (~10 ms), else one command per slot, pipelined (~1 s)."""
        try:
            await self._eval(_MARK_ALL_SLOTS, (), (self._ns, ",".join(_slot_tags())))
            return
        except rx.ResponseError as exc:
            if type(exc) is not rx.ResponseError:
                raise
        with _faults():
            for start in range(0, _SLOTS, 1024):
                pipe = self._r.pipeline(transaction=False)
                for slot in range(start, min(start + 1024, _SLOTS)):
                    pipe.execute_command("SET", self._slot_marker(slot), "1", "NX")
                await pipe.execute()

    def _rebuild_args(
        self, slot: int, counters: list[tuple[str, int, int, int]], holds: list[Reservation]
    ) -> tuple[list[str], list[str]]:
        keys = [self._slot_marker(slot), self._slot_index(slot)]
        args = [str(len(counters)), str(len(holds)), ""]
        for key, usd, tok, expire_at in counters:
            keys.append(key)
            args += [str(usd), str(tok), str(expire_at)]
        longest_lease = 0.0
        for r in holds:
            prefix = self._prefix(r.tenant)
            keys += [f"{prefix}r:{r.request_id}", f"{prefix}lz"]
            counter_keys = self._reservation_counters(r)
            args += [
                r.request_id,
                str(r.nano_usd),
                str(r.tokens),
                repr(r.lease_until_unix_s),
                _reservation_json(r).decode(),
                orjson.dumps([[k, str(e)] for k, e, _, _ in counter_keys]).decode(),
                r.tenant,
            ]
            longest_lease = max(longest_lease, r.lease_until_unix_s)
        args[2] = self._held_ttl_ms(longest_lease)
        return keys, args

    # -- internals -----------------------------------------------------------------------

    def _expire_at(self, period_ends_unix_s: float) -> int:
        return int(period_ends_unix_s + self._retention_s)

    def _held_ttl_ms(self, lease_until_unix_s: float) -> str:
        ttl_s = max(0.0, lease_until_unix_s - self._clock()) + self._finished_ttl_s
        return str(int(ttl_s * 1000))

    def _reservation_counters(
        self, r: Reservation
    ) -> list[tuple[str, int, int | None, int | None]]:
        """Each counter of the reservation: key, expire-at, USD limit, token limit."""
        out = []
        for scope in r.scopes:
            for window in _WINDOWS:
                period, ends = _period_of(r.periods, window)
                usd_limit, token_limit = _limits(scope.limits, window)
                key = self._counter_key(r.tenant, scope.kind, scope.id, window, period)
                out.append((key, self._expire_at(ends), usd_limit, token_limit))
        return out

    async def _record_owners(self, owners: Mapping[str, str]) -> None:
        """Write which tenant each key id belongs to, where this process has not yet
        (before a reservation names the key: ``remaining`` of a key scope alone finds
        the key's counters by it on any replica)."""
        new = {k: t for k, t in owners.items() if self._owners.get(k) != t}
        if new:
            await self._command("HSET", self._owner_key, *(x for kv in new.items() for x in kv))
            self._owners.update(new)

    async def _reserve(self, r: Reservation, *, check_limits: bool) -> Refusal | None:
        prefix = self._prefix(r.tenant)
        await self._record_owners({s.id: r.tenant for s in r.scopes if s.kind == "key"})
        counters = self._reservation_counters(r)
        keys = [
            self._marker(r.tenant),
            f"{prefix}r:{r.request_id}",
            f"{prefix}lz",
            self._index(r.tenant),
        ]
        keys += [key for key, _, _, _ in counters]
        # One argument for every counter's limits and expiry: each argument costs the
        # client more than the characters in it.
        spec = "".join(
            f"{_limit_arg(usd_limit, check_limits)}:{_limit_arg(token_limit, check_limits)}:"
            f"{expire_at};"
            for _, expire_at, usd_limit, token_limit in counters
        )
        args = (
            r.request_id,
            str(r.nano_usd),
            str(r.tokens),
            repr(r.lease_until_unix_s),
            _reservation_json(r),
            self._held_ttl_ms(r.lease_until_unix_s),
            secrets.token_hex(8),
            spec,
            r.tenant,
        )
        reply = await self._eval(_RESERVE, keys, args)
        status = reply[0]
        if status == b"held":
            if reply[1] == b"1":
                await self._hint(r.tenant)
            return None
        if status == b"duplicate":
            raise DuplicateRequest(f"request {r.request_id!r} has a reservation already")
        if status == b"lost":
            raise CountersLost("Redis lost the budget counters: rebuild them")
        index = int(reply[1]) - 1
        scope = r.scopes[index // len(_WINDOWS)]
        window = _WINDOWS[index % len(_WINDOWS)]
        dimension: Dimension = "usd" if reply[2] == b"usd" else "tokens"
        usd_limit, token_limit = _limits(scope.limits, window)
        limit = usd_limit if dimension == "usd" else token_limit
        assert limit is not None
        _, ends = _period_of(r.periods, window)
        return Refusal(
            scope_kind=scope.kind,
            scope_id=scope.id,
            window=window,
            dimension=dimension,
            limit=limit,
            used=int(reply[3]) + int(reply[4]),
            retry_after_s=max(0.0, ends - self._clock()),
        )

    async def _naive_reserve(self, r: Reservation) -> Refusal | None:
        """Check in one script, charge in another: the over-admitting design the race
        tests must catch. Never for production."""
        counters = await self._read_counters(r.scopes, r.periods)
        for scope in r.scopes:
            for window in _WINDOWS:
                su, ru, st, rt = counters.get((scope.kind, scope.id, window), (0, 0, 0, 0))
                usd_limit, token_limit = _limits(scope.limits, window)
                for dimension, limit, used, amount in (
                    ("usd", usd_limit, su + ru, r.nano_usd),
                    ("tokens", token_limit, st + rt, r.tokens),
                ):
                    if limit is not None and used + amount > limit:
                        _, ends = _period_of(r.periods, window)
                        return Refusal(
                            scope_kind=scope.kind,
                            scope_id=scope.id,
                            window=window,
                            dimension="usd" if dimension == "usd" else "tokens",
                            limit=limit,
                            used=used,
                            retry_after_s=max(0.0, ends - self._clock()),
                        )
        await self._naive_gap()  # another call may charge here: the race
        return await self._reserve(r, check_limits=False)

    async def _read_counters(
        self, scopes: Sequence[Scope], periods: Periods
    ) -> dict[tuple[ScopeKind, str, Window], tuple[int, int, int, int]]:
        """(su, ru, st, rt) of each scope's day and month counter, one script per tenant
        (a key scope's tenant is the tenant scope's, else the one its reserves named)."""
        tenant_scope = next((s.id for s in scopes if s.kind == "tenant"), None)
        unknown = [s.id for s in scopes if s.kind == "key" and s.id not in self._owners]
        if unknown and tenant_scope is None:
            with _faults():
                owners = await self._command("HMGET", self._owner_key, *unknown)
            for key_id, owner in zip(unknown, owners, strict=True):
                if owner is not None:
                    self._owners[key_id] = owner.decode()
        by_tenant: dict[str, list[tuple[ScopeKind, str, Window, str]]] = defaultdict(list)
        for scope in scopes:
            tenant = scope.id if scope.kind == "tenant" else tenant_scope
            tenant = tenant or self._owners.get(scope.id)
            if tenant is None:
                continue  # a key no reservation ever named: nothing counted yet
            for window in _WINDOWS:
                period, _ = _period_of(periods, window)
                by_tenant[tenant].append((scope.kind, scope.id, window, period))
        out: dict[tuple[ScopeKind, str, Window], tuple[int, int, int, int]] = {}
        for tenant, wanted in by_tenant.items():
            keys = [self._marker(tenant)]
            keys += [self._counter_key(tenant, *w) for w in wanted]
            reply = await self._eval(_REMAINING, keys, ())
            if reply[0] == b"lost":
                raise CountersLost("Redis lost the budget counters: rebuild them")
            values = [int(v) for v in reply[1:]]
            for i, (kind, scope_id, window, _) in enumerate(wanted):
                su, ru, st, rt = values[i * 4 : i * 4 + 4]
                out[(kind, scope_id, window)] = (su, ru, st, rt)
        return out

    async def _hint(self, tenant: str) -> None:
        """Name the tenant's slot to sweeps. The reservation is held already, so a
        failure here must not fail the call: the slot is then found by the next full
        scan (``full_scan_every_s``), its expiry at most that much later."""
        try:
            with _faults():
                await self._command("SADD", self._hint_key, _slot_tags()[key_slot(tenant)])
        except StoreUnavailable as exc:
            log.warning("could not hint a slot to the reservation sweep: %s", exc)

    async def _hint_every_slot(self) -> None:
        """The backstop of the hint set: every slot whose index holds a tenant is
        hinted. In chunks, so Redis is never busy with it for more than a few ms."""
        tags = _slot_tags()
        for start in range(0, _SLOTS, _SCAN_CHUNK):
            chunk = tags[start : start + _SCAN_CHUNK]
            try:
                await self._eval(_HINT_SLOTS, (), (self._ns, self._hint_key, ",".join(chunk)))
            except rx.ResponseError as exc:
                if type(exc) is not rx.ResponseError:
                    raise
                await self._hint_slot_by_slot(chunk)

    async def _hint_slot_by_slot(self, tags: Sequence[str]) -> None:
        """``HINT_SLOTS`` for a Cluster of several nodes: one read per slot, pipelined."""
        with _faults():
            pipe = self._r.pipeline(transaction=False)
            for tag in tags:
                pipe.execute_command("ZCARD", f"{self._ns}:{{{tag}}}:due")
            held = [tag for tag, n in zip(tags, await pipe.execute(), strict=True) if n]
            if held:
                await self._command("SADD", self._hint_key, *held)

    async def _due_tenants(self, now_unix_s: float) -> list[str]:
        """Tenants whose earliest lease or claim has come, in the hinted slots: one
        script where Redis allows it, else one read per slot, pipelined."""
        now = repr(now_unix_s)
        try:
            reply = await self._eval(
                _DUE_TENANTS,
                (),
                (self._ns, now, str(_SWEEP_BATCH), self._hint_key, _slot_tags()[0]),
            )
        except rx.ResponseError as exc:
            if type(exc) is not rx.ResponseError:
                raise
            reply = await self._due_tenants_slot_by_slot(now)
        if reply[0] == b"lost":
            raise CountersLost("Redis lost the budget counters: rebuild them")
        return [t.decode() for t in reply[1][:_SWEEP_BATCH]]

    async def _due_tenants_slot_by_slot(self, now: str) -> list[Any]:
        """``DUE_TENANTS`` for a Cluster of several nodes, one command per slot. An empty
        slot leaves the hint set by a separate command: a reserve in between may leave
        its slot unhinted until the next full scan."""
        with _faults():
            tags = [t.decode() for t in await self._command("SMEMBERS", self._hint_key)]
            pipe = self._r.pipeline(transaction=False)
            for tag in [_slot_tags()[0], *tags]:
                pipe.execute_command("EXISTS", f"{self._ns}:{{{tag}}}:ok")
            for tag in tags:
                index = f"{self._ns}:{{{tag}}}:due"
                pipe.execute_command("ZCARD", index)
                pipe.execute_command("ZRANGEBYSCORE", index, "-inf", now, "LIMIT", 0, _SWEEP_BATCH)
            replies = await pipe.execute()
            markers, rest = replies[: len(tags) + 1], replies[len(tags) + 1 :]
            if not all(markers):
                return [b"lost"]
            empty = [tag for tag, n in zip(tags, rest[0::2], strict=True) if not n]
            if empty:
                await self._command("SREM", self._hint_key, *empty)
        return [b"ok", [t for found in rest[1::2] for t in found]]

    async def _claim_expired(self, tenant: str, now_unix_s: float) -> list[Reservation]:
        """Expire one tenant's passed leases and claim what is expired and not yet
        acknowledged (the caller acknowledges); the script keeps the tenant's place in
        its slot's index."""
        prefix = self._prefix(tenant)
        keys = (self._marker(tenant), f"{prefix}lz", f"{prefix}uz", self._index(tenant))
        claimed: list[Reservation] = []
        while True:
            args = (
                repr(now_unix_s),
                repr(now_unix_s + self._claim_s),
                str(_SWEEP_BATCH),
                f"{prefix}r:",
                self._finished_ttl_ms,
                tenant,
            )
            reply = await self._eval(_EXPIRE, keys, args)
            if reply[0] == b"lost":
                raise CountersLost("Redis lost the budget counters: rebuild them")
            _, blobs, more = reply
            claimed += [_reservation_from_json(blob) for blob in blobs]
            if more != b"1":
                return claimed

    async def _command(self, *args: str | bytes | int) -> Any:
        return await self._r.execute_command(*args)

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        with _faults():
            try:
                return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
            except rx.NoScriptError:
                # A restarted (or flushed) Redis forgot its scripts: load and run again.
                # (script_load: a cluster client sends it to every primary.)
                await self._r.script_load(script.source)
                return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)


@contextmanager
def _faults() -> Iterator[None]:
    """Redis faults as StoreUnavailable; an error in a script (a bug) stays what it is."""
    try:
        yield
    except StoreUnavailable:
        raise
    except (rx.ConnectionError, rx.TimeoutError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
    except (rx.OutOfMemoryError, rx.ReadOnlyError, rx.ClusterDownError, rx.TryAgainError) as exc:
        raise StoreUnavailable(f"Redis cannot serve: {exc}") from exc
    except (rx.AskError, rx.NoPermissionError) as exc:
        # A slot served elsewhere (a resharded Cluster), or an ACL that forbids scripts.
        raise StoreUnavailable(f"Redis refused: {exc}") from exc
    except rx.ResponseError as exc:
        if str(exc).startswith(_FAULT_PREFIXES):
            raise StoreUnavailable(f"Redis cannot serve: {exc}") from exc
        raise


def _check_amount(what: str, value: int) -> None:
    if value < 0 or value > MAX_EXACT:
        raise ValueError(f"{what} must be between 0 and 2^53 - 1 (Redis store), got {value}")


def _limits(limits: BudgetLimits, window: Window) -> tuple[int | None, int | None]:
    if window == "day":
        return limits.usd_per_day_nano, limits.tokens_per_day
    return limits.usd_per_month_nano, limits.tokens_per_month


def _limit_values(limits: BudgetLimits) -> Iterator[int]:
    for value in (
        limits.usd_per_day_nano,
        limits.usd_per_month_nano,
        limits.tokens_per_day,
        limits.tokens_per_month,
    ):
        if value is not None:
            yield value


def _limit_arg(limit: int | None, check: bool) -> str:
    return "" if limit is None or not check else str(limit)


def _period_of(periods: Periods, window: Window) -> tuple[str, float]:
    if window == "day":
        return periods.day, periods.day_ends_unix_s
    return periods.month, periods.month_ends_unix_s


def _period_end(window: Window, period: str) -> float:
    """When a ``YYYY-MM-DD`` day or ``YYYY-MM`` month (UTC) ends."""
    if window == "day":
        start = datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=UTC)
        return (start + timedelta(days=1)).timestamp()
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def _reservation_json(r: Reservation) -> bytes:
    return orjson.dumps(
        {
            "id": r.request_id,
            "tenant": r.tenant,
            "scopes": [[s.kind, s.id, [*_all_limits(s.limits)]] for s in r.scopes],
            "periods": [
                r.periods.day,
                r.periods.month,
                r.periods.day_ends_unix_s,
                r.periods.month_ends_unix_s,
            ],
            "usd": r.nano_usd,
            "tokens": r.tokens,
            "lease": r.lease_until_unix_s,
            "key_prefix": r.key_prefix,
            "route": r.route,
        }
    )


def _all_limits(limits: BudgetLimits) -> tuple[int | None, ...]:
    return (
        limits.usd_per_day_nano,
        limits.usd_per_month_nano,
        limits.tokens_per_day,
        limits.tokens_per_month,
    )


def _reservation_from_json(blob: bytes) -> Reservation:
    d = orjson.loads(blob)
    day, month, day_ends, month_ends = d["periods"]
    return Reservation(
        request_id=d["id"],
        tenant=d["tenant"],
        scopes=tuple(Scope(kind, sid, BudgetLimits(*limits)) for kind, sid, limits in d["scopes"]),
        periods=Periods(day, month, day_ends, month_ends),
        nano_usd=d["usd"],
        tokens=d["tokens"],
        lease_until_unix_s=d["lease"],
        key_prefix=d["key_prefix"],
        route=d["route"],
    )
