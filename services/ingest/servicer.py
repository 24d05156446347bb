"""IngestService over gRPC: protobuf in, domain calls, protobuf out. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from imgpipe.common.auth import CALLER
from imgpipe.ingest import to_proto
from imgpipe.ingest.request_service import RequestService
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, requests: RequestService) -> None:
        self._requests = requests

    async def Submit(
        self, request: ingest_pb2.SubmitRequest, context: Context
    ) -> ingest_pb2.SubmitResponse:
        submission = await self._requests.submit(
            request.csv,
            quality=request.options.quality,
            webhook_url=request.webhook_url,
            idempotency_key=request.idempotency_key,
            caller=CALLER.get(),
        )
        return to_proto.submit_response(submission)

    async def GetStatus(
        self, request: ingest_pb2.GetStatusRequest, context: Context
    ) -> ingest_pb2.GetStatusResponse:
        return to_proto.status_response(
            *await self._requests.status(request.request_id, caller=CALLER.get())
        )

    async def WatchStatus(
        self, request: ingest_pb2.WatchStatusRequest, context: Context
    ) -> AsyncIterator[ingest_pb2.WatchStatusResponse]:
        events = self._requests.watch(
            request.request_id, request.after_sequence, caller=CALLER.get()
        )
        async for event, is_snapshot in events:
            yield to_proto.watch_response(request.request_id, event, is_snapshot)

    async def Cancel(
        self, request: ingest_pb2.CancelRequest, context: Context
    ) -> ingest_pb2.CancelResponse:
        return to_proto.cancel_response(
            await self._requests.cancel(request.request_id, caller=CALLER.get())
        )
