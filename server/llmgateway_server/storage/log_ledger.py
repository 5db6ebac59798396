"""A ledger that writes each usage record as one JSON log line (``llmgateway.usage``)."""

from __future__ import annotations

import dataclasses
import logging

from llmgateway_server.storage.base import UsageRecord

usage_log = logging.getLogger("llmgateway.usage")

_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRecord))


class LogLedger:
    """Usage records as structured log lines; ship them with the rest of the logs."""

    async def write(self, record: UsageRecord) -> None:
        """Log the record at INFO with every field as a structured attribute."""
        # Skip building the dict when INFO is off (dataclasses.asdict deep-copies: slow).
        if usage_log.isEnabledFor(logging.INFO):
            usage_log.info("usage", extra={"usage": {f: getattr(record, f) for f in _FIELDS}})

    async def aclose(self) -> None:
        """Nothing buffered."""
