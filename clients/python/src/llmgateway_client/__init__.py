"""llmgateway_client: the Python client of the llmgateway gRPC gateway.

```python
import llmgateway_client

async with llmgateway_client.AsyncClient("127.0.0.1:50051", api_key=key) as client:
    completion = await client.complete("default", "Hello")
```

`AsyncClient` (asyncio) and `Client` (blocking) share the same methods; calls take
and return the protobuf-free types of this package and raise the `GatewayError`
subclasses documented in `llmgateway_client._errors`. The generated stubs live in
`llmgateway.v1`.
"""

from .__version__ import __title__, __version__
from ._client import AsyncClient, AsyncCompletionStream
from ._errors import (
    AuthenticationError,
    BudgetExceeded,
    Cancelled,
    ContentBlocked,
    ContextWindowExceeded,
    CostLimitExceeded,
    DeadlineExceeded,
    GatewayError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestTooLarge,
    ResourceExhausted,
    Unavailable,
)
from ._sync import Client, CompletionStream
from ._types import (
    Attempt,
    AttemptOutcome,
    Completion,
    ContextPolicy,
    Cost,
    FinishReason,
    Message,
    ModelInfo,
    ModelTarget,
    Price,
    Role,
    TokenCount,
    Usage,
)

__all__ = [
    "AsyncClient",
    "AsyncCompletionStream",
    "Attempt",
    "AttemptOutcome",
    "AuthenticationError",
    "BudgetExceeded",
    "Cancelled",
    "Client",
    "Completion",
    "CompletionStream",
    "ContentBlocked",
    "ContextPolicy",
    "ContextWindowExceeded",
    "Cost",
    "CostLimitExceeded",
    "DeadlineExceeded",
    "FinishReason",
    "GatewayError",
    "InternalError",
    "InvalidRequest",
    "Message",
    "ModelInfo",
    "ModelNotFound",
    "ModelTarget",
    "PermissionDenied",
    "Price",
    "ProtocolError",
    "RateLimited",
    "RequestTooLarge",
    "ResourceExhausted",
    "Role",
    "TokenCount",
    "Unavailable",
    "Usage",
    "__title__",
    "__version__",
]
