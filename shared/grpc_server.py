"""gRPC server plumbing shared by both services: health, reflection, error mapping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from imgpipe.common import tracing
from imgpipe.common.config import GrpcServerSettings
from imgpipe.common.grpc_errors import ErrorMappingInterceptor
from imgpipe.common.grpc_observe import ObservingInterceptor

# Calls that have arrived but that the Python server has not yet taken up. gRPC's core
# refuses new calls at random (CANCELLED) past 1,000 of them and all past 3,000, and
# cancels one left there 30 s: thousands of watchers opening their streams at once (a
# reconnect after a deploy) outrun one event loop (5,000 took 34 s on a loaded 2-core
# machine), and up to 44 % of them failed. A caller's own deadline still applies.
MAX_PENDING_CALLS = 20_000
MAX_PENDING_CALLS_HARD_LIMIT = 50_000
MAX_PENDING_SECONDS = 120


def server_options(settings: GrpcServerSettings) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Clients may ping this often (gRPC's default, 5 min, makes common client
        # keepalive settings fail with too_many_pings).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD_LIMIT),
        ("grpc.server_max_unrequested_time_in_server", MAX_PENDING_SECONDS),
    ]
    if settings.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            (
                "grpc.max_connection_age_grace_ms",
                int(settings.max_connection_age_grace_seconds * 1000),
            ),
        ]
    return options


def server_credentials(settings: GrpcServerSettings) -> grpc.ServerCredentials | None:
    if not (settings.tls_cert and settings.tls_key):
        return None
    chain = Path(settings.tls_cert).read_bytes()
    key = Path(settings.tls_key).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"

# (the generated add_..._to_server function, the servicer, the service's full name)
GrpcService = tuple[Callable[[Any, grpc.aio.Server], None], Any, str]


def _reflection_v1_alias(servicer: reflection.ReflectionServicer) -> Any:
    """grpc.reflection.v1 has the same messages as v1alpha; serve it with the same code."""
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    return grpc.method_handlers_generic_handler(REFLECTION_V1, handlers)


class GrpcServer:
    """A grpc.aio server with health and reflection, serving the given services."""

    def __init__(
        self,
        addr: str,
        services: Sequence[GrpcService],
        settings: GrpcServerSettings,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
    ) -> None:
        # Outermost first: the RPC's span (when tracing) holds everything; the RPC log and
        # metrics see the final code; the error mapping maps what the inner ones (auth)
        # raise too.
        self.server = grpc.aio.server(
            interceptors=[
                *tracing.server_interceptors(),
                ObservingInterceptor(),
                ErrorMappingInterceptor(),
                *interceptors,
            ],
            options=server_options(settings),
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = []
        for add, servicer, name in services:
            add(servicer, self.server)
            names.append(name)
        self._service_names = names
        reflection_names = [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            REFLECTION_V1,
        ]
        reflection_servicer = reflection.ReflectionServicer(reflection_names)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection_servicer, self.server)
        self.server.add_generic_rpc_handlers((_reflection_v1_alias(reflection_servicer),))
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(addr)
        else:
            self.port = self.server.add_secure_port(addr, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {addr}")

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)
