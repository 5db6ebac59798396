"""TLS for upstream connections: which CAs are trusted, and the client certificate (mTLS).

One context per provider, built at start-up so that a missing or malformed PEM file
stops the gateway with a message naming it instead of failing the first call.

Trust: the public CAs of certifi (Mozilla's list, what httpx trusts) always, plus the
CAs of ``ca_bundle`` when set: ``ca_bundle`` *extends* the trust store, so a provider
behind an internal CA and one on the public internet can share the same settings.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import certifi

from llmgateway_server.errors import ConfigError


@dataclass(frozen=True)
class TlsSettings:
    """PEM paths for one provider's HTTPS connections (all optional).

    ``client_cert`` is the certificate chain presented to servers that require one;
    ``client_key`` its private key, unless the key is in ``client_cert`` itself.
    """

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def customised(self) -> bool:
        """Whether anything differs from the default trust and no client certificate."""
        return bool(self.ca_bundle or self.client_cert)


def client_ssl_context(settings: TlsSettings) -> ssl.SSLContext:
    """A verifying client context: certifi's CAs plus ``ca_bundle``, and the client
    certificate when set; HTTP/1.1 offered by ALPN."""
    context = ssl.create_default_context(cafile=certifi.where())
    if settings.ca_bundle:
        try:
            context.load_verify_locations(cafile=settings.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ca_bundle {settings.ca_bundle}: cannot load: {exc}") from None
    if settings.client_cert:
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key)
        except (OSError, ssl.SSLError) as exc:
            # The message names the files, never their contents.
            raise ConfigError(
                f"client_cert {settings.client_cert}: cannot load the certificate and key: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
            ) from None
    elif settings.client_key:
        raise ConfigError("client_key is set without client_cert")
    context.set_alpn_protocols(["http/1.1"])
    return context
