"""A gRPC channel to ingest (plaintext or TLS) and the calls the CLI makes, each with the
bearer token when there is one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from imgpipe.cli.options import Connection, Tls
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, requests_pb2

MAX_MESSAGE = 64 * 1024 * 1024  # as the server's limit: large CSVs, large statuses


class CliError(Exception):
    """Something the user can fix; the message says what."""


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def credentials(tls: Tls) -> grpc.ChannelCredentials:
    if bool(tls.client_cert) != bool(tls.client_key):
        raise CliError("--client-cert and --client-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_cert, "--ca-cert"),
        private_key=_read(tls.client_key, "--client-key"),
        certificate_chain=_read(tls.client_cert, "--client-cert"),
    )


def open_channel(connection: Connection) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    if connection.tls is None:
        return grpc.insecure_channel(connection.target, options)
    if connection.tls.server_name:
        options.append(("grpc.ssl_target_name_override", connection.tls.server_name))
    return grpc.secure_channel(connection.target, credentials(connection.tls), options)


class Client:
    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self._stub = ingest_pb2_grpc.IngestServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def submit(
        self, csv: bytes, *, webhook_url: str, idempotency_key: str, quality: int
    ) -> ingest_pb2.SubmitResponse:
        request = ingest_pb2.SubmitRequest(
            csv=csv,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
            options=requests_pb2.CompressionOptions(quality=quality),
        )
        return self._stub.Submit(request, metadata=self._metadata)

    def status(self, request_id: str) -> ingest_pb2.GetStatusResponse:
        request = ingest_pb2.GetStatusRequest(request_id=request_id)
        return self._stub.GetStatus(request, metadata=self._metadata)

    def watch(self, request_id: str, after: int) -> Iterator[ingest_pb2.WatchStatusResponse]:
        request = ingest_pb2.WatchStatusRequest(request_id=request_id, after_sequence=after)
        return iter(self._stub.WatchStatus(request, metadata=self._metadata))

    def cancel(self, request_id: str) -> ingest_pb2.CancelResponse:
        request = ingest_pb2.CancelRequest(request_id=request_id)
        return self._stub.Cancel(request, metadata=self._metadata)


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    return cast(grpc.Call, exc).code()  # what grpc raises is a Call as well as an RpcError


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """`CODE: message`, then one line per field violation of a google.rpc.BadRequest."""
    call = cast(grpc.Call, exc)
    lines = [f"{call.code().name}: {call.details()}"]
    status = rpc_status.from_call(call)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(lines)
