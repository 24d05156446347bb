"""Ingest's settings, parsed once at start from the environment."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.config import CommonSettings, env_float, env_int, env_str
from imgpipe.common.errors import SettingsError
from imgpipe.ingest.csv_format import CsvLimits
from imgpipe.ingest.dispatcher import DispatchSettings
from imgpipe.ingest.outbox import MAX_ATTEMPTS
from imgpipe.ingest.processor_tls import ProcessorTls
from imgpipe.ingest.retention import DAY, RetentionSettings
from imgpipe.ingest.retry_policy import RetryPolicy
from imgpipe.ingest.tenants import TenantLimits, Tenants, load_tenants
from imgpipe.ingest.watch import WatchSettings
from imgpipe.ingest.webhooks import WebhookSettings, signing_key

# Room for the fields of a Submit around its CSV, in its largest message.
SUBMIT_OVERHEAD = 64 * 1024

GRPC_ADDR = "0.0.0.0:50051"
HTTP_ADDR = "0.0.0.0:8080"
DEFAULT_PROCESSOR_TARGET = "127.0.0.1:50052"
# The processor call's deadline, as a share of the lease, unless IMGPIPE_CALL_TIMEOUT says.
CALL_TIMEOUT_SHARE = 0.75


@dataclass(frozen=True)
class Settings:
    """Every default is written once, in the dataclass it belongs to; parsing refers to it."""

    common: CommonSettings
    database_url: str
    processor_target: str
    processor_tls: ProcessorTls
    dispatch: DispatchSettings
    watch: WatchSettings
    csv_limits: CsvLimits
    owner: str
    # Principals (by token) and their limits; none: open.
    tenants: Tenants
    webhooks: WebhookSettings
    # Attempts at a result CSV or a webhook delivery before the outbox gives it up.
    outbox_max_attempts: int
    # Bytes of Submit bodies one replica holds at once (gRPC and HTTP together).
    submit_bytes_in_flight: int
    # Where webhooks may be sent: the same rules as image sources.
    address_policy: AddressPolicy
    retention: RetentionSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        max_csv_bytes = env_int(env, "IMGPIPE_MAX_CSV_BYTES", CsvLimits.max_bytes, minimum=1)
        common = CommonSettings.from_env(
            env,
            grpc_addr=GRPC_ADDR,
            http_addr=HTTP_ADDR,
            # The largest CSV and the other fields of its Submit.
            max_message_bytes=max_csv_bytes + SUBMIT_OVERHEAD,
        )
        D, R, W = DispatchSettings, RetryPolicy, WebhookSettings
        RS, T = RetentionSettings, TenantLimits
        lease = env_float(env, "IMGPIPE_LEASE_SECONDS", D.lease_seconds, minimum=1.0)
        dispatch = DispatchSettings(
            max_in_flight=env_int(env, "IMGPIPE_MAX_IN_FLIGHT", D.max_in_flight, minimum=1),
            claim_batch=env_int(env, "IMGPIPE_CLAIM_BATCH", D.claim_batch, minimum=1),
            call_batch=env_int(env, "IMGPIPE_CALL_BATCH", D.call_batch, minimum=1),
            lease_seconds=lease,
            call_timeout=env_float(
                env, "IMGPIPE_CALL_TIMEOUT", lease * CALL_TIMEOUT_SHARE, minimum=0.1
            ),
            poll_interval=env_float(env, "IMGPIPE_POLL_INTERVAL", D.poll_interval, minimum=0.01),
            sweep_interval=env_float(env, "IMGPIPE_SWEEP_INTERVAL", D.sweep_interval, minimum=0.01),
            host_max_in_flight=env_int(env, "IMGPIPE_HOST_MAX_IN_FLIGHT", D.host_max_in_flight),
            retry=RetryPolicy(
                base_seconds=env_float(env, "IMGPIPE_RETRY_BASE_SECONDS", R.base_seconds),
                cap_seconds=env_float(env, "IMGPIPE_RETRY_CAP_SECONDS", R.cap_seconds),
                max_attempts=env_int(env, "IMGPIPE_RETRY_MAX_ATTEMPTS", R.max_attempts, minimum=1),
            ),
        )
        return cls(
            common=common,
            database_url=env_str(env, "DATABASE_URL"),
            processor_target=env_str(env, "IMGPIPE_PROCESSOR_TARGET", DEFAULT_PROCESSOR_TARGET),
            processor_tls=ProcessorTls.from_env(env),
            dispatch=dispatch,
            watch=WatchSettings(
                poll_interval=env_float(
                    env, "IMGPIPE_WATCH_POLL_INTERVAL", WatchSettings.poll_interval, minimum=0.01
                ),
                window=env_int(env, "IMGPIPE_WATCH_WINDOW", WatchSettings.window, minimum=1),
            ),
            csv_limits=CsvLimits(
                max_bytes=max_csv_bytes,
                max_rows=env_int(env, "IMGPIPE_MAX_CSV_ROWS", CsvLimits.max_rows, minimum=1),
                max_urls_per_row=env_int(
                    env, "IMGPIPE_MAX_URLS_PER_ROW", CsvLimits.max_urls_per_row, minimum=1
                ),
                max_url_length=env_int(
                    env, "IMGPIPE_MAX_URL_LENGTH", CsvLimits.max_url_length, minimum=16
                ),
                max_images=env_int(
                    env, "IMGPIPE_MAX_IMAGES_PER_REQUEST", CsvLimits.max_images, minimum=1
                ),
            ),
            submit_bytes_in_flight=env_int(
                env,
                "IMGPIPE_SUBMIT_BYTES_IN_FLIGHT",
                4 * common.grpc.max_message_bytes,
                minimum=common.grpc.max_message_bytes,
            ),
            owner=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            webhooks=WebhookSettings(
                secret=webhook_secret(env),
                timeout_seconds=env_float(
                    env, "IMGPIPE_WEBHOOK_TIMEOUT", W.timeout_seconds, minimum=0.1
                ),
                retry_base_seconds=env_float(
                    env, "IMGPIPE_WEBHOOK_RETRY_BASE_SECONDS", W.retry_base_seconds
                ),
                retry_cap_seconds=env_float(
                    env, "IMGPIPE_WEBHOOK_RETRY_CAP_SECONDS", W.retry_cap_seconds
                ),
                retry_period_seconds=env_float(
                    env, "IMGPIPE_WEBHOOK_RETRY_PERIOD_SECONDS", W.retry_period_seconds
                ),
                concurrency=env_int(env, "IMGPIPE_WEBHOOK_CONCURRENCY", W.concurrency, minimum=1),
                per_endpoint=env_int(
                    env, "IMGPIPE_WEBHOOK_PER_ENDPOINT", W.per_endpoint, minimum=1
                ),
            ),
            outbox_max_attempts=env_int(
                env, "IMGPIPE_OUTBOX_MAX_ATTEMPTS", MAX_ATTEMPTS, minimum=1
            ),
            address_policy=AddressPolicy.from_env(env),
            retention=RetentionSettings(
                retention_seconds=env_float(
                    env, "IMGPIPE_RETENTION_DAYS", RS.retention_seconds / DAY
                )
                * DAY,
                batch=env_int(env, "IMGPIPE_RETENTION_BATCH", RS.batch, minimum=1),
                interval_seconds=env_float(
                    env, "IMGPIPE_RETENTION_INTERVAL", RS.interval_seconds, minimum=0.01
                ),
                final_purge_after=2 * lease,
            ),
            tenants=load_tenants(
                (t.strip() for t in env.get("IMGPIPE_AUTH_TOKENS", "").split(",") if t.strip()),
                env.get("IMGPIPE_AUTH_TOKENS_FILE", "").strip() or None,
                TenantLimits(
                    max_in_flight=env_int(env, "IMGPIPE_TENANT_MAX_IN_FLIGHT", T.max_in_flight),
                    max_queued=env_int(env, "IMGPIPE_TENANT_MAX_QUEUED", T.max_queued),
                    submit_rate_per_minute=env_float(
                        env, "IMGPIPE_SUBMIT_RATE_PER_MINUTE", T.submit_rate_per_minute
                    ),
                    submit_burst=env_int(env, "IMGPIPE_SUBMIT_BURST", T.submit_burst, minimum=1),
                ),
            ),
        )


def webhook_secret(env: Mapping[str, str]) -> str:
    """IMGPIPE_WEBHOOK_SECRET; a `whsec_` one must carry a key in base64, checked here, at
    start, rather than by a delivery that would fail forever."""
    secret = env.get("IMGPIPE_WEBHOOK_SECRET", "")
    try:
        signing_key(secret)
    except ValueError as exc:
        raise SettingsError(f"IMGPIPE_WEBHOOK_SECRET: {exc}") from None
    return secret
