"""Image types come from the bytes; sizes from the headers; token estimates from both
providers' formulas."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from llmgateway_server.images import (
    IMAGE_TOKEN_BOUND,
    dimensions,
    image_tokens,
    parse_data_url,
    sniff,
)
from llmgateway_server.types import Image


def png(width: int, height: int) -> bytes:
    """A real PNG header (IHDR) of the given size, with an empty image body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"


def webp_vp8x(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (png(10, 20), "image/png"),
        (jpeg(10, 20), "image/jpeg"),
        (gif(10, 20), "image/gif"),
        (webp_vp8x(10, 20), "image/webp"),
    ],
)
def test_type_and_size_come_from_the_bytes(data: bytes, media_type: str) -> None:
    assert sniff(data) == media_type
    assert dimensions(data) == (10, 20)


def test_what_is_not_an_image_is_none() -> None:
    assert sniff(b"<svg xmlns=...>") is None
    assert sniff(b"") is None
    assert dimensions(b"\xff\xd8\xff") is None


def test_data_urls() -> None:
    data = png(1, 1)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert parse_data_url(url) == ("image/png", data)
    for bad in ("data:image/png,abc", "data:image/png;base64,@@", "https://x/y.png"):
        with pytest.raises(ValueError, match=r"data URL|base64"):
            parse_data_url(bad)


def test_token_estimates_follow_both_providers_formulas() -> None:
    # 1000 x 1000: Anthropic ~1,334 tokens (1 MP / 750); OpenAI high: 768 x 768, 4 tiles,
    # 85 + 680 = 765. The higher one counts.
    assert image_tokens(Image("image/png", data=png(1000, 1000))) == 1334
    # Small: 100 x 100 is 14 for Anthropic, 255 (one tile) for OpenAI.
    assert image_tokens(Image("image/png", data=png(100, 100))) == 255
    # Huge images are scaled down first, so they cost no more than the bound.
    assert image_tokens(Image("image/png", data=png(8000, 8000))) <= IMAGE_TOKEN_BOUND
    # An https URL's size is unknown: the bound.
    assert image_tokens(Image("image/png", url="https://example.com/x.png")) == IMAGE_TOKEN_BOUND
