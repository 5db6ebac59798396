"""Request context set by the interceptor and read by the servicer (same task)."""

from __future__ import annotations

import contextvars

from llmgateway_server.auth import Caller

current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("llmgateway_caller")
"""Who is calling: set for every call the interceptor authenticated (every method of
GatewayService, AdminService and UsageService)."""

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("llmgateway_tenant")
"""The caller's tenant (``current_caller.get().tenant``) for GatewayService calls."""
