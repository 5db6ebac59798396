"""The HTTP rules every transport shares: what a request header may hold, and the limits
on what an upstream may send back.

Checked here once, before any transport sees a request, so that every transport refuses
the same headers with the same error (``httpx.LocalProtocolError``) and nothing is sent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import httpx

# RFC 9110 §5.6.2: a field name is a token (letters, digits and ``!#$%&'*+-.^_`|~``).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value holds visible characters, spaces and tabs, and obs-text
# (0x80-0xFF); any other control character (NUL, CR, LF, DEL...) could split the request.
_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")

# Largest body read whole, raw or decompressed: no completion comes anywhere near it.
MAX_BODY_BYTES = 64 * 1024 * 1024
# The response head (status line and headers, 1xx heads included) and its header count.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100


def check_request_headers(headers: Sequence[tuple[str, str]]) -> None:
    """Refuse a header that is not a valid HTTP field, before anything is sent.

    Names must be RFC 9110 tokens (no empty name, no space, colon, NUL or separator);
    values must not hold control characters other than tab, nor anything outside
    latin-1 (HTTP/1.1 carries bytes, and a value that cannot be sent as-is is refused
    rather than mangled).
    """
    if type(headers) is tuple:
        # A provider sends the same tuple on every call: checked once (~4 µs saved).
        _check_once(headers)
    else:
        _check(headers)


@functools.lru_cache(maxsize=256)
def _check_once(headers: tuple[tuple[str, str], ...]) -> None:
    _check(headers)


def _check(headers: Sequence[tuple[str, str]]) -> None:
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise httpx.LocalProtocolError(f"invalid header name {name[:64]!r}")
        if _VALUE_FORBIDDEN.search(value) is not None:
            # The value is not echoed: it may be a credential.
            raise httpx.LocalProtocolError(f"invalid value for header {name!r}")
