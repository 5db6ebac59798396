"""Streamed tool-call fragments become the gateway's calls, whatever the upstream's
indexes and ids."""

from __future__ import annotations

import re

from llmgateway_server.providers.tool_calls import ToolCallAssembler, finished_call
from llmgateway_server.types import ToolCallDelta

GATEWAY_ID = re.compile(r"call_[0-9a-f]{24}")


def _arguments(deltas: list[ToolCallDelta | None], index: int) -> str:
    return "".join(d.arguments for d in deltas if d is not None and d.index == index)


def test_openai_indexes_and_ids_become_gateway_ids() -> None:
    a = ToolCallAssembler()
    deltas = [
        a.feed(0, "call_up_1", "get_weather", ""),
        a.feed(0, None, None, '{"city":'),
        a.feed(1, "call_up_2", "get_time", ""),
        a.feed(0, None, None, '"Paris"}'),
        a.feed(1, None, None, "{}"),
    ]
    calls = a.calls()
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert [c.arguments for c in calls] == ['{"city":"Paris"}', "{}"]
    assert all(GATEWAY_ID.fullmatch(c.id) for c in calls)
    assert "call_up_1" not in {c.id for c in calls}
    first = deltas[0]
    assert first is not None
    assert (first.index, first.id, first.name) == (0, calls[0].id, "get_weather")
    assert _arguments(deltas, 0) == calls[0].arguments


def test_servers_that_give_every_call_index_0_are_told_apart_by_id() -> None:
    a = ToolCallAssembler()
    a.feed(0, "x1", "f", '{"a":1}')
    a.feed(0, "x2", "g", "")
    a.feed(0, None, None, '{"b":2}')
    calls = a.calls()
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"a":1}'), ("g", '{"b":2}')]


def test_servers_without_ids_are_keyed_by_index() -> None:
    a = ToolCallAssembler()
    a.feed(0, None, "f", '{"a"')
    a.feed(1, None, "g", "{")
    a.feed(0, None, None, ":1}")
    a.feed(1, None, None, "}")
    assert [(c.name, c.arguments) for c in a.calls()] == [("f", '{"a":1}'), ("g", "{}")]
    assert len({c.id for c in a.calls()}) == 2


def test_empty_arguments_become_an_empty_object_in_deltas_and_calls() -> None:
    a = ToolCallAssembler()
    first = a.feed(0, "u", "ping", "")
    closing = a.close()
    assert [(d.index, d.arguments) for d in closing] == [(0, "{}")]
    assert first is not None
    assert first.arguments + closing[0].arguments == a.calls()[0].arguments == "{}"
    assert a.close() == []


def test_arguments_that_do_not_parse_are_flagged_never_repaired() -> None:
    a = ToolCallAssembler()
    a.feed(0, "u", "f", '{"city":"Par')
    (call,) = a.calls()
    assert call.arguments == '{"city":"Par'
    assert call.arguments_invalid
    assert not finished_call("f", '{"n": 12345678901234567890123}').arguments_invalid
    assert finished_call("f", "").arguments == "{}"
