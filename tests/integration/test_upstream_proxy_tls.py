"""Proxies, CA bundles and client certificates, for every selectable transport.

A real proxy on loopback (tests/support/connect_proxy.py, CONNECT and forwarding, with
a record of what it relayed) and trustme certificates; the settings go in the way the
gateway builds them: config -> ``resolve_proxies`` / ``TlsSettings`` ->
``build_upstream_client``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import httpx
import pytest
import trustme
from llmgateway_server.config import parse_config, resolve_proxies
from llmgateway_server.errors import ConfigError
from llmgateway_server.providers.http import (
    HttpTransportName,
    UpstreamClient,
    build_upstream_client,
    read_body,
)
from llmgateway_server.providers.proxy import ProxyRoute
from llmgateway_server.providers.tls import TlsSettings, client_ssl_context

from tests.support.connect_proxy import ConnectProxy
from tests.support.raw_http import RawConnection, RawRequest, RawServer

TRANSPORTS: tuple[str, ...] = get_args(HttpTransportName)
OK_HI = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"


async def ok_hi(conn: RawConnection, request: RawRequest) -> bool:
    await conn.send(OK_HI)
    return True


@dataclass(frozen=True)
class Pki:
    """An internal CA (trustme) and PEM files for the client side."""

    ca: trustme.CA
    ca_bundle: str
    client_cert: str  # certificate chain and key in one file
    client_cert_only: str
    client_key_only: str

    def server_context(
        self, name: str = "127.0.0.1", *, require_client_cert: bool = False
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(name).configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("pki")
    ca_bundle = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_bundle))
    client = ca.issue_cert("llmgateway-client")
    both = folder / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(both))
    cert_only = folder / "client-cert.pem"
    for i, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(cert_only), append=i > 0)
    key_only = folder / "client-key.pem"
    client.private_key_pem.write_to_path(str(key_only))
    return Pki(ca, str(ca_bundle), str(both), str(cert_only), str(key_only))


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


Make = Callable[..., UpstreamClient]


@pytest.fixture
async def make(transport: str) -> AsyncIterator[Make]:
    """Builds clients on the transport under test (``proxy=``, ``tls=``); closes them."""
    built: list[UpstreamClient] = []

    def factory(
        *, proxy: ProxyRoute | None = None, tls: TlsSettings | None = None
    ) -> UpstreamClient:
        client = build_upstream_client(
            transport=transport,  # type: ignore[arg-type]
            max_connections=4,
            max_keepalive_connections=4,
            keepalive_expiry_s=30.0,
            connect_timeout_s=2.0,
            proxy=proxy,
            tls=tls,
        )
        built.append(client)
        return client

    yield factory
    for client in built:
        await client.aclose()


async def post(client: UpstreamClient, url: str) -> bytes:
    async with asyncio.timeout(10):
        async with client.post(
            httpx.URL(url), headers=(("content-type", "application/json"),), body=b"{}", timeout_s=5
        ) as response:
            assert response.status_code == 200
            return await read_body(response)


def provider_config(base_url: str, extra: str = "") -> str:
    """A one-provider gateway config whose provider has the settings in ``extra``."""
    return f"""
providers:
  up:
    type: openai_compatible
    base_url: {base_url}
{extra}
targets:
  t: {{provider: up, model: m, context_window: 1000}}
routes:
  r: {{targets: [t]}}
