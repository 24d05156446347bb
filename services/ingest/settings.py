"""Ingest's settings, parsed once at start from the environment."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.config import CommonSettings, env_float, env_int, env_str
from imgpipe.ingest.csv_format import CsvLimits
from imgpipe.ingest.dispatcher import DispatchSettings
from imgpipe.ingest.retry_policy import RetryPolicy
from imgpipe.ingest.watch import WatchSettings
from imgpipe.ingest.webhooks import WebhookSettings


@dataclass(frozen=True)
class Settings:
    common: CommonSettings
    database_url: str
    processor_target: str
    dispatch: DispatchSettings
    watch: WatchSettings
    csv_limits: CsvLimits
    # Per token (per replica); 0 turns the limit off.
    submit_rate_per_minute: float
    submit_burst: int
    owner: str
    auth_tokens: tuple[str, ...]
    webhooks: WebhookSettings
    # Where webhooks may be sent: the same rules as image sources.
    address_policy: AddressPolicy

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        common = CommonSettings.from_env(env, grpc_addr="0.0.0.0:50051", http_addr="0.0.0.0:8080")
        lease = env_float(env, "IMGPIPE_LEASE_SECONDS", 60.0, minimum=1.0)
        dispatch = DispatchSettings(
            max_in_flight=env_int(env, "IMGPIPE_MAX_IN_FLIGHT", 32, minimum=1),
            claim_batch=env_int(env, "IMGPIPE_CLAIM_BATCH", 16, minimum=1),
            lease_seconds=lease,
            call_timeout=env_float(env, "IMGPIPE_CALL_TIMEOUT", lease * 0.75, minimum=0.1),
            poll_interval=env_float(env, "IMGPIPE_POLL_INTERVAL", 1.0, minimum=0.01),
            sweep_interval=env_float(env, "IMGPIPE_SWEEP_INTERVAL", 2.0, minimum=0.01),
            retry=RetryPolicy(
                base_seconds=env_float(env, "IMGPIPE_RETRY_BASE_SECONDS", 2.0),
                cap_seconds=env_float(env, "IMGPIPE_RETRY_CAP_SECONDS", 30.0),
                max_attempts=env_int(env, "IMGPIPE_RETRY_MAX_ATTEMPTS", 5, minimum=1),
            ),
        )
        return cls(
            common=common,
            database_url=env_str(env, "DATABASE_URL"),
            processor_target=env_str(env, "IMGPIPE_PROCESSOR_TARGET", "127.0.0.1:50052"),
            dispatch=dispatch,
            watch=WatchSettings(
                poll_interval=env_float(env, "IMGPIPE_WATCH_POLL_INTERVAL", 2.0, minimum=0.01)
            ),
            csv_limits=CsvLimits(
                max_bytes=env_int(env, "IMGPIPE_MAX_CSV_BYTES", CsvLimits.max_bytes, minimum=1),
                max_rows=env_int(env, "IMGPIPE_MAX_CSV_ROWS", CsvLimits.max_rows, minimum=1),
                max_urls_per_row=env_int(
                    env, "IMGPIPE_MAX_URLS_PER_ROW", CsvLimits.max_urls_per_row, minimum=1
                ),
                max_url_length=env_int(
                    env, "IMGPIPE_MAX_URL_LENGTH", CsvLimits.max_url_length, minimum=16
                ),
            ),
            submit_rate_per_minute=env_float(env, "IMGPIPE_SUBMIT_RATE_PER_MINUTE", 120.0),
            submit_burst=env_int(env, "IMGPIPE_SUBMIT_BURST", 30, minimum=1),
            owner=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            webhooks=WebhookSettings(
                secret=env.get("IMGPIPE_WEBHOOK_SECRET", ""),
                timeout_seconds=env_float(env, "IMGPIPE_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
                retry_base_seconds=env_float(env, "IMGPIPE_WEBHOOK_RETRY_BASE_SECONDS", 10.0),
                retry_cap_seconds=env_float(env, "IMGPIPE_WEBHOOK_RETRY_CAP_SECONDS", 3600.0),
                retry_period_seconds=env_float(
                    env, "IMGPIPE_WEBHOOK_RETRY_PERIOD_SECONDS", 86400.0
                ),
            ),
            address_policy=AddressPolicy.from_env(env),
            auth_tokens=tuple(
                t.strip() for t in env.get("IMGPIPE_AUTH_TOKENS", "").split(",") if t.strip()
            ),
        )
