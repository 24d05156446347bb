"""The ingest domain: requests, images, events and claims, as plain immutable values."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from imgpipe.v1.processor_pb2 import PreviousOutput


class RequestState(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    PARTIALLY_COMPLETED = "PARTIALLY_COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (RequestState.QUEUED, RequestState.PROCESSING)


class ImageState(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Progress:
    total: int
    succeeded: int
    failed: int
    cancelled: int


@dataclass(frozen=True)
class WebhookStatus:
    url: str
    state: str  # PENDING, DELIVERED or FAILED
    delivery_id: str  # "" until the request is terminal
    attempts: int
    last_error: str
    next_attempt_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class WebhookSecret:
    """A secret that signs a principal's webhook deliveries."""

    secret: str
    created_at: datetime | None  # None: set by IMGPIPE_WEBHOOK_SECRET
    expires_at: datetime | None  # None: the current one


@dataclass(frozen=True)
class RequestStatus:
    request_id: uuid.UUID
    state: RequestState
    quality: int
    product_count: int
    progress: Progress
    sequence: int
    result_csv_key: str  # "" until the result CSV is stored
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    webhook: WebhookStatus | None = None
    # Why the result CSV could not be stored, once the outbox gave up on it.
    result_csv_error: str = ""


@dataclass(frozen=True)
class ImageStatus:
    position: int  # of its product in the input
    serial_number: int
    product_name: str
    index: int
    input_url: str
    output_key: str  # "" until it succeeds; a URL is made of it when read
    state: ImageState
    error: str
    input_bytes: int
    output_bytes: int
    attempts: int


@dataclass(frozen=True)
class StatusPage:
    """A request and one page of its images, in input order."""

    status: RequestStatus
    images: list[ImageStatus]
    next_page_token: str  # "" on the last page


@dataclass(frozen=True)
class ImageUpdate:
    serial_number: int
    index: int
    state: ImageState
    output_key: str
    error: str


@dataclass(frozen=True)
class Event:
    sequence: int
    state: RequestState
    progress: Progress
    image: ImageUpdate | None
    result_csv_key: str


@dataclass(frozen=True)
class Submission:
    request_id: uuid.UUID
    product_count: int
    image_count: int


@dataclass(frozen=True)
class Claim:
    """One image leased to this dispatcher for one attempt."""

    image_id: int
    request_id: uuid.UUID
    serial_number: int
    index: int
    input_url: str
    attempt: int
    quality: int
    owner: str
    # What is remembered of its source: an earlier output, for a conditional fetch.
    previous: PreviousOutput | None = None

    @property
    def output_key(self) -> str:
        return output_key(self.request_id, self.serial_number, self.index)


@dataclass(frozen=True)
class Outcome:
    """What happened to one attempt: SUCCEEDED, FAILED, or QUEUED to retry after a delay."""

    state: ImageState
    output_key: str = ""
    error: str = ""
    input_bytes: int = 0
    output_bytes: int = 0
    retry_after: float = 0.0
    # The attempt never ran (the processor was full): it does not count towards the limit.
    refund_attempt: bool = False
    # What a success taught about its source (validators, hash, output), remembered with
    # the outcome for the next fetch of the same source; None: nothing to remember.
    source: SourceMemory | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SourceMemory:
    etag: str
    last_modified: str
    content_sha256: bytes
    width: int
    height: int


def output_key(request_id: uuid.UUID, serial_number: int, index: int) -> str:
    """Deterministic, so a retry overwrites and never duplicates; never from product names."""
    return f"{request_id}/{serial_number}-{index}.jpg"


def result_csv_key(request_id: uuid.UUID, secret: uuid.UUID) -> str:
    """Not derivable from an output's URL (with a public base URL the images are public,
    and the result CSV, every input URL of the request, is its owner's only): secret is
    random, the same on every attempt to write it (the outbox row's delivery id)."""
    return f"{request_id}/result-{secret.hex}.csv"
