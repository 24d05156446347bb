"""The servers' shared gRPC plumbing under a burst of streams opened at once."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgpipe.common.config import GrpcServerSettings
from imgpipe.common.grpc_server import GrpcServer

# Past gRPC core's own limit of 3,000 calls not yet taken up (all refused beyond it).
STREAMS = 4_000


async def test_thousands_of_streams_opened_at_once_all_get_their_first_message() -> None:
    """Watchers that open their streams together (a reconnect after a deploy) are all
    served, none refused by gRPC's backlog protection while the event loop catches up."""
    server = GrpcServer("127.0.0.1:0", [], GrpcServerSettings())
    await server.start()
    await server.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            calls = [
                health.Watch(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(STREAMS)
            ]

            async def first(call: grpc.aio.UnaryStreamCall) -> str:  # type: ignore[type-arg]
                try:
                    async for answer in call:
                        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
                except grpc.aio.AioRpcError as error:
                    return error.code().name
                return "ended"

            outcomes = Counter(await asyncio.gather(*(first(call) for call in calls)))
            for call in calls:
                call.cancel()
        assert outcomes == {"SERVING": STREAMS}
    finally:
        await server.stop(0)