auth: {{anonymous_tenant: local}}
"""


# -- proxies -----------------------------------------------------------------------------------


async def test_https_upstream_goes_through_the_proxy_in_a_connect_tunnel(
    make: Make, pki: Pki
) -> None:
    async with (
        ConnectProxy() as proxy,
        RawServer(ok_hi, ssl_context=pki.server_context()) as server,
    ):
        route = resolve_proxies(
            parse_config(provider_config(server.url, f"    proxy: {proxy.url}"))
        )["up"]
        client = make(proxy=route, tls=TlsSettings(ca_bundle=pki.ca_bundle))
        assert await post(client, f"{server.url}/v1/chat/completions") == b"hi"
        assert await post(client, f"{server.url}/v1/chat/completions") == b"hi"
    # One tunnel, reused: TLS end to end inside it (the proxy saw no request line).
    assert [(r.method, r.target) for r in proxy.relayed] == [
        ("CONNECT", f"127.0.0.1:{server.port}")
    ]
    assert [r.line for r in server.requests] == ["POST /v1/chat/completions HTTP/1.1"] * 2
    assert len(server.connections) == 1


async def test_http_upstream_goes_through_the_proxy_in_absolute_form(make: Make) -> None:
    async with ConnectProxy() as proxy, RawServer(ok_hi) as server:
        route = resolve_proxies(
            parse_config(provider_config(server.url, f"    proxy: {proxy.url}"))
        )["up"]
        client = make(proxy=route)
        assert await post(client, f"{server.url}/v1/chat/completions?x=1") == b"hi"
    (relayed,) = proxy.relayed
    assert (relayed.method, relayed.target) == (
        "POST",
        f"http://127.0.0.1:{server.port}/v1/chat/completions?x=1",
    )
    assert relayed.headers["host"] == f"127.0.0.1:{server.port}"
    assert "proxy-authorization" not in relayed.headers
    assert server.requests[0].line == "POST /v1/chat/completions?x=1 HTTP/1.1"


async def test_proxy_credentials_come_from_the_environment_and_are_sent_to_the_proxy(
    make: Make, pki: Pki
) -> None:
    async with (
        ConnectProxy(credentials="gw-user:s3cr:t@x") as proxy,
        RawServer(ok_hi, ssl_context=pki.server_context()) as server,
    ):
        config = parse_config(provider_config(server.url, "    trust_env: true"))
        environ = {"HTTPS_PROXY": f"http://gw-user:s3cr%3At%40x@127.0.0.1:{proxy.port}"}
        route = resolve_proxies(config, environ)["up"]
        assert route is not None
        assert "s3cr" not in repr(route)
        assert "s3cr" not in str(route.url)
        client = make(proxy=route, tls=TlsSettings(ca_bundle=pki.ca_bundle))
        assert await post(client, server.url) == b"hi"
    expected = "Basic " + base64.b64encode(b"gw-user:s3cr:t@x").decode()
    assert proxy.relayed[0].headers["proxy-authorization"] == expected


async def test_a_proxy_that_refuses_the_tunnel_is_a_proxy_error(make: Make, pki: Pki) -> None:
    async with (
        ConnectProxy(credentials="gw-user:secret") as proxy,
        RawServer(ok_hi, ssl_context=pki.server_context()) as server,
    ):
        client = make(
            proxy=ProxyRoute(url=httpx.URL(proxy.url)), tls=TlsSettings(ca_bundle=pki.ca_bundle)
        )
        with pytest.raises(httpx.ProxyError, match="407"):
            await post(client, server.url)
    assert server.requests == []


async def test_no_proxy_sends_a_listed_host_directly(make: Make) -> None:
    async with ConnectProxy() as proxy, RawServer(ok_hi) as server:
        config = parse_config(provider_config(server.url, "    trust_env: true"))
        environ = {"http_proxy": proxy.url, "NO_PROXY": "example.com, 127.0.0.1"}
        route = resolve_proxies(config, environ)["up"]
        assert route is None
        assert await post(make(proxy=route), server.url) == b"hi"
        # And without the NO_PROXY entry, the same call goes through the proxy.
        through = resolve_proxies(config, {"http_proxy": proxy.url})["up"]
        assert await post(make(proxy=through), server.url) == b"hi"
    assert len(proxy.relayed) == 1
    assert len(server.requests) == 2


# -- CA bundle and client certificates ------------------------------------------------------


async def test_ca_bundle_trusts_an_internal_ca_that_is_refused_without_it(
    make: Make, pki: Pki
) -> None:
    async with RawServer(ok_hi, ssl_context=pki.server_context()) as server:
        with pytest.raises(httpx.ConnectError):
            await post(make(), server.url)
        assert await post(make(tls=TlsSettings(ca_bundle=pki.ca_bundle)), server.url) == b"hi"


def test_ca_bundle_extends_the_public_trust_store(pki: Pki) -> None:
    # The bundle adds its CAs to certifi's public ones; it does not replace them, so a
    # provider on the public internet keeps working with an internal ca_bundle set.
    public = client_ssl_context(TlsSettings()).cert_store_stats()["x509_ca"]
    extended = client_ssl_context(TlsSettings(ca_bundle=pki.ca_bundle)).cert_store_stats()
    assert public > 100
    assert extended["x509_ca"] == public + 1


async def test_server_requiring_a_client_certificate_refuses_without_and_accepts_with(
    make: Make, pki: Pki
) -> None:
    context = pki.server_context(require_client_cert=True)
    async with RawServer(ok_hi, ssl_context=context) as server:
        # With TLS 1.3 the client finishes its handshake before the server checks the
        # certificate: the refusal arrives as the connection closing unanswered.
        with pytest.raises(
            (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError),
            match=r"(?i)certificate",
        ):
            await post(make(tls=TlsSettings(ca_bundle=pki.ca_bundle)), server.url)
        assert server.requests == []
        with_cert = make(tls=TlsSettings(ca_bundle=pki.ca_bundle, client_cert=pki.client_cert))
        assert await post(with_cert, server.url) == b"hi"
        split = TlsSettings(
            ca_bundle=pki.ca_bundle,
            client_cert=pki.client_cert_only,
            client_key=pki.client_key_only,
        )
        assert await post(make(tls=split), server.url) == b"hi"


async def test_mtls_upstream_through_a_connect_proxy(make: Make, pki: Pki) -> None:
    async with (
        ConnectProxy() as proxy,
        RawServer(ok_hi, ssl_context=pki.server_context(require_client_cert=True)) as server,
    ):
        client = make(
            proxy=ProxyRoute(url=httpx.URL(proxy.url)),
            tls=TlsSettings(ca_bundle=pki.ca_bundle, client_cert=pki.client_cert),
        )
        assert await post(client, server.url) == b"hi"
    assert proxy.relayed[0].method == "CONNECT"


def test_a_pem_file_that_does_not_load_stops_start_up_naming_it(
    transport: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match=re.escape("missing-ca.pem")):
        build_upstream_client(
            transport=transport,  # type: ignore[arg-type]
            max_connections=1,
            max_keepalive_connections=1,
            keepalive_expiry_s=1.0,
            connect_timeout_s=1.0,
            tls=TlsSettings(ca_bundle=missing),
        )
    not_pem = tmp_path / "client.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigError, match=re.escape("client.pem")):
        build_upstream_client(
            transport=transport,  # type: ignore[arg-type]
            max_connections=1,
            max_keepalive_connections=1,
            keepalive_expiry_s=1.0,
            connect_timeout_s=1.0,
            tls=TlsSettings(client_cert=str(not_pem)),
        )
