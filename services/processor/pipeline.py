"""One image end to end: validate, fetch, compress (codec workers), store (storage executor).

The pipeline admits at most max_in_flight calls at once and refuses the next one at once
(ProcessorFull), so callers spread work over replicas instead of queueing here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from imgpipe.common.errors import InvalidArgument, ServiceError, StorageError, Unavailable
from imgpipe.common.storage import Storage
from imgpipe.common.tracing import TRACER
from imgpipe.processor import metrics
from imgpipe.processor.codec_pool import CodecPool
from imgpipe.processor.compress import MAX_QUALITY, check_header
from imgpipe.processor.errors import ProcessorFull, StorageUnavailable
from imgpipe.processor.fetch import Fetcher
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


def validate(output_key: str, quality: int) -> None:
    """Raises InvalidArgument, with one field violation per problem."""
    violations = []
    if len(output_key) > MAX_KEY_LENGTH or not KEY_PATTERN.fullmatch(output_key):
        violations.append(
            (
                "output_key",
                f"{output_key!r} is not a relative object key like {{request_id}}/{{serial}}-"
                "{index}.jpg (letters, digits, '.', '_', '-'; no empty, '.' or '..' segment)",
            )
        )
    if not 0 <= quality <= MAX_QUALITY:
        violations.append(
            ("options.quality", f"must be 1-{MAX_QUALITY} (0 means 50), not {quality}")
        )
    if violations:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in violations), violations)


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

    async def process(self, source_url: str, output_key: str, quality: int) -> Result:
        """Fetches source_url, compresses it at quality (0 means 50) and stores it at
        output_key; raises a ServiceError saying whether retrying can help."""
        fields = {"source_url": source_url, "output_key": output_key}
        started = time.monotonic()
        try:
            validate(output_key, quality)
            if self._in_flight >= self._max_in_flight:
                raise ProcessorFull(
                    f"this processor already handles {self._max_in_flight} images, its limit"
                )
            self._in_flight += 1
            metrics.IN_FLIGHT.inc()
            try:
                result = await self._run(source_url, output_key, quality)
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
        metrics.IMAGES.labels("succeeded").inc()
        log.info(
            "image processed",
            extra={
                **fields,
                "input_bytes": result.input_bytes,
                "output_bytes": result.output_bytes,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return result

    async def _run(self, source_url: str, output_key: str, quality: int) -> Result:
        loop = asyncio.get_running_loop()
        with metrics.FETCH_SECONDS.time(), TRACER.start_as_current_span("fetch"):
            data = await self._fetcher.fetch(source_url)
        metrics.INPUT_BYTES.inc(len(data))
        with metrics.COMPRESS_SECONDS.time():
            check_header(data, self._decode)
            compressed = await self._codec.compress(data, quality)
        # The codec runs in a worker process; its stages become spans here, as it timed them.
        for stage, start, end in compressed.stages:
            TRACER.start_span(stage, start_time=start).end(end_time=end)
        try:
            with TRACER.start_as_current_span("store", attributes={"imgpipe.key": output_key}):
                output_url = await loop.run_in_executor(
                    self._storage_executor, self._store, output_key, compressed.jpeg
                )
        except StorageError as exc:
            raise StorageUnavailable(f"storing {output_key} failed: {exc}") from exc
        metrics.OUTPUT_BYTES.inc(len(compressed.jpeg))
        return Result(
            output_key=output_key,
            output_url=output_url,
            input_bytes=len(data),
            output_bytes=len(compressed.jpeg),
            width=compressed.width,
            height=compressed.height,
            source_format=compressed.source_format,
        )

    def _store(self, key: str, jpeg: bytes) -> str:
        """Blocking: runs in the storage executor."""
        self._storage.put(key, jpeg, CONTENT_TYPE)
        return self._storage.url_for(key)
