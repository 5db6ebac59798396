"""Malformed request messages for the gateway's four methods, from a seeded generator.

Each payload is the serialized request body a caller could send (the gRPC framing is
the channel's). ``corpus(seed, per_family)`` is deterministic: the same seed gives the
same bytes. Families:

- ``random``: random bytes.
- ``truncated``: a valid request cut short.
- ``spliced``: the head of one valid request joined to the tail of another.
- ``huge_length``: a length-delimited field whose length prefix is far past the end
  (up to 2**64 - 1, and overlong varints).
- ``bad_utf8``: invalid UTF-8 (lone continuation bytes, overlong forms, surrogates,
  code points past U+10FFFF, cut sequences) in a string field, nested ones included.
- ``deep_groups``: unknown groups nested around protobuf's depth limit (100) and far past
  it, some closed by the wrong end tag.
- ``wrong_wire_type``: a known field number with another wire type (a valid one decodes
  as an unknown field; 3, 4, 6, 7 do not).
- ``bit_flips``: a valid request with a few bytes overwritten.
- ``unknown_enum``: roles and context policies outside the enum (these decode: proto3
  enums are open) and out-of-range numbers; the servicer's validation answers them.

Whether a payload decodes is not decided here: the test asks protobuf, the same library
the server uses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from google.protobuf.message import DecodeError, Message
from llmgateway.v1 import gateway_pb2 as pb

SERVICE = "/llmgateway.v1.GatewayService/"
METHODS: dict[str, type[Message]] = {
    "Complete": pb.CompleteRequest,
    "StreamComplete": pb.StreamCompleteRequest,
    "CountTokens": pb.CountTokensRequest,
    "ListModels": pb.ListModelsRequest,
}

_BAD_UTF8 = (
    b"\x80",  # lone continuation byte
    b"\xff",
    b"\xc0\x80",  # overlong NUL
    b"\xe0\x80\xaf",  # overlong '/'
    b"\xed\xa0\x80",  # UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",  # cut three-byte sequence
    b"ok\xc3",  # cut at the end
)
_TEXT = "abc xyz 0123 ÄÖü é 漢字 🙂 \x00 \n\t <|endoftext|> "
_MODELS = ("echo", "default", "gpt", "", "ECHO", "echo ", "x" * 129, "nope")

# One route, "echo", on the built-in mock provider: no upstream, no key.
MOCK_CONFIG = """
server:
  default_deadline_s: 30
auth:
  anonymous_tenant: local
providers:
  mock:
    type: mock
targets:
  echo:
    provider: mock
    model: mock-echo
    context_window: 8192
routes:
  echo:
    targets: [echo]
