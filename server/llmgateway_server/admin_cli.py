"""``llmgateway admin ...`` and ``llmgateway usage``: AdminService and UsageService from
the command line, over gRPC to a running gateway.

Keys come from environment variables only (``LLMGATEWAY_ADMIN_KEY``, and for ``usage``
``LLMGATEWAY_API_KEY`` too), never from an argument: an argument lands in the shell's
history and in every process listing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from llmgateway.v1 import admin_pb2 as apb
from llmgateway.v1 import admin_pb2_grpc as apb_grpc
from llmgateway.v1 import usage_pb2 as upb
from llmgateway.v1 import usage_pb2_grpc as upb_grpc

from llmgateway_server.config import environment_value

ADMIN_KEY_ENV = "LLMGATEWAY_ADMIN_KEY"
API_KEY_ENV = "LLMGATEWAY_API_KEY"
TARGET_ENV = "LLMGATEWAY_TARGET"  # as llmgateway-client reads it
DEFAULT_ADDRESS = "127.0.0.1:50051"
_NANO = 1_000_000_000

_KEY_HELP = (
    "The key is read from the environment variable {env}, never from an argument (an "
    "argument would land in your shell history and in process listings)."
)
_BUDGET_FLAGS = (
    ("usd_per_day", "USD per UTC day, a decimal string, e.g. 12.50"),
    ("usd_per_month", "USD per UTC month"),
    ("tokens_per_day", "tokens per UTC day"),
    ("tokens_per_month", "tokens per UTC month"),
)
_RATE_FLAGS = (
    ("requests_per_minute", "calls per minute"),
    ("tokens_per_minute", "tokens per minute"),
)
_INT_FIELDS = {"tokens_per_day", "tokens_per_month", "requests_per_minute", "tokens_per_minute"}


class CommandError(Exception):
    """A usage error of the command line (exit status 2)."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin`` and ``usage`` to the ``llmgateway`` parser."""
    admin = sub.add_parser(
        "admin",
        help="manage tenants and API keys of a running gateway (AdminService)",
        description="Manage the tenants and API keys of a running gateway. "
        + _KEY_HELP.format(env=ADMIN_KEY_ENV),
    )
    admin.set_defaults(func=run)
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)

    tenants = admin_sub.add_parser("tenants", help="create, list, show or change tenants")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    create = _admin_parser(tenants_sub, "create", "create a tenant", _tenant_create)
    create.add_argument("name")
    _tenant_flags(create, unset="leave unlimited")
    _admin_parser(tenants_sub, "list", "list every tenant", _tenant_list)
    get = _admin_parser(tenants_sub, "get", "show a tenant", _tenant_get)
    get.add_argument("name")
    update = _admin_parser(
        tenants_sub,
        "update",
        "change a tenant: only the fields given change ('none' makes a limit unlimited)",
        _tenant_update,
    )
    update.add_argument("name")
    _tenant_flags(update, unset="unchanged")

    keys = admin_sub.add_parser("keys", help="create, list, revoke or rotate API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    key_create = _admin_parser(
        keys_sub,
        "create",
        "issue a key: the key alone is printed on stdout, once",
        _key_create,
    )
    key_create.add_argument("tenant")
    for name, what in _BUDGET_FLAGS:
        key_create.add_argument(_flag(name), metavar="N", help=f"the key's own budget: {what}")
    key_list = _admin_parser(keys_sub, "list", "list a tenant's keys", _key_list)
    key_list.add_argument("tenant")
    revoke = _admin_parser(keys_sub, "revoke", "revoke a key", _key_revoke)
    revoke.add_argument("tenant")
    revoke.add_argument("key_id")
    rotate = _admin_parser(
        keys_sub,
        "rotate",
        "replace a key by a new one (printed on stdout, once) and revoke it",
        _key_rotate,
    )
    rotate.add_argument("tenant")
    rotate.add_argument("key_id")

    usage = sub.add_parser(
        "usage",
        help="calls, tokens and cost from the gateway's ledger (UsageService)",
        description="Calls, tokens and cost from a running gateway's ledger. A tenant's "
        "key sees its own tenant; an admin key every tenant. "
        + _KEY_HELP.format(env=f"{API_KEY_ENV} (or {ADMIN_KEY_ENV} when that is unset)"),
    )
    _connection_flags(usage)
    usage.add_argument(
        "--from",
        dest="start",
        metavar="WHEN",
        help="start (inclusive): YYYY-MM-DD (UTC) or an ISO 8601 time; "
        "default: the start of this UTC month",
    )
    usage.add_argument(
        "--to", dest="end", metavar="WHEN", help="end (exclusive), as --from; default: now"
    )
    usage.add_argument(
        "--group-by",
        default="tenant",
        metavar="G[,G...]",
        help="tenant, key, route, model, provider, day, tag:<name> (default: tenant)",
    )
    usage.add_argument("--tenant", default="", help="only this tenant")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout, with a header")
    # Without a key the call goes out as an anonymous caller: a gateway that admits them
    # (the embedded default, `make run`) shows its anonymous tenant's own usage.
    usage.set_defaults(
        func=run, call=_usage, key_envs=(API_KEY_ENV, ADMIN_KEY_ENV), key_optional=True
    )


