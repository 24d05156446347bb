"""TLS on the gRPC server, and mutual TLS when a client CA is configured."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.ingest_harness import running_ingest

Key = ec.EllipticCurvePrivateKey


def _certificate(
    name: str, key: Key, issuer: tuple[x509.Certificate, Key] | None, *, ca: bool
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: Key) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("imgpipe test CA", ca_key, None, ca=True)
    paths = {"ca": _write(tmp_path, "ca", ca, ca_key)[0]}
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[name], paths[f"{name}_key"] = _write(
            tmp_path, name, _certificate(name, key, (ca, ca_key), ca=False), key
        )
    return paths


async def check_health(target: str, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return response.status


async def test_mutual_tls(database_url: str, tmp_path: Path, pki: dict[str, Path]) -> None:
    env = {
        "DATABASE_URL": database_url,
        "IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects",
        "IMGPIPE_PROCESSOR_TARGET": "127.0.0.1:9",
        "IMGPIPE_TLS_CERT": str(pki["server"]),
        "IMGPIPE_TLS_KEY": str(pki["server_key"]),
        "IMGPIPE_TLS_CLIENT_CA": str(pki["ca"]),
    }
    async with running_ingest(env) as ingest:
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
