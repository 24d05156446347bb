"""What a failed call carries: its google.rpc.Status details."""

from __future__ import annotations

from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    # An AioRpcError has the methods from_call reads (code, trailing metadata), as the
    # CLI's errors do, though its stubs do not type it as a grpc.Call.
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, f"{error.code()}: no google.rpc.Status details"
    return status


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields of the google.rpc.BadRequest details, in order."""
    fields = []
    for detail in rich_status(error).details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        fields += [violation.field for violation in bad_request.field_violations]
    return fields
