"""Request context set by the interceptor and read by the servicer (same task)."""

from __future__ import annotations

import contextvars

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("llmgateway_tenant")
