"""``llmgateway run | check-config | health | migrate | admin | usage``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from llmgateway_server import admin_cli
from llmgateway_server.config import (
    GatewayConfig,
    load_config,
    resolve_admin_keys,
    resolve_secrets,
    resolve_storage_url,
    secret_values,
)
from llmgateway_server.errors import ConfigError


def _load(path: str | None) -> GatewayConfig:
    return load_config(path)


def _run(args: argparse.Namespace) -> int:
    from llmgateway_server.app import build_components, open_storage, serve
    from llmgateway_server.observability import configure_logging

    config = _load(args.config)
    provider_keys, tenant_keys = resolve_secrets(config)
    admin_keys = resolve_admin_keys(config)
    logs = configure_logging(config.server.log_level, secret_values(config))
    if config.server.event_loop == "uvloop":
        import uvloop

        uvloop.install()

    async def main() -> None:
        storage = await open_storage(config)
        components = build_components(
            config, provider_keys, tenant_keys, storage=storage, admin_keys=admin_keys
        )
        await serve(config, components, listen=args.listen)

    try:
        asyncio.run(main())
    finally:
        logs.stop()  # the listener thread writes every queued record before we exit
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    secret_values(config)  # every referenced secret and environment proxy resolves
    print(
        f"{args.file}: ok ({len(config.providers)} providers, {len(config.targets)} targets, "
        f"{len(config.routes)} routes)"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from llmgateway_server.storage.base import SchemaTooNew, StoreUnavailable
    from llmgateway_server.storage.sqlite import migrate_file

    config = _load(args.config)
    path = config.storage.sqlite_path
    try:
        print(f"sqlite {path}: schema version {migrate_file(path)}")
        ledger_url = resolve_storage_url(config, "ledger")
        if ledger_url is not None:
            from llmgateway_server.storage.postgres import migrate as migrate_postgres

            version = asyncio.run(migrate_postgres(ledger_url))
            print(f"postgresql (storage.ledger_url): schema version {version}")
    except (SchemaTooNew, StoreUnavailable) as exc:
        print(f"llmgateway migrate: {exc}", file=sys.stderr)
        return 1
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmgateway`` command."""
    parser = argparse.ArgumentParser(
        prog="llmgateway", description="gRPC gateway for LLM providers"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="start the gateway (the embedded offline default without --config)"
    )
    run.add_argument("--config", help="YAML config file")
    run.add_argument("--listen", help="override server.listen, e.g. 0.0.0.0:50051")
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate a config file and its secret references")
    check.add_argument("file")
    check.set_defaults(func=_check_config)
    health = sub.add_parser("health", help="query grpc.health.v1 (exit 0 when SERVING)")
    health.add_argument("--address", default="127.0.0.1:50051")
    health.add_argument("--service", default="")
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=_health)
    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the configured databases (SQLite file, PostgreSQL ledger) "
        "and print their schema versions (the gateway also does this when it starts)",
    )
    migrate.add_argument("--config", help="YAML config file (default: the embedded one)")
    migrate.set_defaults(func=_migrate)
    admin_cli.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"llmgateway: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
