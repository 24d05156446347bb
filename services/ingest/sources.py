"""Being polite to source hosts, and not doing work twice, as the dispatcher sees it: what
a processor call carries about a source's previous fetch, what its answer teaches about the
source, and whether a failure means the source host asked to be called less."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from imgpipe.ingest.model import SourceMemory
from imgpipe.v1 import processor_pb2


def memory_of(response: processor_pb2.ProcessImageResponse) -> SourceMemory | None:
    """What to remember of the source for its next fetch (None when the processor said
    nothing of its bytes); its output key and sizes are the outcome's."""
    if not response.content_sha256:
        return None
    return SourceMemory(
        etag=response.etag,
        last_modified=response.last_modified,
        content_sha256=response.content_sha256,
        width=response.width,
        height=response.height,
    )


def throttled_for(exc: grpc.aio.AioRpcError) -> float | None:
    """Seconds the source host asked to be left alone: the RetryInfo of an UNAVAILABLE
    (the processor's SourceThrottled); None for any other failure."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # an aio call has the same API
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None