"""


@dataclass(frozen=True)
class Payload:
    """One request body for one method."""

    family: str
    method: str
    body: bytes

    @property
    def path(self) -> str:
        """The gRPC method path."""
        return SERVICE + self.method


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _string_field(number: int, value: bytes) -> bytes:
    return _field(number, 2, _varint(len(value)) + value)


def _text(rng: random.Random, limit: int = 24) -> str:
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, limit)))


def _valid(rng: random.Random, method: str) -> bytes:
    """A request that decodes (its content need not pass validation)."""
    if method == "ListModels":
        return b""
    messages = [
        pb.Message(
            role=cast("pb.Role.ValueType", rng.randint(0, 3)),
            content=_text(rng),
            name=rng.choice(["", "bob"]),
        )
        for _ in range(rng.randint(0, 3))
    ]
    model = rng.choice(_MODELS)
    if method == "CountTokens":
        return pb.CountTokensRequest(model=model, messages=messages).SerializeToString()
    cls = pb.CompleteRequest if method == "Complete" else pb.StreamCompleteRequest
    request = cls(model=model, messages=messages, request_id=rng.choice(["", "r-1", "r 2"]))
    if rng.random() < 0.5:
        request.max_tokens = rng.choice([1, 16, 0, -1, 2**40])
    if rng.random() < 0.3:
        request.temperature = rng.choice([0.0, 0.7, 2.5, float("nan")])
    if rng.random() < 0.3:
        request.stop.extend(_text(rng, 4) for _ in range(rng.randint(0, 5)))
    if rng.random() < 0.3:
        request.tags[rng.choice(["team", "bad key", ""])] = _text(rng, 8)
    return request.SerializeToString()


def _random(rng: random.Random, method: str) -> bytes:
    return rng.randbytes(rng.randint(1, 200))


def _truncated(rng: random.Random, method: str) -> bytes:
    body = _valid(rng, method) + _string_field(1, b"tail-of-the-model-name")
    return body[: rng.randint(1, len(body) - 1)]


def _spliced(rng: random.Random, method: str) -> bytes:
    a = _valid(rng, method) + _string_field(8, b"head")
    b = _valid(rng, method) + _string_field(8, b"tail")
    return a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)) :]


def _huge_length(rng: random.Random, method: str) -> bytes:
    length = rng.choice(
        [
            _varint(rng.randint(2**20, 2**31)),
            _varint(2**32 - 1),
            _varint(2**64 - 1),
            b"\xff" * 10 + b"\x01",  # an 11-byte varint: longer than any varint may be
        ]
    )
    return _valid(rng, method) + _field(rng.choice([1, 2, 8, 15]), 2, length + b"abc")


def _bad_utf8(rng: random.Random, method: str) -> bytes:
    bad = rng.choice(_BAD_UTF8)
    value = _text(rng, 6).encode() + bad + _text(rng, 6).encode()
    where = rng.choice(["model", "content", "name", "request_id", "stop", "tag_key", "tag_value"])
    if where == "model" or method == "ListModels":
        extra = _string_field(1, value)  # ListModels: an unknown field, never checked
    elif where in ("content", "name"):
        inner = _field(1, 0, b"\x02") + _string_field(2 if where == "content" else 3, value)
        extra = _string_field(2, inner)
    elif method == "CountTokens":
        extra = _string_field(1, value)
    elif where == "request_id":
        extra = _string_field(8, value)
    elif where == "stop":
        extra = _string_field(6, value)
    else:
        entry = (
            _string_field(1, value) + _string_field(2, b"v")
            if where == "tag_key"
            else _string_field(1, b"k") + _string_field(2, value)
        )
        extra = _string_field(7, entry)
    return _valid(rng, method) + extra


def _deep_groups(rng: random.Random, method: str) -> bytes:
    depth = rng.choice([rng.randint(90, 100), rng.randint(101, 120), rng.randint(1_000, 20_000)])
    number = rng.randint(10, 2000)
    start, end = _field(number, 3), _field(number, 4)
    if rng.random() < 0.2:
        end = _field(number + 1, 4)  # closed by another field's end tag
    return _valid(rng, method) + start * depth + end * depth


def _wrong_wire_type(rng: random.Random, method: str) -> bytes:
    number = rng.randint(1, 9)
    wire_type = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
    payload = {
        0: _varint(rng.randint(0, 2**63)),
        1: rng.randbytes(8),
        2: _varint(3) + b"abc",
        5: rng.randbytes(4),
    }.get(wire_type, b"")
    return _valid(rng, method) + _field(number, wire_type, payload)


def _bit_flips(rng: random.Random, method: str) -> bytes:
    body = bytearray(_valid(rng, method) + _string_field(1, b"padding for flips"))
    for _ in range(rng.randint(1, 3)):
        body[rng.randrange(len(body))] = rng.randrange(256)
    return bytes(body)


def _unknown_enum(rng: random.Random, method: str) -> bytes:
    value = rng.choice([4, 7, 99, 2**31 - 1, -1])
    if method == "ListModels":
        return _field(1, 0, _varint(value & (2**64 - 1)))
    role = _field(1, 0, _varint(value & (2**64 - 1)))
    message = _string_field(2, role + _string_field(2, b"hi"))
    body = _string_field(1, b"echo") + message
    if method in ("Complete", "StreamComplete") and rng.random() < 0.5:
        body = _string_field(1, b"echo") + _string_field(2, _field(1, 0, b"\x02"))
        body += _field(9, 0, _varint(value & (2**64 - 1)))  # context_policy
    return body


FAMILIES: dict[str, Callable[[random.Random, str], bytes]] = {
    "random": _random,
    "truncated": _truncated,
    "spliced": _spliced,
    "huge_length": _huge_length,
    "bad_utf8": _bad_utf8,
    "deep_groups": _deep_groups,
    "wrong_wire_type": _wrong_wire_type,
    "bit_flips": _bit_flips,
    "unknown_enum": _unknown_enum,
}


def corpus(seed: int, per_family: int) -> Iterator[Payload]:
    """``per_family`` payloads of every family for every method, from ``seed``."""
    rng = random.Random(seed)
    for family, make in FAMILIES.items():
        for method in METHODS:
            for _ in range(per_family):
                yield Payload(family, method, make(rng, method))


def decodes(payload: Payload) -> bool:
    """Whether protobuf decodes ``payload`` as its method's request."""
    try:
        METHODS[payload.method].FromString(payload.body)
    except DecodeError:
        return False
    return True
