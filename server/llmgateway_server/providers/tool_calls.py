"""Tool calls as callers see them, whatever the upstream: the gateway's own ids, indexes
in order of appearance, arguments as produced ("{}" when none) and flagged when they do
not parse.

An upstream's tool-call id never reaches the caller: each call gets a fresh gateway id
(``call_`` and 24 hex digits, a shape both OpenAI and Anthropic accept back in a later
turn), so a conversation that started on one provider continues on another after a
fallback, and ids from different upstreams never collide.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from llmgateway_server.types import ToolCall, ToolCallDelta


def new_call_id() -> str:
    """A fresh gateway tool-call id."""
    return "call_" + secrets.token_hex(12)


def finished_call(name: str, arguments: str) -> ToolCall:
    """A whole tool call from an upstream's name and arguments text."""
    arguments = arguments or "{}"
    return ToolCall(
        id=new_call_id(),
        name=name,
        arguments=arguments,
        arguments_invalid=not _parses(arguments),
    )


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


@dataclass(slots=True)
class _Slot:
    index: int
    id: str
    upstream_id: str | None
    name: str = ""
    parts: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Turns an upstream's streamed tool-call fragments into the gateway's deltas, and
    the finished calls at the end.

    A fragment is located by the upstream's id when it has one, else by the upstream's
    index: OpenAI gives both; OpenAI-compatible servers may give every call index 0 (a
    new id then starts a new call) or no id at all (the index does); Anthropic's content
    block index serves as the index.
    """

    __slots__ = ("_by_id", "_by_index", "_slots")

    def __init__(self) -> None:
        self._slots: list[_Slot] = []
        self._by_id: dict[str, _Slot] = {}
        self._by_index: dict[int, _Slot] = {}

    def __bool__(self) -> bool:
        return bool(self._slots)

    def feed(
        self, index: int, upstream_id: str | None, name: str | None, arguments: str
    ) -> ToolCallDelta | None:
        """One fragment; the delta to relay (None when it carries nothing new)."""
        slot = self._by_id.get(upstream_id) if upstream_id else self._by_index.get(index)
        new = slot is None
        if slot is None:
            slot = _Slot(index=len(self._slots), id=new_call_id(), upstream_id=upstream_id)
            self._slots.append(slot)
            if upstream_id:
                self._by_id[upstream_id] = slot
        self._by_index[index] = slot
        delta = ToolCallDelta(index=slot.index, id=slot.id if new else "")
        if name and not slot.name:
            slot.name = name
            delta.name = name
        if arguments:
            slot.parts.append(arguments)
            delta.arguments = arguments
        if new or delta.name or delta.arguments:
            return delta
        return None

    def close(self) -> list[ToolCallDelta]:
        """The deltas that give each call without arguments its "{}", so that a
        stream's fragments always add up to the finished calls."""
        out: list[ToolCallDelta] = []
        for slot in self._slots:
            if not slot.parts:
                slot.parts.append("{}")
                out.append(ToolCallDelta(index=slot.index, arguments="{}"))
        return out

    def calls(self) -> tuple[ToolCall, ...]:
        """The finished calls, in order."""
        out: list[ToolCall] = []
        for slot in self._slots:
            arguments = "".join(slot.parts) or "{}"
            out.append(
                ToolCall(
                    id=slot.id,
                    name=slot.name,
                    arguments=arguments,
                    arguments_invalid=not _parses(arguments),
                )
            )
        return tuple(out)
