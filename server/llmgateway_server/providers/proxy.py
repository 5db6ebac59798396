"""Which HTTP proxy a provider's connections go through, decided once per provider.

Each provider talks to one origin (its ``base_url``), so the choice is made when its
client is built: the ``proxy`` setting, or with ``trust_env`` the usual variables (read by
config.py, the only reader of the environment, and handed in here as a mapping):

- ``https_proxy``/``HTTPS_PROXY`` for an https base URL, ``http_proxy``/``HTTP_PROXY`` for an
  http one, else ``all_proxy``/``ALL_PROXY``; the lower-case name wins when both are set.
- ``no_proxy``/``NO_PROXY``: entries separated by commas or spaces, case-insensitive.
  ``*`` alone bypasses the proxy for every host; ``example.com`` or ``.example.com`` the
  host and its subdomains; ``host:port`` that port only; an IP address (IPv6 with or
  without brackets) that address; a CIDR block (``10.0.0.0/8``) the IP addresses in it.
  Host names are not resolved to match IP entries (as in curl).

Only ``http://`` proxies are supported: https upstreams go through them with CONNECT,
http upstreams with absolute-form requests. Credentials in a proxy URL
(``http://user:pass@proxy:3128``) are a secret: accepted only from the environment, kept
in a ``Secret`` and sent as ``Proxy-Authorization: Basic ...``, never in a repr or a log.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from llmgateway_server.errors import ConfigError
from llmgateway_server.secrets import Secret

_PROXY_VARIABLES = {
    "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
}
_NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")
# Every variable that trust_env consults (config.py reads exactly these).
PROXY_ENVIRONMENT = (
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    *_NO_PROXY_VARIABLES,
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, repr=False)
class ProxyRoute:
    """An HTTP proxy: its URL (no credentials in it) and the Proxy-Authorization value."""

    url: httpx.URL
    authorization: Secret | None = None

    def __repr__(self) -> str:
        auth = ", authorization='***'" if self.authorization is not None else ""
        return f"ProxyRoute(url={str(self.url)!r}{auth})"

    @property
    def host(self) -> str:
        """The proxy's host name or address."""
        return self.url.host

    @property
    def port(self) -> int:
        """The proxy's port (80 when the URL names none)."""
        return self.url.port or 80


def parse_proxy_url(value: str, *, what: str, credentials_allowed: bool) -> ProxyRoute:
    """A ``ProxyRoute`` from ``http://[user:pass@]host[:port]`` (scheme optional).

    ``what`` names the source in errors (the value itself is never echoed: it may hold a
    password).
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + text  # "proxy:3128", as curl and most tools accept
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{what}: not a valid proxy URL") from None
    if parts.scheme.lower() != "http":
        raise ConfigError(f"{what}: only http:// proxies are supported, not {parts.scheme}://")
    if not parts.hostname:
        raise ConfigError(f"{what}: the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{what}: a proxy URL is scheme, host and port only")
    authorization = None
    if parts.username is not None or parts.password is not None:
        if not credentials_allowed:
            raise ConfigError(
                f"{what}: credentials in a proxy URL are a secret and are not allowed in "
                "the config file; set trust_env and put the URL in HTTPS_PROXY/HTTP_PROXY"
            )
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        authorization = Secret(f"Basic {token}", source=what)
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    return ProxyRoute(url=httpx.URL(f"http://{netloc}:{port or 80}"), authorization=authorization)


def environment_proxy(base_url: str, environ: Mapping[str, str]) -> ProxyRoute | None:
    """The proxy the environment names for ``base_url``, or None (none set, or bypassed
    by NO_PROXY)."""
    url = httpx.URL(base_url)
    scheme = url.scheme
    name = next((n for n in _PROXY_VARIABLES.get(scheme, ()) if environ.get(n, "").strip()), None)
    if name is None:
        return None
    no_proxy = next((environ[n] for n in _NO_PROXY_VARIABLES if n in environ), "")
    port = url.port or _DEFAULT_PORTS.get(scheme, 0)
    if bypasses_proxy(url.host, port, no_proxy):
        return None
    return parse_proxy_url(
        environ[name], what=f"environment variable {name}", credentials_allowed=True
    )


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether a NO_PROXY value exempts ``host:port`` (rules in the module docstring)."""
    host = host.lower().strip("[]").rstrip(".")
    address = _ip(host)
    for raw in no_proxy.replace(",", " ").split():
        entry = raw.lower()
        if entry == "*":
            return True
        entry_host, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in entry_host:
            if address is not None and _in_network(address, entry_host):
                return True
            continue
        entry_address = _ip(entry_host)
        if entry_address is not None:
            if address == entry_address:
                return True
            continue
        domain = entry_host.lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``v6`` (bare, with colons) or ``host``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, cidr: str) -> bool:
    try:
        return address in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
