"""Undoing a response's Content-Encoding, with the decoded size capped.

The gateway never asks for compression (it sends no Accept-Encoding), but an upstream
may compress anyway. gzip and deflate are decoded; any other coding is a clear
``httpx.DecodingError`` when the body is read. Decoding is bounded twice: each step
produces at most ``_STEP`` bytes (a few KiB of a gzip bomb never become gigabytes in one
call), and the whole decoded body at most ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx

from llmgateway_server.providers.http_rules import MAX_BODY_BYTES

_STEP = 1024 * 1024
# zlib's window-bits: gzip framing, and the two forms servers send as "deflate".
_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS
_CODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}


def needs_decoding(content_encoding: str) -> bool:
    """Whether a Content-Encoding value means the body is not sent as-is."""
    return content_encoding.strip().lower() not in ("", "identity")


class DecodedBody(httpx.AsyncByteStream):
    """A response body with its Content-Encoding undone, chunk by chunk.

    An iterator object rather than an async generator, like the transports' bodies: a
    generator left unfinished is finalized by the event loop in a task of its own.
    """

    __slots__ = (
        "_decoded",
        "_decoder",
        "_done",
        "_limit",
        "_raw",
        "_raw_chunks",
        "_started",
        "_wbits",
        "coding",
    )

    def __init__(
        self, raw: httpx.AsyncByteStream, content_encoding: str, *, limit: int = MAX_BODY_BYTES
    ) -> None:
        self._raw = raw
        self._raw_chunks: AsyncIterator[bytes] = raw.__aiter__()
        self.coding = content_encoding.strip().lower()
        self._wbits = _CODINGS.get(self.coding)
        self._decoder = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._limit = limit
        self._decoded = 0
        self._started = False
        self._done = False

    def __aiter__(self) -> DecodedBody:
        return self

    async def __anext__(self) -> bytes:
        decoder = self._decoder
        if decoder is None:
            raise httpx.DecodingError(f"unsupported content-encoding {self.coding[:32]!r}")
        while not self._done:
            tail = decoder.unconsumed_tail
            if tail:
                out = self._decode(tail)
            else:
                try:
                    chunk = await self._raw_chunks.__anext__()
                except StopAsyncIteration:
                    self._done = True
                    out = self._finish()
                else:
                    out = self._decode(chunk)
            if out:
                return out
        raise StopAsyncIteration

    async def read(self) -> bytes:
        """The whole decoded body (capped like every body read whole)."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Close the raw body (mid-body, this closes its connection)."""
        await self._raw.aclose()

    def _decode(self, data: bytes) -> bytes:
        assert self._decoder is not None
        try:
            out = self._decoder.decompress(data, _STEP)
        except zlib.error as exc:
            if self._wbits == _ZLIB and not self._started:
                # Some servers send raw deflate under "deflate" (no zlib header).
                self._wbits = _RAW_DEFLATE
                self._decoder = zlib.decompressobj(_RAW_DEFLATE)
                return self._decode(data)
            raise httpx.DecodingError(f"{self.coding} body does not decode: {exc}") from None
        self._started = True
        return self._count(out)

    def _finish(self) -> bytes:
        assert self._decoder is not None
        try:
            out = self._decoder.flush(_STEP)
        except zlib.error as exc:
            raise httpx.DecodingError(f"{self.coding} body does not decode: {exc}") from None
        if not self._decoder.eof:
            raise httpx.DecodingError(f"the {self.coding} body ended early")
        return self._count(out)

    def _count(self, out: bytes) -> bytes:
        self._decoded += len(out)
        if self._decoded > self._limit:
            raise httpx.DecodingError(
                f"the decoded body is over {self._limit // (1024 * 1024)} MiB"
            )
        return out
