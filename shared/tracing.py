"""OpenTelemetry traces for both services, exported over OTLP when the standard variables
ask for it, and nothing at all when they do not.

Tracing is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is
set (unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). Then the console
script calls start_tracing() once: an SDK tracer provider with a batching OTLP exporter
(`http/protobuf`, or `grpc` by `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`); the SDK reads the
rest of `OTEL_*` itself (service name, resource attributes, headers, sampler, batch sizes).
The instrumentations: asyncpg and aiohttp's client are patched process-wide; gRPC servers
and channels and the aiohttp server take the interceptors and middleware below, which are
empty lists when tracing is off, so an untraced process runs none of their code. Context
crosses gRPC in W3C `traceparent` metadata (the SDK's default propagator).

Spans of our own come from TRACER; with no provider started they are the API's no-op spans.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

log = logging.getLogger(__name__)

TRACER = trace.get_tracer("imgpipe")
# On the Submit span and on every span that starts a trace about a request's work.
REQUEST_ID_ATTRIBUTE = "imgpipe.request_id"
ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"


def _provider() -> TracerProvider | None:
    """The SDK provider start_tracing installed, if it did (the API's global)."""
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def enabled() -> bool:
    """Whether start_tracing installed a provider: spans are recorded and exported."""
    return _provider() is not None


@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = False
    protocol: str = HTTP_PROTOBUF

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingSettings:
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        no_exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
        endpoint = any(env.get(name, "").strip() for name in ENDPOINTS)
        protocol = next((env[n].strip() for n in PROTOCOLS if env.get(n, "").strip()), "")
        return cls(
            enabled=endpoint and not disabled and not no_exporter,
            protocol=protocol or HTTP_PROTOBUF,
        )


def _exporter(protocol: str) -> SpanExporter:
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def start_tracing(settings: TracingSettings, service_name: str) -> None:
    """Installs the SDK provider and the process-wide instrumentations, when enabled.
    service_name is the default of `service.name`; `OTEL_SERVICE_NAME` wins."""
    if not settings.enabled or _provider() is not None:
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings.protocol)))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    log.info("tracing on: spans exported over OTLP", extra={"protocol": settings.protocol})


def stop_tracing() -> None:
    """Exports what is still buffered (the batch processor's shutdown flushes)."""
    provider = _provider()
    if provider is not None:
        provider.shutdown()


def server_interceptors() -> list[Any]:
    """For grpc.aio.server(interceptors=...): the span of each RPC, in the caller's trace."""
    provider = _provider()
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=provider)]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """For a grpc.aio channel: a span per call, its context sent as `traceparent`."""
    provider = _provider()
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=provider))  # type: ignore[no-untyped-call]


def http_middlewares() -> list[Middleware]:
    """For an aiohttp server: a span per request, in the caller's trace."""
    provider = _provider()
    if provider is None:
        return []
    from opentelemetry.instrumentation.aiohttp_server import create_aiohttp_middleware

    return [create_aiohttp_middleware(tracer_provider=provider)]
