"""The processor's settings, parsed once at start from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.config import CommonSettings, env_float, env_int, env_str

MIB = 1024 * 1024
# What source hosts see; operators add a contact: `imgpipe/0.1 (+https://example.com/bot)`.
DEFAULT_USER_AGENT = f"imgpipe/{version('imgpipe')} (image compression service)"
DEFAULT_MAX_FRAMES = 1000
DEFAULT_MAX_JPEG_SCANS = 100
DEFAULT_CODEC_MEMORY_BYTES = 768 * MIB
DEFAULT_DECODE_CPU_SECONDS = 10


@dataclass(frozen=True)
class FetchSettings:
    """How sources are fetched."""

    policy: AddressPolicy
    max_source_bytes: int = 50 * MIB
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FetchSettings:
        return cls(
            policy=AddressPolicy.from_env(env),
            max_source_bytes=env_int(
                env, "IMGPIPE_MAX_SOURCE_BYTES", cls.max_source_bytes, minimum=1
            ),
            connect_timeout=env_float(
                env, "IMGPIPE_FETCH_CONNECT_TIMEOUT", cls.connect_timeout, minimum=0.01
            ),
            read_timeout=env_float(
                env, "IMGPIPE_FETCH_READ_TIMEOUT", cls.read_timeout, minimum=0.01
            ),
            total_timeout=env_float(
                env, "IMGPIPE_FETCH_TOTAL_TIMEOUT", cls.total_timeout, minimum=0.01
            ),
            max_redirects=env_int(env, "IMGPIPE_MAX_REDIRECTS", cls.max_redirects),
            user_agent=env_str(env, "IMGPIPE_USER_AGENT", cls.user_agent),
        )


@dataclass(frozen=True)
class DecodeSettings:
    """How much of an image the processor agrees to decode."""

    # Width x height, checked from the header before decoding.
    max_pixels: int = 100_000_000
    # Frames of an animation (GIF, APNG, WebP), counted without decoding them.
    max_frames: int = DEFAULT_MAX_FRAMES
    # Scans of a JPEG (a progressive one has a few to a dozen), counted without decoding.
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS
    # Bytes the decodes in flight may take together, each estimated from its header; a
    # decode waits until it fits, and one larger than this is refused.
    memory_bytes: int = DEFAULT_CODEC_MEMORY_BYTES
    # CPU seconds one image may take in its codec worker (whole seconds: RLIMIT_CPU).
    cpu_seconds: int = DEFAULT_DECODE_CPU_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DecodeSettings:
        return cls(
            max_pixels=env_int(env, "IMGPIPE_MAX_PIXELS", cls.max_pixels, minimum=1),
            max_frames=env_int(env, "IMGPIPE_MAX_FRAMES", cls.max_frames, minimum=1),
            max_jpeg_scans=env_int(env, "IMGPIPE_MAX_JPEG_SCANS", cls.max_jpeg_scans, minimum=1),
            memory_bytes=env_int(env, "IMGPIPE_CODEC_MEMORY_BYTES", cls.memory_bytes, minimum=MIB),
            cpu_seconds=env_int(env, "IMGPIPE_DECODE_CPU_SECONDS", cls.cpu_seconds, minimum=1),
        )


@dataclass(frozen=True)
class Settings:
    """Everything the processor reads from its environment."""

    common: CommonSettings
    fetch: FetchSettings
    decode: DecodeSettings
    # Codec worker processes, each decoding and encoding one image at a time.
    workers: int
    # Calls handled at once; one more is refused with RESOURCE_EXHAUSTED, never queued.
    max_in_flight: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        workers = env_int(env, "IMGPIPE_WORKERS", os.cpu_count() or 1, minimum=1)
        max_in_flight = env_int(env, "IMGPIPE_MAX_IN_FLIGHT", 4 * workers, minimum=1)
        return cls(
            common=CommonSettings.from_env(
                env,
                grpc_addr="0.0.0.0:50052",
                http_addr="0.0.0.0:8081",
                # Closed after 5 minutes, so ingest's round_robin spreads over replicas
                # added since it connected.
                max_connection_age_seconds=300.0,
            ),
            fetch=FetchSettings.from_env(env),
            decode=DecodeSettings.from_env(env),
            workers=workers,
            max_in_flight=max_in_flight,
        )
