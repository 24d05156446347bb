"""One image end to end: validate, fetch, compress (codec workers), store.

With the previous output of the same source and options (ingest remembers it), the fetch is
conditional, and an unchanged source (304, or the same bytes) is not encoded again: the
previous output is copied to the new key inside storage.

The pipeline admits at most max_in_flight calls at once and refuses the next one at once
(ProcessorFull), so callers spread work over replicas instead of queueing here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass

from imgpipe.common.errors import InvalidArgument, ServiceError, StorageError, Unavailable
from imgpipe.common.logs import note_fields
from imgpipe.common.storage import Storage
from imgpipe.common.tracing import TRACER
from imgpipe.processor import metrics
from imgpipe.processor.codec_pool import CodecPool
from imgpipe.processor.compress import MAX_QUALITY, check_header
from imgpipe.processor.errors import ProcessorFull, StorageUnavailable
from imgpipe.processor.fetch import Fetched, Fetcher, Validators
from imgpipe.processor.settings import DecodeSettings

log = logging.getLogger(__name__)

CONTENT_TYPE = "image/jpeg"
MAX_KEY_LENGTH = 512
# Relative keys only: segments of [A-Za-z0-9._-] that start with a letter or digit, so no
# empty segment, no leading '/', no '.' or '..'. Ingest sends {request_id}/{serial}-{index}.jpg.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")


@dataclass(frozen=True)
class Result:
    output_key: str
    output_url: str
    input_bytes: int
    output_bytes: int
    width: int
    height: int
    source_format: str
    validators: Validators
    content_sha256: bytes
    reused: bool = False


@dataclass(frozen=True)
class Previous:
    """An earlier output of the same source with the same options."""

    validators: Validators
    content_sha256: bytes
    output_key: str
    input_bytes: int
    output_bytes: int
    width: int
    height: int


def validate(output_key: str, quality: int, previous_key: str | None = None) -> None:
    """Raises InvalidArgument, with one field violation per problem."""
    violations = []
    keys = [("output_key", output_key)]
    if previous_key is not None:
        keys.append(("previous.output_key", previous_key))
    for field, key in keys:
        if len(key) > MAX_KEY_LENGTH or not KEY_PATTERN.fullmatch(key):
            violations.append(
                (
                    field,
                    f"{key!r} is not a relative object key like {{request_id}}/{{serial}}-"
                    "{index}.jpg (letters, digits, '.', '_', '-'; no empty, '.' or '..' segment)",
                )
            )
    if not 0 <= quality <= MAX_QUALITY:
        violations.append(
            ("options.quality", f"must be 1-{MAX_QUALITY} (0 means 50), not {quality}")
        )
    if violations:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in violations), violations)


# Sources up to this size are hashed in the event loop (tens of microseconds); larger ones
# in a thread, where hashlib lets the loop go on.
HASH_INLINE_BYTES = 256 * 1024


async def _sha256(data: bytes) -> bytes:
    if len(data) <= HASH_INLINE_BYTES:
        return hashlib.sha256(data).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())


class Pipeline:
    def __init__(
        self,
        fetcher: Fetcher,
        storage: Storage,
        *,
        codec: CodecPool,
        storage_executor: Executor,
        decode: DecodeSettings,
        max_in_flight: int,
    ) -> None:
        self._fetcher = fetcher
        self._storage = storage
        self._codec = codec
        self._decode = decode
        self._storage_executor = storage_executor
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    async def process(
        self, source_url: str, output_key: str, quality: int, previous: Previous | None = None
    ) -> Result:
        """Fetches source_url, compresses it at quality (0 means 50) and stores it at
        output_key, or copies previous's output there when the source is unchanged; raises
        a ServiceError saying whether retrying can help."""
        fields = {"source_url": source_url, "output_key": output_key}
        try:
            validate(output_key, quality, previous.output_key if previous else None)
            if self._in_flight >= self._max_in_flight:
                raise ProcessorFull(
                    f"this processor already handles {self._max_in_flight} images, its limit"
                )
            self._in_flight += 1
            metrics.IN_FLIGHT.inc()
            try:
                with metrics.IMAGE_SECONDS.time():
                    result = await self._run(source_url, output_key, quality, previous)
            finally:
                self._in_flight -= 1
                metrics.IN_FLIGHT.dec()
        except ServiceError as exc:
            metrics.IMAGES.labels(type(exc).__name__).inc()
            level = logging.WARNING if isinstance(exc, Unavailable) else logging.INFO
            log.log(level, "image failed", extra={**fields, "error": exc.message})
            raise
        except Exception:
            metrics.IMAGES.labels("internal").inc()
            raise
        metrics.IMAGES.labels("reused" if result.reused else "succeeded").inc()
        # On the call's log line (grpc_observe), the one line per image that succeeds.
        note_fields(
            **fields,
            input_bytes=result.input_bytes,
            output_bytes=result.output_bytes,
            reused=result.reused,
        )
        return result

    async def _run(
        self, source_url: str, output_key: str, quality: int, previous: Previous | None
    ) -> Result:
        with metrics.FETCH_SECONDS.time(), TRACER.start_as_current_span("fetch"):
            fetched = await self._fetcher.fetch(
                source_url, previous.validators if previous else Validators()
            )
        digest = b""
        if previous is not None:
            # Whether the source changed decides whether to encode at all: hashed here.
            digest = await _sha256(fetched.body) if fetched.body is not None else b""
            if fetched.body is None or digest == previous.content_sha256:
                reused = await self._reuse(previous, fetched, output_key)
                if reused is not None:
                    return reused
            if fetched.body is None:  # unchanged, but its earlier output is gone: fetch it all
                with metrics.FETCH_SECONDS.time(), TRACER.start_as_current_span("fetch"):
                    fetched = await self._fetcher.fetch(source_url)
        data = fetched.body
        assert data is not None  # only a conditional fetch answers without a body
        metrics.INPUT_BYTES.inc(len(data))
        with metrics.COMPRESS_SECONDS.time():
            estimate = check_header(data, self._decode)
            # Not hashed yet: the codec worker hashes it beside compressing it, where the
            # processor would need a thread to keep its event loop going.
            compressed = await self._codec.compress(data, quality, estimate, digest=not digest)
        # The codec runs in a worker process; its stages become spans here, as it timed them.
        for stage, start, end in compressed.stages:
            TRACER.start_span(stage, start_time=start).end(end_time=end)
        try:
            with TRACER.start_as_current_span("store", attributes={"imgpipe.key": output_key}):
                await self._storage.put(output_key, compressed.jpeg, CONTENT_TYPE)
        except StorageError as exc:
            raise StorageUnavailable(f"storing {output_key} failed: {exc}") from exc
        metrics.OUTPUT_BYTES.inc(len(compressed.jpeg))
        return Result(
            output_key=output_key,
            output_url=self._storage.url_for(output_key),
            input_bytes=len(data),
            output_bytes=len(compressed.jpeg),
            width=compressed.width,
            height=compressed.height,
            source_format=compressed.source_format,
            validators=fetched.validators,
            content_sha256=digest or compressed.source_sha256,
        )

    async def _reuse(self, previous: Previous, fetched: Fetched, output_key: str) -> Result | None:
        """previous's output copied to output_key; None when it is no longer stored."""
        loop = asyncio.get_running_loop()
        try:
            output_url = await loop.run_in_executor(
                self._storage_executor, self._copy, previous.output_key, output_key
            )
        except KeyError:
            return None
        except StorageError as exc:
            raise StorageUnavailable(f"copying to {output_key} failed: {exc}") from exc
        known = fetched.validators
        return Result(
            output_key=output_key,
            output_url=output_url,
            input_bytes=previous.input_bytes,
            output_bytes=previous.output_bytes,
            width=previous.width,
            height=previous.height,
            source_format="",
            # A 304 need not repeat the validators; the earlier ones still hold then.
            validators=Validators(
                known.etag or previous.validators.etag,
                known.last_modified or previous.validators.last_modified,
            ),
            content_sha256=previous.content_sha256,
            reused=True,
        )

    def _copy(self, source_key: str, key: str) -> str:
        """Blocking: runs in the storage executor."""
        if source_key == key:
            # A retry of this very image (its earlier attempt stored it, then the result was
            # lost): the output is in place already. S3 refuses a copy onto itself.
            self._storage.get(key)  # KeyError when it is gone
        else:
            self._storage.copy(source_key, key)
        return self._storage.url_for(key)
