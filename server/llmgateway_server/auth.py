"""API keys to tenants, and which routes each tenant may use."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from llmgateway_server.errors import AuthenticationFailed, ModelNotAllowed

# RFC 7235: the scheme is case-insensitive; one space separates it from the token.
_SCHEME = "bearer"
# Printable ASCII, no space: a key with anything else (a trailing space or NBSP, a tab, a
# control character, a non-ASCII byte) is a different key, never a spelling of a known one.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DUMMY_DIGEST = "0" * 64

# The only messages an authentication failure carries: none of them echoes the value sent.
MISSING = "missing authorization: Bearer <api key>"
MALFORMED = "authorization must be 'Bearer <api key>', the key printable ASCII without spaces"
UNKNOWN = "unknown API key"


class Authenticator:
    """Derives the tenant from ``authorization: Bearer <key>``.

    The value is parsed strictly and the key compared exactly: ``Bearer`` (any case), one
    space, then the key as sent, which must be printable ASCII (0x21-0x7e). Nothing is
    trimmed, so a key with a byte added is unknown, not the key's tenant. Keys are compared
    by SHA-256 digest, so the config and memory hold digests only.
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
        """The tenant for an ``authorization`` metadata value, or AuthenticationFailed.

        No value (or an empty one) is the anonymous tenant when one is configured. A
        metadata value that arrived as bytes is passed decoded as latin-1 (one character
        per byte), so any byte outside printable ASCII is refused here.
        """
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise AuthenticationFailed(MISSING)
        scheme, space, token = authorization.partition(" ")
        if not (space and scheme.lower() == _SCHEME and _TOKEN.fullmatch(token)):
            raise AuthenticationFailed(MALFORMED)
        digest = hashlib.sha256(token.encode("ascii")).hexdigest()
        tenant = self._tenant_by_digest.get(digest)
        if tenant is None:
            # Constant-time compare against a dummy so unknown keys take as long as known ones.
            hmac.compare_digest(digest, _DUMMY_DIGEST)
            raise AuthenticationFailed(UNKNOWN)
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
