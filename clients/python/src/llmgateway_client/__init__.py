"""llmgateway_client: the Python client of the llmgateway gRPC gateway.

```python
import llmgateway_client

async with llmgateway_client.AsyncClient("127.0.0.1:50051", api_key=key) as client:
    completion = await client.complete("default", "Hello")
```

`AsyncClient` (asyncio) and `Client` (blocking) share the same methods; calls take
and return the protobuf-free types of this package (messages with images, tools and
their calls, structured output, streamed events) and raise the `GatewayError`
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
    CacheTTL,
    Completion,
    ContentPart,
    ContextPolicy,
    Cost,
    FinishReason,
    Image,
    ImageDetail,
    ImagePart,
    Message,
    ModelInfo,
    ModelTarget,
    Price,
    RefusalDelta,
    ResponseFormat,
    ResponseFormatType,
    Role,
    StreamEvent,
    TextDelta,
    TextPart,
    TokenCount,
    Tool,
    ToolCall,
    ToolCallAccumulator,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)

__all__ = [
    "AsyncClient",
    "AsyncCompletionStream",
    "Attempt",
    "AttemptOutcome",
    "AuthenticationError",
    "BudgetExceeded",
    "CacheTTL",
    "Cancelled",
    "Client",
    "Completion",
    "CompletionStream",
    "ContentBlocked",
    "ContentPart",
    "ContextPolicy",
    "ContextWindowExceeded",
    "Cost",
    "CostLimitExceeded",
    "DeadlineExceeded",
    "FinishReason",
    "GatewayError",
    "Image",
    "ImageDetail",
    "ImagePart",
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
    "RefusalDelta",
    "RequestTooLarge",
    "ResourceExhausted",
    "ResponseFormat",
    "ResponseFormatType",
    "Role",
    "StreamEvent",
    "TextDelta",
    "TextPart",
    "TokenCount",
    "Tool",
    "ToolCall",
    "ToolCallAccumulator",
    "ToolCallDelta",
    "ToolChoice",
    "ToolChoiceMode",
    "Unavailable",
    "Usage",
    "__title__",
    "__version__",
]
