"""The one place that decides what an attempt, and a call, used and cost.

Per attempt: the provider's reported usage wins. When there is none (the caller
cancelled, the stream broke, an OpenAI-compatible server does not report usage) the
gateway counts what was sent and produced with the target's tokenizer, marked as an
estimate, so nothing the upstream may bill goes unrecorded:

- an attempt that produced text (a stream cut or cancelled after it started) is billed
  its prompt and the text produced;
- an attempt the upstream accepted (answered 200) but that produced nothing (abandoned
  at the first-token timeout, a body that did not parse) is billed its prompt;
- an attempt the upstream refused (an HTTP error) or never saw is billed nothing.

A call's usage and cost are the sums over its attempts: what the ledger records and the
budget is charged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from llmgateway_server.call import Prompt
from llmgateway_server.pricing import cost_of
from llmgateway_server.routes import Target
from llmgateway_server.types import Attempt, Cost, Metered, UpstreamResult, Usage

NOTHING = Metered(Usage(), Cost(), estimated=False)


def meter_result(target: Target, prompt: Prompt, result: UpstreamResult) -> Metered:
    """A served attempt: the upstream's report, or the gateway's count of prompt and
    answer when it sent none."""
    if result.usage is not None:
        return Metered(result.usage, cost_of(result.usage, target.price), estimated=False)
    return _estimate(target, prompt, result.content)


def meter_partial(target: Target, prompt: Prompt, produced: str, *, accepted: bool) -> Metered:
    """An attempt that failed or was cancelled: billed as the module docstring says."""
    if not (produced or accepted):
        return NOTHING
    return _estimate(target, prompt, produced)


def _estimate(target: Target, prompt: Prompt, produced: str) -> Metered:
    usage = Usage(
        input_tokens=prompt.input_tokens,
        output_tokens=target.counter.count_text(produced) if produced else 0,
    )
    return Metered(usage, cost_of(usage, target.price), estimated=True)


def total(attempts: Iterable[Attempt]) -> Metered:
    """The call's usage and cost: the sum over its billed attempts (the price version is
    the last billed attempt's)."""
    usages: list[Usage] = []
    costs: list[Cost] = []
    version = ""
    estimated = False
    for attempt in attempts:
        metered = attempt.metered
        if metered is None or metered is NOTHING:
            continue
        usages.append(metered.usage)
        costs.append(metered.cost)
        version = metered.cost.price_version or version
        estimated = estimated or metered.estimated
    if not usages:
        return NOTHING
    if len(usages) == 1:
        return Metered(usages[0], costs[0], estimated=estimated)
    usage = Usage(*(sum(getattr(u, f) for u in usages) for f in _USAGE_FIELDS))
    cost = Cost(
        **{f: sum(getattr(c, f) for c in costs) for f in _COST_FIELDS}, price_version=version
    )
    return Metered(usage, cost, estimated=estimated)


_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))
_COST_FIELDS = tuple(f.name for f in dataclasses.fields(Cost) if f.name != "price_version")