# -- parsers ------------------------------------------------------------------------------


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=environment_value(TARGET_ENV) or DEFAULT_ADDRESS,
        help=f"the gateway, host:port (default: ${TARGET_ENV}, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def _admin_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    what: str,
    func: Callable[[argparse.Namespace, apb_grpc.AdminServiceStub, tuple[Any, ...]], int],
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=what,
        description=f"{what[0].upper()}{what[1:]}. " + _KEY_HELP.format(env=ADMIN_KEY_ENV),
    )
    _connection_flags(parser)
    parser.set_defaults(call=_admin_call(func), key_envs=(ADMIN_KEY_ENV,))
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _tenant_flags(parser: argparse.ArgumentParser, *, unset: str) -> None:
    parser.add_argument(
        "--routes", metavar="R[,R...]", help=f"routes the tenant may use, '*' for all ({unset})"
    )
    for name, what in (*_BUDGET_FLAGS, *_RATE_FLAGS):
        parser.add_argument(_flag(name), metavar="N", help=f"{what} ({unset})")


# -- running a command --------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``admin`` or ``usage`` command; the exit status."""
    try:
        key = _key(args.key_envs, optional=getattr(args, "key_optional", False))
        metadata = (("authorization", f"Bearer {key}"),) if key is not None else ()
        with grpc.insecure_channel(args.address) as channel:
            code: int = args.call(args, channel, metadata)
            return code
    except CommandError as exc:
        print(f"llmgateway: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"llmgateway: {_describe(exc)}", file=sys.stderr)
        return 1


def _key(envs: Sequence[str], *, optional: bool = False) -> str | None:
    for env in envs:
        value = environment_value(env)
        if value is not None:
            return value
    if optional:
        return None
    raise CommandError(
        f"set {' or '.join(envs)} to the key to call with "
        "(never pass a key as an argument: it would land in your shell history)"
    )


def _admin_call(
    func: Callable[[argparse.Namespace, apb_grpc.AdminServiceStub, tuple[Any, ...]], int],
) -> Callable[[argparse.Namespace, grpc.Channel, tuple[Any, ...]], int]:
    def call(args: argparse.Namespace, channel: grpc.Channel, metadata: tuple[Any, ...]) -> int:
        return func(args, apb_grpc.AdminServiceStub(channel), metadata)

    return call


def _describe(exc: grpc.RpcError) -> str:
    """CODE, ErrorInfo reason, message and each field violation of a failed call."""
    call: Any = exc  # the RpcError of a finished call is also a grpc.Call
    if not callable(getattr(call, "code", None)):
        return str(exc)
    text = f"{call.code().name}: {call.details()}"
    raw = dict(call.trailing_metadata() or ()).get("grpc-status-details-bin")
    if isinstance(raw, bytes):
        status = status_pb2.Status.FromString(raw)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                text = f"{call.code().name} {info.reason}: {call.details()}"
            elif detail.Unpack(bad):
                text += "".join(f"\n  {v.field}: {v.description}" for v in bad.field_violations)
    return text


def _print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


# -- tenants ------------------------------------------------------------------------------


def _tenant_message(args: argparse.Namespace) -> tuple[apb.Tenant, list[str]]:
    """The tenant the flags describe, and the mask of the fields they set."""
    tenant = apb.Tenant(name=args.name)
    paths: list[str] = []
    if args.routes is not None:
        tenant.routes.extend(r.strip() for r in args.routes.split(",") if r.strip())
        paths.append("routes")
    for group, flags in (("budgets", _BUDGET_FLAGS), ("rate_limits", _RATE_FLAGS)):
        target = getattr(tenant, group)
        for name, _ in flags:
            value = getattr(args, name)
            if value is None:
                continue
            paths.append(f"{group}.{name}")
            _set_limit(target, name, value)
    return tenant, paths


def _set_limit(target: Message, name: str, value: str) -> None:
    target.SetInParent()
    if value.lower() == "none":
        target.ClearField(name)
    elif name in _INT_FIELDS:
        try:
            setattr(target, name, int(value))
        except ValueError:
            raise CommandError(f"{_flag(name)}: {value!r} is not a whole number") from None
    else:
        setattr(target, name, value)


def _tenant_create(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    tenant, _ = _tenant_message(args)
    reply = stub.CreateTenant(
        apb.CreateTenantRequest(tenant=tenant), metadata=md, timeout=args.timeout
    )
    _show_tenant(args, reply.tenant)
    return 0


def _tenant_list(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    reply = stub.ListTenants(apb.ListTenantsRequest(), metadata=md, timeout=args.timeout)
    if args.json:
        _print_json(reply)
        return 0
    _table(
        ["name", "defined_in", "routes", "budgets", "rate_limits"],
        [
            [
                t.name,
                "config" if t.config_defined else "store",
                ",".join(t.routes),
                _limits(t.budgets) or "-",
                _limits(t.rate_limits) or "-",
            ]
            for t in reply.tenants
        ],
    )
    return 0


def _tenant_get(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    reply = stub.GetTenant(apb.GetTenantRequest(name=args.name), metadata=md, timeout=args.timeout)
    _show_tenant(args, reply.tenant)
    return 0


def _tenant_update(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    tenant, paths = _tenant_message(args)
    if not paths:
        raise CommandError("nothing to change: give --routes or a limit flag")
    reply = stub.UpdateTenant(
        apb.UpdateTenantRequest(tenant=tenant, update_mask=field_mask_pb2.FieldMask(paths=paths)),
        metadata=md,
        timeout=args.timeout,
    )
    _show_tenant(args, reply.tenant)
    return 0


def _show_tenant(args: argparse.Namespace, tenant: apb.Tenant) -> None:
    if args.json:
        _print_json(tenant)
        return
    print(f"name: {tenant.name}")
    print(f"defined_in: {'config' if tenant.config_defined else 'store'}")
    print(f"routes: {','.join(tenant.routes)}")
    print(f"budgets: {_limits(tenant.budgets) or 'unlimited'}")
    print(f"rate_limits: {_limits(tenant.rate_limits) or 'unlimited'}")
    if tenant.HasField("create_time"):
        print(f"created: {_when(tenant.create_time)}")


def _limits(message: Message) -> str:
    """'usd_per_day=12.5 tokens_per_month=1000': the limits that are set."""
    return " ".join(f"{field.name}={value}" for field, value in message.ListFields())


# -- keys ---------------------------------------------------------------------------------


def _key_create(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    request = apb.CreateKeyRequest(tenant=args.tenant)
    for name, _ in _BUDGET_FLAGS:
        value = getattr(args, name)
        if value is not None:
            _set_limit(request.budgets, name, value)
    reply = stub.CreateKey(request, metadata=md, timeout=args.timeout)
    _show_new_key(args, reply, reply.key, reply.api_key, "created")
    return 0


def _key_rotate(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    reply = stub.RotateKey(
        apb.RotateKeyRequest(tenant=args.tenant, key_id=args.key_id),
        metadata=md,
        timeout=args.timeout,
    )
    _show_new_key(
        args, reply, reply.key, reply.api_key, f"revoked key {reply.revoked_key.id}; created"
    )
    return 0


def _show_new_key(
    args: argparse.Namespace, reply: Message, key: apb.Key, api_key: str, done: str
) -> None:
    """The key alone on stdout (``KEY=$(llmgateway admin keys create t)``), the rest on
    stderr."""
    if args.json:
        _print_json(reply)
        return
    print(api_key)
    print(
        f"{done} key {key.id} (prefix {key.prefix}) for tenant {key.tenant}: "
        "store it now, it is not shown again",
        file=sys.stderr,
    )


def _key_list(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    reply = stub.ListKeys(
        apb.ListKeysRequest(tenant=args.tenant), metadata=md, timeout=args.timeout
    )
    if args.json:
        _print_json(reply)
        return 0
    _table(
        ["id", "prefix", "created", "last_used", "revoked", "budgets"],
        [
            [
                k.id,
                k.prefix,
                _when(k.create_time),
                _when(k.last_use_time) if k.HasField("last_use_time") else "-",
                _when(k.revoke_time) if k.HasField("revoke_time") else "-",
                _limits(k.budgets) or "-",
            ]
            for k in reply.keys
        ],
    )
    return 0


def _key_revoke(
    args: argparse.Namespace, stub: apb_grpc.AdminServiceStub, md: tuple[Any, ...]
) -> int:
    reply = stub.RevokeKey(
        apb.RevokeKeyRequest(tenant=args.tenant, key_id=args.key_id),
        metadata=md,
        timeout=args.timeout,
    )
    if args.json:
        _print_json(reply)
    else:
        key = reply.key
        print(f"revoked key {key.id} (prefix {key.prefix}) at {_when(key.revoke_time)}")
    return 0


# -- usage --------------------------------------------------------------------------------


def _usage(args: argparse.Namespace, channel: grpc.Channel, md: tuple[Any, ...]) -> int:
    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    request = upb.GetUsageRequest(group_by=group_by, tenant=args.tenant)
    now = datetime.now(tz=UTC)
    start = (
        _parse_when(args.start, "--from")
        if args.start
        else datetime(now.year, now.month, 1, tzinfo=UTC)
    )
    request.start_time.FromDatetime(start)
    if args.end:
        request.end_time.FromDatetime(_parse_when(args.end, "--to"))
    reply = upb_grpc.UsageServiceStub(channel).GetUsage(request, metadata=md, timeout=args.timeout)
    if args.json:
        _print_json(reply)
        return 0
    groups = group_by or ["tenant"]
    header = [
        *groups,
        "calls",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "reasoning_tokens",
        "image_input_tokens",
    ]
    rows = [
        [
            *(r.group.get(g, "") for g in groups),
            str(r.call_count),
            str(r.input_token_count),
            str(r.output_token_count),
            str(r.cached_input_token_count),
            str(r.cache_write_input_token_count),
            str(r.cache_write_1h_input_token_count),
            str(r.reasoning_token_count),
            str(r.image_input_token_count),
        ]
        for r in reply.rows
    ]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*header, "cost_nano_usd", "cost_usd"])
        for row, r in zip(rows, reply.rows, strict=True):
            writer.writerow([*row, r.cost_nano_usd, _usd(r.cost_nano_usd)])
        return 0
    _table(
        [*header, "cost_usd"],
        [[*row, _usd(r.cost_nano_usd)] for row, r in zip(rows, reply.rows, strict=True)],
    )
    return 0


def _parse_when(value: str, flag: str) -> datetime:
    """YYYY-MM-DD (UTC midnight) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{flag}: {value!r} is not YYYY-MM-DD or an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _usd(nano: int) -> str:
    """Exact decimal USD with 9 places: cost columns line up and add up."""
    sign = "-" if nano < 0 else ""
    whole, fraction = divmod(abs(nano), _NANO)
    return f"{sign}{whole}.{fraction:09d}"


# -- output -------------------------------------------------------------------------------


def _when(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
