"""Composition root: the only place that builds concrete classes, and the server's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from llmgateway.v1 import gateway_pb2, gateway_pb2_grpc

from llmgateway_server.admin import Admin, config_tenant_records
from llmgateway_server.auth import Authenticator
from llmgateway_server.clock import Clock, SystemClock
from llmgateway_server.config import (
    AnthropicProviderConfig,
    GatewayConfig,
    MockProviderConfig,
    OpenAICompatibleProviderConfig,
    OpenAIProviderConfig,
    ProviderConfig,
    naive_budgets_for_tests,
    resolve_proxies,
    resolve_storage_url,
)
from llmgateway_server.errors import ConfigError
from llmgateway_server.gateway import Gateway
from llmgateway_server.guardrails.classifier import Moderate
from llmgateway_server.guardrails.rules import build_guardrails
from llmgateway_server.key_cache import StoreKeyCache
from llmgateway_server.pipeline import Pipeline, Policy
from llmgateway_server.pipeline.budget import BudgetPolicy, sweep_abandoned
from llmgateway_server.pipeline.context_window import ContextWindowPolicy
from llmgateway_server.pipeline.cost_guard import CostGuardPolicy
from llmgateway_server.pipeline.guardrails import GuardrailsPolicy
from llmgateway_server.pipeline.ledger import LedgerPolicy
from llmgateway_server.providers.anthropic import AnthropicProvider
from llmgateway_server.providers.base import Provider
from llmgateway_server.providers.http import HttpTransportName, build_upstream_client
from llmgateway_server.providers.mock import MockProvider
from llmgateway_server.providers.openai import OpenAIProvider
from llmgateway_server.providers.proxy import ProxyRoute
from llmgateway_server.providers.tls import TlsSettings
from llmgateway_server.routes import build_routes
from llmgateway_server.routing import Router
from llmgateway_server.secrets import Secret
from llmgateway_server.storage.base import (
    BudgetStore,
    StoreUnavailable,
    TenantStore,
    UsageLedger,
    UsageReader,
)
from llmgateway_server.storage.log_ledger import LogLedger
from llmgateway_server.storage.sqlite import (
    SqliteBudgetStore,
    SqliteDatabase,
    SqliteLedger,
    SqliteTenantStore,
)
from llmgateway_server.tokens import Tokenizers
from llmgateway_server.transport.admin_servicer import add_admin_services
from llmgateway_server.transport.interceptors import RequestContextInterceptor
from llmgateway_server.transport.servicer import GatewayServicer
from llmgateway_server.usage_report import UsageReports

log = logging.getLogger("llmgateway.server")

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def build_provider(
    name: str,
    config: ProviderConfig,
    key: Secret | None,
    transport: HttpTransportName,
    *,
    proxy: ProxyRoute | None = None,
) -> Provider:
    """One provider adapter with its own connection pool (through ``proxy`` when set)."""
    if isinstance(config, MockProviderConfig):
        return MockProvider(
            name,
            first_token_latency_s=config.first_token_latency_ms / 1000,
            chunk_latency_s=config.chunk_latency_ms / 1000,
            words_per_chunk=config.words_per_chunk,
            reply=config.reply,
        )
    try:
        client = build_upstream_client(
            transport=transport,
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_keepalive_connections,
            keepalive_expiry_s=config.keepalive_expiry_s,
            connect_timeout_s=config.connect_timeout_s,
            pool_timeout_s=config.pool_timeout_s,
            proxy=proxy,
            tls=TlsSettings(
                ca_bundle=config.ca_bundle,
                client_cert=config.client_cert,
                client_key=config.client_key,
            ),
        )
    except ConfigError as exc:  # a PEM file that does not load: name the provider
        raise ConfigError(f"providers.{name}: {exc}") from None
    if isinstance(config, AnthropicProviderConfig):
        assert key is not None, "config validation requires an anthropic key"
        return AnthropicProvider(
            name,
            client,
            base_url=config.base_url,
            api_key=key,
            anthropic_version=config.anthropic_version,
        )
    if isinstance(config, OpenAIProviderConfig | OpenAICompatibleProviderConfig):
        return OpenAIProvider(
            name,
            client,
            base_url=config.base_url,
            api_key=key,
            stream_usage=getattr(config, "stream_usage", True),
        )
    raise AssertionError(f"unhandled provider config {type(config).__name__}")


def _moderation_of(provider: Provider) -> Moderate:
    """The moderation call of a provider a classifier names (config validation makes
    sure it is an OpenAI-format one)."""
    assert isinstance(provider, OpenAIProvider), "a classifier's provider speaks OpenAI"

    async def moderate(model: str, text: str) -> tuple[bool, Mapping[str, float]]:
        # The classifier's own timeout bounds the wait; this one only caps the exchange.
        return await provider.moderate(model, text, timeout_s=60.0)

    return moderate


@dataclass
class Storage:
    """The stores of one process, opened from ``storage:`` in the config."""

    ledger: UsageLedger
    reader: UsageReader
    budgets: BudgetStore
    tenants: TenantStore

    async def aclose(self) -> None:
        """Close every store (the ledger last: it may still be flushing)."""
        await self.budgets.aclose()
        await self.tenants.aclose()
        await self.ledger.aclose()


async def open_storage(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> Storage:
    """Open (creating and migrating as needed) the stores the config names: on one node
    everything in the SQLite file of ``storage.url``; with ``storage.ledger_url`` the
    ledger (its outbox beside the SQLite file) and the tenants in PostgreSQL; with
    ``storage.budgets_url`` the budgets and rate limits in Redis."""
    path = config.storage.sqlite_path
    db = await SqliteDatabase.open(path)  # each store holds it open; the last closes it
    redis_url = resolve_storage_url(config, "budgets", environ)
    budgets: BudgetStore
    if redis_url is None:
        budgets = SqliteBudgetStore(db, naive_for_tests=naive_budgets_for_tests())
    else:
        # Imported only when configured: a single node does not pay for the client's
        # memory (redis-py, psycopg: about 20 MB resident together).
        from llmgateway_server.storage.redis_budgets import RedisBudgetStore

        budgets = RedisBudgetStore.from_url(
            redis_url,
            cluster=config.storage.budgets_cluster,
            naive_for_tests=naive_budgets_for_tests(),
        )
    postgres_url = resolve_storage_url(config, "ledger", environ)
    if postgres_url is None:
        sqlite_ledger = SqliteLedger(db)
        return Storage(sqlite_ledger, sqlite_ledger, budgets, SqliteTenantStore(db))
    from llmgateway_server.storage.postgres import (
        PostgresLedger,
        PostgresTenantStore,
        outbox_path_for,
    )
    from llmgateway_server.storage.postgres import migrate as migrate_postgres

    await migrate_postgres(postgres_url)
    ledger = await PostgresLedger.open(postgres_url, outbox_path_for(path))
    tenants = await PostgresTenantStore.open(postgres_url)
    return Storage(ledger, ledger, budgets, tenants)


@dataclass
class Components:
    """Everything the server runs on, built from one config."""

    gateway: Gateway
    authenticator: Authenticator
    providers: dict[str, Provider]
    ledger: UsageLedger
    storage: Storage | None = None
    lease_sweep_s: float = 5.0
    # AdminService / UsageService and the store keys' cache: only with a storage.
    admin: Admin | None = None
    usage: UsageReports | None = None
    key_cache: StoreKeyCache | None = None


def build_components(
    config: GatewayConfig,
    provider_keys: Mapping[str, Secret | None],
    tenant_keys: Mapping[str, str],
    *,
    clock: Clock | None = None,
    ledger: UsageLedger | None = None,
    proxies: Mapping[str, ProxyRoute | None] | None = None,
    storage: Storage | None = None,
    admin_keys: Collection[str] = (),
) -> Components:
    """Wire the gateway from a validated config and the resolved secrets.

    ``proxies``: each provider's HTTP proxy; by default ``resolve_proxies(config)``, which
    reads the proxy variables of the environment for providers that set ``trust_env``.
    """
    clock = clock or SystemClock()
    transport = config.server.http_transport
    proxies = resolve_proxies(config) if proxies is None else proxies
    providers = {
        name: build_provider(name, pc, provider_keys.get(name), transport, proxy=proxies.get(name))
        for name, pc in config.providers.items()
    }
    tokenizers = Tokenizers(config.tokenizer.encodings_dir)
    routes = build_routes(config, providers, tokenizers)
    # Store keys authenticate beside the config's (config first), through a short cache.
    key_cache = StoreKeyCache(storage.tenants) if storage is not None else None
    authenticator = Authenticator(
        tenant_keys,
        {t.name: t.routes for t in config.auth.tenants},
        config.auth.anonymous_tenant,
        budgets_by_tenant={t.name: t.budgets.limits() for t in config.auth.tenants},
        rate_limits_by_tenant={t.name: t.rate_limits.limits() for t in config.auth.tenants},
        admin_digests=admin_keys,
        store_keys=key_cache,
    )
    ledger = ledger or (storage.ledger if storage is not None else LogLedger())
    # Ledger first so its record is written last; the prompt is planned (and trimmed)
    # before the cost guard prices it, and both before the budget reserves for it.
    ledger_policy = LedgerPolicy(ledger, clock)
    policies: list[Policy] = [ledger_policy]
    guardrails = build_guardrails(config, lambda name: _moderation_of(providers[name]))
    if guardrails.any:
        # Before the prompt is counted and priced: those follow the redacted prompt.
        policies.append(GuardrailsPolicy(guardrails))
    policies += [ContextWindowPolicy(), CostGuardPolicy()]
    if storage is not None:
        policies.append(
            BudgetPolicy(
                storage.budgets,
                clock,
                fail_open=config.budgets.on_store_error == "open",
                lease_grace_s=config.budgets.lease_grace_s,
                ledger=storage.reader,
            )
        )
    pipeline = Pipeline(policies, Router(clock), clock)
    gateway = Gateway(
        routes=routes,
        pipeline=pipeline,
        authenticator=authenticator,
        ledger=ledger_policy,
        clock=clock,
        default_deadline_s=config.server.default_deadline_s,
    )
    return Components(
        gateway=gateway,
        authenticator=authenticator,
        providers=providers,
        ledger=ledger,
        storage=storage,
        admin=None
        if storage is None
        else Admin(
            storage.tenants,
            config_tenants=config_tenant_records(config.auth),
            route_names=config.routes,
            key_cache=key_cache,
        ),
        usage=None if storage is None else UsageReports(storage.reader),
        key_cache=key_cache,
        lease_sweep_s=config.budgets.lease_sweep_s,
    )


def release_startup_memory() -> None:
    """Hand the heap that start-up churned through (config parsing, BPE file decoding)
    back to the OS, so resident memory reflects what the server keeps."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim with
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def server_options(config: GatewayConfig) -> list[tuple[str, int]]:
    """Message-size limits and keepalive: reject oversized requests, reap dead peers."""
    s = config.server
    return [
        ("grpc.max_receive_message_length", s.max_request_bytes),
        ("grpc.max_send_message_length", s.max_response_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", 30 * 60_000),
        ("grpc.so_reuseport", 0),
    ]


class GatewayServer:
    """The gRPC server: gateway service, health, reflection, graceful shutdown."""

    def __init__(self, config: GatewayConfig, components: Components) -> None:
        self._config = config
        self._components = components
        self.health = health_aio.HealthServicer()
        self._server = aio.server(
            interceptors=[
                RequestContextInterceptor(
                    components.authenticator, access_log_enabled=config.server.access_log
                )
            ],
            options=server_options(config),
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(components.gateway), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        admin_services: tuple[str, ...] = ()
        if components.admin is not None and components.usage is not None:
            admin_services = add_admin_services(
                self._server, admin=components.admin, usage=components.usage
            )
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                *admin_services,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.port = 0
        self._stopped = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, listen: str | None = None) -> int:
        """Bind, start, and report SERVING. Returns the bound port."""
        address = listen or self._config.server.listen
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        storage = self._components.storage
        if storage is not None:
            self._sweeper = asyncio.create_task(
                _sweep_leases(storage.budgets, self._components.ledger, self._components)
            )
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish within the
        grace period, cancel the rest, then close the providers and the ledger."""
        if self._stopped.is_set():
            return
        grace = self._config.server.grace_period_s if grace_s is None else grace_s
        log.info("shutting down", extra={"grace_period_s": grace})
        await self.health.enter_graceful_shutdown()
        if self._config.server.drain_delay_s:
            await asyncio.sleep(self._config.server.drain_delay_s)
        await self._server.stop(grace)
        for provider in self._components.providers.values():
            await provider.aclose()
        await self._components.gateway.drain()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._components.key_cache is not None:
            await self._components.key_cache.aclose()  # writes the keys' last use
        if self._components.storage is not None:
            await self._components.storage.aclose()
        else:
            await self._components.ledger.aclose()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        """Until ``stop`` has finished."""
        await self._stopped.wait()


async def _sweep_leases(store: BudgetStore, ledger: UsageLedger, components: Components) -> None:
    """Every few seconds (and at once, at start-up): charge the reservations of calls
    whose process died and record them as abandoned. Hourly, on SQLite, forget finished
    reservations older than a week (Redis expires its own): a request id is refused as
    reused for that long."""
    next_prune = 0.0
    while True:
        now = time.time()
        try:
            await sweep_abandoned(store, ledger, now)
            if isinstance(store, SqliteBudgetStore) and now >= next_prune:
                await store.prune(now - _REQUEST_ID_MEMORY_S)
                next_prune = now + 3600
        except StoreUnavailable:
            log.warning("lease sweep: the budget store is unavailable; retrying")
        await asyncio.sleep(components.lease_sweep_s)


_REQUEST_ID_MEMORY_S = 7 * 86_400


async def serve(
    config: GatewayConfig, components: Components, *, listen: str | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = GatewayServer(config, components)
    port = await server.start(listen)
    release_startup_memory()
    host = (listen or config.server.listen).rpartition(":")[0]
    log.info("serving", extra={"address": f"{host}:{port}", "routes": sorted(config.routes)})
    loop = asyncio.get_running_loop()
    stop_tasks: set[asyncio.Task[None]] = set()

    def on_signal(signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        task = loop.create_task(server.stop())
        stop_tasks.add(task)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    print(f"llmgateway listening on {host}:{port}", flush=True)
    print(
        f"try: llmgateway-client --target {host}:{port} complete --model "
        f'{next(iter(sorted(config.routes)))} "Hello"',
        flush=True,
    )
    try:
        await server.wait_stopped()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
