"""API keys to tenants, and which routes each tenant may use."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from llmgateway_server.errors import AuthenticationFailed, ModelNotAllowed

_BEARER = "bearer "


class Authenticator:
    """Derives the tenant from ``authorization: Bearer <key>``.

    Keys are compared by SHA-256 digest, so the config and memory hold digests only.
    """

    def __init__(
        self,
        tenant_by_digest: Mapping[str, str],
        routes_by_tenant: Mapping[str, Iterable[str]],
        anonymous_tenant: str | None,
    ) -> None:
        self._tenant_by_digest = dict(tenant_by_digest)
        self._anonymous = anonymous_tenant
        self._routes: dict[str, frozenset[str] | None] = {}
        for tenant, routes in routes_by_tenant.items():
            allowed = frozenset(routes)
            self._routes[tenant] = None if "*" in allowed else allowed
        if anonymous_tenant is not None:
            self._routes.setdefault(anonymous_tenant, None)

    def authenticate(self, authorization: str | None) -> str:
        """The tenant for an ``authorization`` metadata value, or AuthenticationFailed."""
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise AuthenticationFailed("missing authorization: Bearer <api key>")
        if authorization[:7].lower() != _BEARER:
            raise AuthenticationFailed("authorization must be 'Bearer <api key>'")
        digest = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        tenant = self._tenant_by_digest.get(digest)
        if tenant is None:
            # Constant-time compare against a dummy so unknown keys take as long as known ones.
            hmac.compare_digest(digest, "0" * 64)
            raise AuthenticationFailed("unknown API key")
        return tenant

    def check_route(self, tenant: str, route: str) -> None:
        """Raise ModelNotAllowed unless ``tenant`` may use ``route``."""
        if not self.may_use(tenant, route):
            raise ModelNotAllowed(
                f"tenant {tenant!r} may not use model {route!r}",
                metadata={"model": route, "tenant": tenant},
            )

    def may_use(self, tenant: str, route: str) -> bool:
        """Whether ``tenant`` may use ``route``."""
        allowed = self._routes.get(tenant, frozenset())
        return allowed is None or route in allowed
