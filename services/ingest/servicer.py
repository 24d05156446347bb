"""IngestService over gRPC: protobuf in, domain calls, protobuf out. Nothing else.

WatchStatus answers bytes: each event's message is serialised once and the same bytes go
to every watcher of the request (only the snapshot, which is each watcher's own, is
serialised per call); its handler passes them through without a serializer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any, TypeAlias, cast

import grpc

from imgpipe.common.auth import CALLER
from imgpipe.ingest import to_proto
from imgpipe.ingest.model import Event
from imgpipe.ingest.request_service import RequestService
from imgpipe.ingest.watch import SharedEncoding
from imgpipe.ingest.webhook_secrets import DEFAULT_OVERLAP_SECONDS
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = "imgpipe.v1.IngestService"


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, requests: RequestService) -> None:
        self._requests = requests
        # URLs in an event's message are signed when it is first encoded (when its
        # watchers read it), never stored.
        self._messages = SharedEncoding(partial(_serialised_event, requests.url_of))

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
        page = await self._requests.status(
            request.request_id,
            page_size=request.page_size,
            page_token=request.page_token,
            caller=CALLER.get(),
        )
        return to_proto.status_response(page, self._requests.url_of)

    async def WatchStatus(  # type: ignore[override]  # serialised messages, see the docstring
        self, request: ingest_pb2.WatchStatusRequest, context: Context
    ) -> AsyncIterator[bytes]:
        request_id = request.request_id
        events = self._requests.watch(request_id, request.after_sequence, caller=CALLER.get())
        async for event, is_snapshot in events:
            if is_snapshot:
                snapshot = to_proto.watch_response(request_id, event, True, self._requests.url_of)
                yield snapshot.SerializeToString()
            else:
                yield self._messages(request_id, event)

    async def Cancel(
        self, request: ingest_pb2.CancelRequest, context: Context
    ) -> ingest_pb2.CancelResponse:
        return to_proto.cancel_response(
            await self._requests.cancel(request.request_id, caller=CALLER.get())
        )

    async def DeleteRequest(
        self, request: ingest_pb2.DeleteRequestRequest, context: Context
    ) -> ingest_pb2.DeleteRequestResponse:
        await self._requests.delete(request.request_id, caller=CALLER.get())
        return ingest_pb2.DeleteRequestResponse()

    async def GetWebhookSecrets(
        self, request: ingest_pb2.GetWebhookSecretsRequest, context: Context
    ) -> ingest_pb2.GetWebhookSecretsResponse:
        secrets = await self._requests.webhook_secrets(caller=CALLER.get())
        return to_proto.webhook_secrets_response(secrets)

    async def RotateWebhookSecret(
        self, request: ingest_pb2.RotateWebhookSecretRequest, context: Context
    ) -> ingest_pb2.RotateWebhookSecretResponse:
        overlap = (
            request.overlap.ToTimedelta().total_seconds()
            if request.HasField("overlap")
            else DEFAULT_OVERLAP_SECONDS
        )
        secrets = await self._requests.rotate_webhook_secret(overlap, caller=CALLER.get())
        return to_proto.rotate_webhook_secret_response(secrets)


def _serialised_event(url_of: to_proto.UrlOf, request_id: str, event: Event) -> bytes:
    return to_proto.watch_response(request_id, event, False, url_of).SerializeToString()


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Captured:
    """Stands in for the server: takes the generated code's method handlers."""

    handlers: dict[str, Handler]

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, _service: str, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers


def add_ingest_service(servicer: IngestServicer, server: grpc.aio.Server) -> None:
    """The generated registration (every RPC of the .proto), but WatchStatus's answers
    pass through as bytes."""
    captured = _Captured()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, cast(grpc.aio.Server, captured))
    handlers: dict[str, Handler] = {
        **captured.handlers,
        "WatchStatus": grpc.unary_stream_rpc_method_handler(
            servicer.WatchStatus,
            request_deserializer=ingest_pb2.WatchStatusRequest.FromString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
