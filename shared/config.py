"""Parsing of environment settings, done once at start into frozen objects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from imgpipe.common.errors import SettingsError
from imgpipe.common.tracing import TracingSettings


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise SettingsError(f"{name} is required")
    return default


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


MAX_PORT = 65_535


def env_ports(env: Mapping[str, str], name: str) -> frozenset[int] | None:
    """A comma-separated list of TCP ports; None when the variable is unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items or not all(item.isdigit() and 1 <= int(item) <= MAX_PORT for item in items):
        raise SettingsError(f"{name} must be comma-separated ports (1-{MAX_PORT}), not {raw!r}")
    return frozenset(int(item) for item in items)


@dataclass(frozen=True)
class S3Settings:
    """The standard AWS variables, as the minio SDK needs them."""

    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    region: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        return cls(
            endpoint_url=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )


@dataclass(frozen=True)
class GrpcServerSettings:
    """How a gRPC server listens: message size, keepalive, connection age, TLS."""

    max_message_bytes: int = 16 * 1024 * 1024
    # The server pings idle connections this often, so proxies keep long streams open.
    keepalive_seconds: float = 60.0
    # Connections are closed after this long (0: never), so clients rebalance over new
    # replicas; calls in flight get max_connection_age_grace_seconds to finish.
    max_connection_age_seconds: float = 0.0
    max_connection_age_grace_seconds: float = 120.0
    tls_cert: str | None = None
    tls_key: str | None = None
    # With a client CA, clients must present a certificate it signed (mutual TLS).
    tls_client_ca: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        max_connection_age_seconds: float = 0.0,
        max_message_bytes: int = max_message_bytes,
    ) -> GrpcServerSettings:
        cert, key = env.get("IMGPIPE_TLS_CERT") or None, env.get("IMGPIPE_TLS_KEY") or None
        if bool(cert) != bool(key):
            raise SettingsError("IMGPIPE_TLS_CERT and IMGPIPE_TLS_KEY go together")
        client_ca = env.get("IMGPIPE_TLS_CLIENT_CA") or None
        if client_ca and not cert:
            raise SettingsError("IMGPIPE_TLS_CLIENT_CA needs IMGPIPE_TLS_CERT and _KEY")
        return cls(
            max_message_bytes=env_int(
                env, "IMGPIPE_GRPC_MAX_MESSAGE_BYTES", max_message_bytes, minimum=1024
            ),
            keepalive_seconds=env_float(
                env, "IMGPIPE_GRPC_KEEPALIVE_SECONDS", cls.keepalive_seconds, minimum=1
            ),
            max_connection_age_seconds=env_float(
                env, "IMGPIPE_GRPC_MAX_CONNECTION_AGE_SECONDS", max_connection_age_seconds
            ),
            max_connection_age_grace_seconds=env_float(
                env,
                "IMGPIPE_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
                cls.max_connection_age_grace_seconds,
            ),
            tls_cert=cert,
            tls_key=key,
            tls_client_ca=client_ca,
        )


@dataclass(frozen=True)
class CommonSettings:
    """Settings both services read."""

    grpc_addr: str
    http_addr: str
    storage_url: str
    public_base_url: str | None
    s3: S3Settings
    grpc: GrpcServerSettings
    log_level: str = "INFO"
    # On SIGTERM: the time to finish the work in hand.
    grace_seconds: float = 20.0
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        grpc_addr: str,
        http_addr: str,
        max_connection_age_seconds: float = 0.0,
        max_message_bytes: int = GrpcServerSettings.max_message_bytes,
    ) -> CommonSettings:
        return cls(
            grpc_addr=env_str(env, "IMGPIPE_GRPC_ADDR", grpc_addr),
            http_addr=env_str(env, "IMGPIPE_HTTP_ADDR", http_addr),
            storage_url=env_str(env, "IMGPIPE_STORAGE_URL"),
            public_base_url=env.get("IMGPIPE_PUBLIC_BASE_URL") or None,
            s3=S3Settings.from_env(env),
            log_level=env_str(env, "IMGPIPE_LOG_LEVEL", cls.log_level).upper(),
            grace_seconds=env_float(env, "IMGPIPE_GRACE_SECONDS", cls.grace_seconds),
            grpc=GrpcServerSettings.from_env(
                env,
                max_connection_age_seconds=max_connection_age_seconds,
                max_message_bytes=max_message_bytes,
            ),
            tracing=TracingSettings.from_env(env),
        )


def process_env() -> Mapping[str, str]:
    """The one place that reads os.environ; the result is parsed once, at start."""
    return dict(os.environ)


def split_host_port(addr: str) -> tuple[str, int]:
    """'0.0.0.0:8080' -> ('0.0.0.0', 8080); '[::]:8080' -> ('::', 8080)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingsError(f"not a host:port address: {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
