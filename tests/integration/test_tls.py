"""TLS on the gRPC server, and mutual TLS when a client CA is configured."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.common.errors import SettingsError
from imgpipe.ingest.processor_tls import ProcessorTls
from imgpipe.v1 import ingest_pb2, processor_pb2, processor_pb2_grpc, requests_pb2
from support.csv_files import batch_csv
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


async def test_ingest_reaches_processors_over_mutual_tls_and_nobody_else_does(
    start_ingest: IngestFactory, tmp_path: Path, pki: dict[str, Path], image_server: ImageServer
) -> None:
    """Before, ingest always dialled in plaintext, so a TLS processor was unreachable and
    anyone reaching port 50052 could have any object stored under any key."""
    urls = [image_server.add(f"/tls/{n}.jpg", sample(32, 24, "JPEG", seed=n)) for n in range(2)]
    processor_env = {
        "IMGPIPE_TLS_CERT": str(pki["server"]),
        "IMGPIPE_TLS_KEY": str(pki["server_key"]),
        "IMGPIPE_TLS_CLIENT_CA": str(pki["ca"]),
    }
    ingest_env = {
        "IMGPIPE_PROCESSOR_TLS_CA": str(pki["ca"]),
        "IMGPIPE_PROCESSOR_TLS_CERT": str(pki["client"]),
        "IMGPIPE_PROCESSOR_TLS_KEY": str(pki["client_key"]),
    }
    ingest = await start_ingest(ingest_env, processor=True, processor_env=processor_env)
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch_csv(urls)))
    status = await ingest.terminal_status(submitted.request_id)
    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED
    forged = processor_pb2.ProcessImageRequest(source_url=urls[0], output_key="victim/1-0.jpg")
    without_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    for channel in (
        grpc.aio.insecure_channel(ingest.processor_target),
        grpc.aio.secure_channel(ingest.processor_target, without_cert),
    ):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await processor_pb2_grpc.ProcessorServiceStub(channel).ProcessImage(
                    forged, timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (tmp_path / "objects" / "victim").exists()


def test_processor_tls_settings_that_cannot_work_are_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(SettingsError, match="go together"):
        ProcessorTls.from_env(
            {
                "IMGPIPE_PROCESSOR_TLS_CA": str(pki["ca"]),
                "IMGPIPE_PROCESSOR_TLS_CERT": str(pki["client"]),
            }
        )
    with pytest.raises(SettingsError, match="need IMGPIPE_PROCESSOR_TLS_CA"):
        ProcessorTls.from_env({"IMGPIPE_PROCESSOR_TLS_SERVER_NAME": "processor"})
    with pytest.raises(SettingsError, match="IMGPIPE_PROCESSOR_TLS_CA: cannot read"):
        ProcessorTls.from_env({"IMGPIPE_PROCESSOR_TLS_CA": "/nonexistent/ca.crt"}).credentials()
    named = ProcessorTls.from_env(
        {"IMGPIPE_PROCESSOR_TLS_CA": str(pki["ca"]), "IMGPIPE_PROCESSOR_TLS_SERVER_NAME": "p"}
    )
    assert named.channel_options() == [("grpc.ssl_target_name_override", "p")]
    assert ProcessorTls.from_env({}).credentials() is None
