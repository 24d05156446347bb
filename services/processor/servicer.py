"""ProcessorService: protobuf in, pipeline, protobuf out. Errors map in the interceptor,
and, for each image of a ProcessImages call, here through the same table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2

from imgpipe.common.errors import InvalidArgument, ServiceError
from imgpipe.common.grpc_errors import INTERNAL_ERROR, status_of
from imgpipe.common.logs import log_fields
from imgpipe.processor.fetch import Validators
from imgpipe.processor.pipeline import CONTENT_TYPE, Pipeline, Previous, Result
from imgpipe.v1 import processor_pb2, processor_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = processor_pb2.DESCRIPTOR.services_by_name["ProcessorService"].full_name
# Images one ProcessImages call may carry.
MAX_IMAGES_PER_CALL = 64


class ProcessorServicer(processor_pb2_grpc.ProcessorServiceServicer):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def ProcessImage(
        self,
        request: processor_pb2.ProcessImageRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> processor_pb2.ProcessImageResponse:
        return response_of(await self._process(request))

    async def ProcessImages(
        self,
        request: processor_pb2.ProcessImagesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[processor_pb2.ProcessImagesResponse]:
        count = len(request.images)
        if not 1 <= count <= MAX_IMAGES_PER_CALL:
            raise InvalidArgument(
                f"images: a call carries 1 to {MAX_IMAGES_PER_CALL} images, not {count}",
                [("images", f"{count} images; 1 to {MAX_IMAGES_PER_CALL} allowed")],
            )
        tasks = [
            asyncio.create_task(self._one(index, image))
            for index, image in enumerate(request.images)
        ]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
        finally:
            # The call ended early (cancelled, out of time): so do its images.
            for task in tasks:
                task.cancel()

    async def _one(
        self, index: int, request: processor_pb2.ProcessImageRequest
    ) -> processor_pb2.ProcessImagesResponse:
        """One image of a ProcessImages call, with a log line of its own."""
        with log_fields():
            try:
                result = await self._process(request)
            except ServiceError as exc:  # the pipeline logged it
                return processor_pb2.ProcessImagesResponse(
                    index=index, status=_image_status(status_of(exc))
                )
            except Exception:
                log.exception("image failed unexpectedly")
                status = processor_pb2.ImageStatus(code=code_pb2.INTERNAL, message=INTERNAL_ERROR)
                return processor_pb2.ProcessImagesResponse(index=index, status=status)
            log.info("image processed")
        return processor_pb2.ProcessImagesResponse(index=index, result=response_of(result))

    async def _process(self, request: processor_pb2.ProcessImageRequest) -> Result:
        return await self._pipeline.process(
            request.source_url,
            request.output_key,
            request.options.quality,
            previous_output(request),
        )


def response_of(result: Result) -> processor_pb2.ProcessImageResponse:
    return processor_pb2.ProcessImageResponse(
        output_key=result.output_key,
        output_url=result.output_url,
        input_bytes=result.input_bytes,
        output_bytes=result.output_bytes,
        width=result.width,
        height=result.height,
        content_type=CONTENT_TYPE,
        source_format=result.source_format,
        etag=result.validators.etag,
        last_modified=result.validators.last_modified,
        content_sha256=result.content_sha256,
        reused=result.reused,
    )


def _image_status(status: status_pb2.Status) -> processor_pb2.ImageStatus:
    """google.rpc.Status as ImageStatus: the same fields, so the same bytes."""
    return processor_pb2.ImageStatus.FromString(status.SerializeToString())


def previous_output(request: processor_pb2.ProcessImageRequest) -> Previous | None:
    if not request.HasField("previous"):
        return None
    p = request.previous
    return Previous(
        validators=Validators(p.etag, p.last_modified),
        content_sha256=p.content_sha256,
        output_key=p.output_key,
        input_bytes=p.input_bytes,
        output_bytes=p.output_bytes,
        width=p.width,
        height=p.height,
    )
