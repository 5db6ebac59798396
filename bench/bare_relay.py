"""The floor: a grpc.aio GatewayService that only forwards each call to the upstream.

One shared ``aiohttp.ClientSession``; the handler turns the request into the same Chat
Completions body the gateway sends, posts it, and builds the same response messages
(text, finish reason, usage). No auth, validation, counting, pricing, retries or logging,
so the floor does not move with the gateway's own choices (always asyncio, aiohttp and
the standard library's ``json``).

    python bench/bare_relay.py --listen 127.0.0.1:0 --route u0=http://127.0.0.1:PORT/v1

prints ``relay listening on 127.0.0.1:PORT`` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

import aiohttp
import grpc
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc

Context = aio.ServicerContext[Any, Any]
Request = pb.CompleteRequest | pb.StreamCompleteRequest

_ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}
_FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


def _usage(raw: dict[str, Any]) -> pb.Usage:
    return pb.Usage(
        input_token_count=raw["prompt_tokens"], output_token_count=raw["completion_tokens"]
    )


class BareRelay(pb_grpc.GatewayServiceServicer):
    """Complete and StreamComplete, forwarded; route name -> upstream base URL."""

    def __init__(
        self, session: aiohttp.ClientSession, routes: dict[str, str], *, model: str, key: str
    ) -> None:
        self._session = session
        self._urls = {name: url.rstrip("/") + "/chat/completions" for name, url in routes.items()}
        self._model = model
        self._headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "authorization": f"Bearer {key}",
        }

    def _body(self, request: Request, *, stream: bool) -> str:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": _ROLES[m.role], "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body)

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        """Forward one call; answer text, finish reason and usage."""
        async with self._session.post(
            self._urls[request.model], data=self._body(request, stream=False), headers=self._headers
        ) as response:
            raw = await response.read()
        if response.status != 200:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream HTTP {response.status}")
        data = json.loads(raw)
        choice = data["choices"][0]
        return pb.CompleteResponse(
            completion=pb.Completion(
                content=choice["message"]["content"],
                finish_reason=_FINISH.get(choice["finish_reason"], pb.FINISH_REASON_OTHER),
                usage=_usage(data["usage"]),
            )
        )

    async def StreamComplete(  # type: ignore[override]
        self, request: pb.StreamCompleteRequest, context: Context
    ) -> None:
        """Forward one stream: a delta per content chunk, then the result."""
        parts: list[str] = []
        finish = pb.FINISH_REASON_STOP
        usage = pb.Usage()
        async with self._session.post(
            self._urls[request.model], data=self._body(request, stream=True), headers=self._headers
        ) as response:
            if response.status != 200:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream HTTP {response.status}")
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].rstrip()
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content")
                    if text:
                        parts.append(text)
                        await context.write(pb.StreamCompleteResponse(delta=pb.Delta(text=text)))
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], pb.FINISH_REASON_OTHER)
        await context.write(
            pb.StreamCompleteResponse(
                result=pb.Completion(content="".join(parts), finish_reason=finish, usage=usage)
            )
        )

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: Context
    ) -> pb.CountTokensResponse:
        """Not relayed."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the relay")
        raise AssertionError("abort raises")

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        """Not relayed."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the relay")
        raise AssertionError("abort raises")


async def serve(listen: str, routes: dict[str, str], model: str, key: str, limit: int) -> None:
    """Run until SIGTERM or SIGINT."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    server = aio.server()
    pb_grpc.add_GatewayServiceServicer_to_server(
        BareRelay(session, routes, model=model, key=key), server
    )
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"relay listening on {listen.rpartition(':')[0]}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)
        await session.close()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument(
        "--route", action="append", default=[], help="NAME=BASE_URL (…/v1), repeatable"
    )
    parser.add_argument("--model", default="gpt-4", help="upstream model name to send")
    parser.add_argument(
        "--key-env", default="BENCH_UPSTREAM_KEY", help="variable holding the upstream key"
    )
    parser.add_argument("--max-connections", type=int, default=2048)
    args = parser.parse_args()
    routes = dict(r.split("=", 1) for r in args.route)
    key = os.environ.get(args.key_env, "")
    asyncio.run(serve(args.listen, routes, args.model, key, args.max_connections))


if __name__ == "__main__":
    main()
