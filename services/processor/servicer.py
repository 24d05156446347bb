"""ProcessorService: protobuf in, pipeline, protobuf out. Errors map in the interceptor."""

from __future__ import annotations

from typing import Any

import grpc

from imgpipe.processor.fetch import Validators
from imgpipe.processor.pipeline import CONTENT_TYPE, Pipeline, Previous
from imgpipe.v1 import processor_pb2, processor_pb2_grpc

SERVICE_NAME = processor_pb2.DESCRIPTOR.services_by_name["ProcessorService"].full_name


class ProcessorServicer(processor_pb2_grpc.ProcessorServiceServicer):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def ProcessImage(
        self,
        request: processor_pb2.ProcessImageRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> processor_pb2.ProcessImageResponse:
        result = await self._pipeline.process(
            request.source_url,
            request.output_key,
            request.options.quality,
            previous_output(request),
        )
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
