"""TLS on the gRPC server, and mutual TLS when a client CA is configured."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.ingest_harness import IngestFactory


async def check_health(target: str, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(response.status)


async def test_mutual_tls(start_ingest: IngestFactory, pki: dict[str, Path]) -> None:
    env = {
        "IMGPIPE_TLS_CERT": str(pki["server"]),
        "IMGPIPE_TLS_KEY": str(pki["server_key"]),
        "IMGPIPE_TLS_CLIENT_CA": str(pki["ca"]),
    }
    ingest = await start_ingest(env)
    ca = pki["ca"].read_bytes()
    with_client_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client"].read_bytes(),
    )
    assert await check_health(ingest.target, with_client_cert) == (
        health_pb2.HealthCheckResponse.SERVING
    )
    without = grpc.ssl_channel_credentials(root_certificates=ca)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check_health(ingest.target, without)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(ingest.target) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(plaintext).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
