"""Images in prompts: what they are (from their bytes), how big, and what they cost in
tokens. Pure functions; the transport validates with them, the token counters price
with them.

Limits are the strictest of the providers the gateway speaks to, since a fallback may
send the same prompt to either: Anthropic takes at most 5 MB per image and 100 images
per request (OpenAI allows more). Formats are the four both accept.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

from llmgateway_server.types import Image

MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGES = 100
MAX_URL_CHARS = 8192
# An image whose size is unknown (an https URL) is charged what the largest image costs:
# Anthropic's ~1.15 megapixel cap at 750 pixels per token, more than OpenAI's high
# detail maximum (85 + 170 x 8 tiles = 1,445).
IMAGE_TOKEN_BOUND = 1600
_LOW_DETAIL_TOKENS = 85


def sniff(data: bytes) -> str | None:
    """The media type the bytes really are (one of MEDIA_TYPES), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def parse_data_url(url: str) -> tuple[str, bytes]:
    """``data:<media type>;base64,<data>`` -> (media type, bytes); ValueError otherwise."""
    head, comma, payload = url.partition(",")
    if not comma or not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError("a data URL must be data:<media type>;base64,<data>")
    media_type = head[len("data:") : -len(";base64")].lower()
    if len(payload) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        raise ValueError(f"over {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data is not valid base64") from None
    return media_type, data


def dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image's header, or None when it cannot be read."""
    try:
        if data.startswith(b"\x89PNG"):
            width, height = struct.unpack(">II", data[16:24])
        elif data.startswith(b"GIF"):
            width, height = struct.unpack("<HH", data[6:10])
        elif data.startswith(b"RIFF"):
            return _webp_dimensions(data)
        elif data.startswith(b"\xff\xd8"):
            return _jpeg_dimensions(data)
        else:
            return None
    except struct.error:
        return None
    return (width, height) if width and height else None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


# Start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return (width, height) if width and height else None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length
    return None


def image_tokens(image: Image) -> int:
    """Input tokens an image is estimated to cost, the higher of the two providers'
    published formulas (IMAGE_TOKEN_BOUND when its size is unknown). Low detail is
    not cheaper here: only OpenAI has it, and a fallback may send the image to Anthropic."""
    size = dimensions(image.data) if image.data is not None else None
    if size is None:
        return IMAGE_TOKEN_BOUND
    width, height = size
    return max(_anthropic_tokens(width, height), _openai_high_tokens(width, height))


def _anthropic_tokens(width: int, height: int) -> int:
    """Anthropic: scaled to at most 1568 px on the long edge and ~1.15 MP, 750 px/token."""
    scale = min(1.0, 1568 / max(width, height), math.sqrt(1_150_000 / (width * height)))
    return math.ceil(width * scale * height * scale / 750)


def _openai_high_tokens(width: int, height: int) -> int:
    """OpenAI high detail: fit in 2048 px, shortest side to 768 px, 170 per 512 px tile
    plus 85."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    shrink = min(1.0, 768 / min(w, h))
    w, h = w * shrink, h * shrink
    return _LOW_DETAIL_TOKENS + 170 * math.ceil(w / 512) * math.ceil(h / 512)
