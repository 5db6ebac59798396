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
    input_tokens = output_tokens = cached = input_nano = output_nano = 0
    version = ""
    estimated = False
    for attempt in attempts:
        metered = attempt.metered
        if metered is None or metered is NOTHING:
            continue
        usage, cost = metered.usage, metered.cost
        input_tokens += usage.input_tokens
        output_tokens += usage.output_tokens
        cached += usage.cached_input_tokens
        input_nano += cost.input_nano_usd
        output_nano += cost.output_nano_usd
        version = cost.price_version or version
        estimated = estimated or metered.estimated
    if not version and not input_nano and not output_nano and not input_tokens:
        return NOTHING
    return Metered(
        Usage(input_tokens, output_tokens, cached),
        Cost(input_nano, output_nano, version),
        estimated=estimated,
    )
