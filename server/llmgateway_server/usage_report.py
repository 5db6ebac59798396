"""UsageService's logic, protobuf-free: who may see which tenant's usage, and the query.

A tenant's key sees its own tenant only (asking for another is TENANT_ACCESS_DENIED); an
admin key sees every tenant, or the one it names. Groups are named as the caller wrote
them: ``tenant``, ``key``, ``route``, ``model``, ``provider``, ``day`` and one
``tag:<name>``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from llmgateway_server.auth import Caller
from llmgateway_server.errors import (
    FieldViolation,
    StorageUnavailable,
    TenantAccessDenied,
    invalid_request,
)
from llmgateway_server.storage.base import (
    GroupBy,
    StoreUnavailable,
    UsageQuery,
    UsageReader,
)

PLAIN_GROUPS: tuple[GroupBy, ...] = ("tenant", "key", "route", "model", "provider", "day")
TAG_GROUP = "tag:"
MAX_GROUPS = 8
# What a request tag's key may be (transport/convert.py accepts the same).
_TAG_NAME = re.compile(r"[A-Za-z0-9_.:/\-]{1,64}")

STORE_DOWN = "the usage ledger is unavailable"


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One group of a report; ``group`` keyed by the group_by entries as written. The
    token sums are those of ``storage.base.UsageRow``."""

    group: Mapping[str, str]
    calls: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_nano_usd: int
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    image_input_tokens: int = 0


class UsageReports:
    """Answers GetUsage from the ledger."""

    def __init__(self, reader: UsageReader, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._reader = reader
        self._wall = wall_clock

    async def usage(
        self,
        caller: Caller,
        *,
        start_unix_s: float | None,
        end_unix_s: float | None,
        group_by: Sequence[str],
        tenant: str,
    ) -> list[UsageLine]:
        """Usage over ``[start, end)`` (end None: now) by ``group_by`` (empty: by tenant),
        of ``tenant`` ("" : every tenant the caller may see)."""
        violations: list[FieldViolation] = []
        end = self._wall() if end_unix_s is None else end_unix_s
        if start_unix_s is None:
            violations.append(FieldViolation("start_time", "is required"))
        elif end <= start_unix_s:
            violations.append(FieldViolation("end_time", "must be after start_time"))
        groups, tag_name = _groups(group_by or ("tenant",), violations)
        if violations:
            raise invalid_request(violations)
        assert start_unix_s is not None
        query = UsageQuery(
            start_unix_s=start_unix_s,
            end_unix_s=end,
            group_by=groups,
            tenant=_visible_tenant(caller, tenant),
            tag_name=tag_name,
        )
        try:
            rows = await self._reader.usage(query)
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        names = list(group_by or ("tenant",))
        return [
            UsageLine(
                group={name: row.group.get(_stored(name), "") for name in names},
                calls=row.calls,
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                cached_input_tokens=row.cached_input_tokens,
                cost_nano_usd=row.cost_nano_usd,
                cache_write_tokens=row.cache_write_tokens,
                cache_write_1h_tokens=row.cache_write_1h_tokens,
                reasoning_tokens=row.reasoning_tokens,
                image_input_tokens=row.image_input_tokens,
            )
            for row in rows
        ]


def _visible_tenant(caller: Caller, tenant: str) -> str | None:
    """The tenant the query is restricted to (None: all), or TenantAccessDenied."""
    if caller.admin:
        return tenant or None
    if tenant and tenant != caller.tenant:
        raise TenantAccessDenied(
            "a tenant's key sees only its own tenant's usage",
            metadata={"tenant": caller.tenant},
        )
    return caller.tenant


def _groups(
    group_by: Sequence[str], violations: list[FieldViolation]
) -> tuple[tuple[GroupBy, ...], str]:
    groups: list[GroupBy] = []
    tag_name = ""
    if len(group_by) > MAX_GROUPS:
        violations.append(FieldViolation("group_by", f"at most {MAX_GROUPS} entries"))
        return (), ""
    for i, entry in enumerate(group_by):
        field = f"group_by[{i}]"
        if entry.startswith(TAG_GROUP):
            name = entry[len(TAG_GROUP) :]
            if not _TAG_NAME.fullmatch(name):
                violations.append(FieldViolation(field, "'tag:' must be followed by a tag name"))
            elif tag_name:
                violations.append(FieldViolation(field, "at most one 'tag:<name>'"))
            else:
                tag_name = name
                groups.append("tag")
            continue
        plain = next((g for g in PLAIN_GROUPS if g == entry), None)
        if plain is None:
            violations.append(
                FieldViolation(
                    field,
                    f"must be one of {', '.join(PLAIN_GROUPS)} or 'tag:<name>', not {entry[:64]!r}",
                )
            )
        elif plain in groups:
            violations.append(FieldViolation(field, f"{entry!r} is there already"))
        else:
            groups.append(plain)
    return tuple(groups), tag_name


def _stored(name: str) -> str:
    """The key a UsageRow's group has for a group_by entry as written."""
    return "tag" if name.startswith(TAG_GROUP) else name
