"""The result CSV, written a product at a time from the database: memory bounded by one
page of images, whatever the request's size.

Two readers, one writer: the stored object (written once by the outbox) carries URLs
without signatures (storage.plain_url), so nothing in it expires; GET
/v1/requests/{id}/result.csv makes it anew with URLs signed when asked for.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

from imgpipe.ingest.csv_format import ResultRow, result_csv_header, result_csv_line
from imgpipe.ingest.model import ImageState, ImageStatus
from imgpipe.ingest.store import Store

PAGE_IMAGES = 2000


async def products_in_order(
    store: Store, request_id: uuid.UUID, page: int = PAGE_IMAGES
) -> AsyncIterator[list[ImageStatus]]:
    """Each product's images, a product at a time, in input order."""
    start = (0, 0)
    current: list[ImageStatus] = []
    while True:
        images = await store.images(request_id, start, page)
        for image in images:
            if current and current[0].position != image.position:
                yield current
                current = []
            current.append(image)
        if len(images) < page:
            break
        start = (images[-1].position, images[-1].index + 1)
    if current:
        yield current


async def result_csv_lines(
    store: Store, request_id: uuid.UUID, url_of: Callable[[str], str]
) -> AsyncIterator[bytes]:
    """The header, then a line per product with url_of(key) of each output ("" where the
    image did not succeed)."""
    yield result_csv_header()
    async for images in products_in_order(store, request_id):
        yield result_csv_line(
            ResultRow(
                serial_number=images[0].serial_number,
                product_name=images[0].product_name,
                input_urls=[i.input_url for i in images],
                output_urls=[
                    url_of(i.output_key) if i.state is ImageState.SUCCEEDED else "" for i in images
                ],
            )
        )
