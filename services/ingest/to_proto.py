"""Domain values to protobuf messages (gRPC answers them; HTTP answers their JSON form)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from google.protobuf import timestamp_pb2

from imgpipe.ingest.model import (
    Event,
    ImageState,
    Progress,
    RequestState,
    RequestStatus,
    StatusPage,
    Submission,
    WebhookSecret,
    WebhookStatus,
)
from imgpipe.v1 import ingest_pb2, requests_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def request_state(state: RequestState) -> requests_pb2.RequestState.ValueType:
    return requests_pb2.RequestState.Value(f"REQUEST_STATE_{state.value}")


def image_state(state: ImageState) -> requests_pb2.ImageState.ValueType:
    return requests_pb2.ImageState.Value(f"IMAGE_STATE_{state.value}")


def progress(value: Progress) -> requests_pb2.Progress:
    return requests_pb2.Progress(
        total_images=value.total,
        succeeded_images=value.succeeded,
        failed_images=value.failed,
        cancelled_images=value.cancelled,
    )


def submit_response(submission: Submission) -> ingest_pb2.SubmitResponse:
    return ingest_pb2.SubmitResponse(
        request_id=str(submission.request_id),
        product_count=submission.product_count,
        image_count=submission.image_count,
    )


# An object key to the URL a caller can fetch it from, made when read ("" stays "").
UrlOf = Callable[[str], str]


def status_response(page: StatusPage, url_of: UrlOf) -> ingest_pb2.GetStatusResponse:
    status, images = page.status, page.images
    products: list[requests_pb2.Product] = []
    for image in images:
        if not products or products[-1].serial_number != image.serial_number:
            products.append(
                requests_pb2.Product(
                    serial_number=image.serial_number, product_name=image.product_name
                )
            )
        products[-1].images.append(
            requests_pb2.Image(
                input_url=image.input_url,
                output_url=url_of(image.output_key),
                state=image_state(image.state),
                error=image.error,
                input_bytes=image.input_bytes,
                output_bytes=image.output_bytes,
                attempts=image.attempts,
            )
        )
    return ingest_pb2.GetStatusResponse(
        request_id=str(status.request_id),
        state=request_state(status.state),
        progress=progress(status.progress),
        products=products,
        result_csv_url=url_of(status.result_csv_key) if status.state.terminal else "",
        result_csv_error=status.result_csv_error,
        next_page_token=page.next_page_token,
        create_time=timestamp(status.created_at),
        update_time=timestamp(status.updated_at),
        complete_time=timestamp(status.completed_at),
        sequence=status.sequence,
        options=requests_pb2.CompressionOptions(quality=status.quality),
        webhook=webhook(status.webhook),
    )


def webhook(value: WebhookStatus | None) -> ingest_pb2.WebhookDelivery | None:
    if value is None:
        return None
    return ingest_pb2.WebhookDelivery(
        url=value.url,
        state=ingest_pb2.WebhookDelivery.State.Value(f"STATE_{value.state}"),
        delivery_id=value.delivery_id,
        attempts=value.attempts,
        last_error=value.last_error,
        next_attempt_time=timestamp(value.next_attempt_at),
        delivered_time=timestamp(value.delivered_at),
    )


def watch_response(
    request_id: str, event: Event, is_snapshot: bool, url_of: UrlOf
) -> ingest_pb2.WatchStatusResponse:
    message = ingest_pb2.WatchStatusResponse(
        request_id=request_id,
        sequence=event.sequence,
        state=request_state(event.state),
        progress=progress(event.progress),
        result_csv_url=url_of(event.result_csv_key) if event.state.terminal else "",
        snapshot=is_snapshot,
    )
    if event.image is not None:
        message.image.CopyFrom(
            requests_pb2.ImageUpdate(
                serial_number=event.image.serial_number,
                index=event.image.index,
                state=image_state(event.image.state),
                output_url=url_of(event.image.output_key),
                error=event.image.error,
            )
        )
    return message


def cancel_response(status: RequestStatus) -> ingest_pb2.CancelResponse:
    return ingest_pb2.CancelResponse(
        request_id=str(status.request_id),
        state=request_state(status.state),
        progress=progress(status.progress),
    )


def _secrets(secrets: list[WebhookSecret]) -> list[ingest_pb2.WebhookSecret]:
    return [
        ingest_pb2.WebhookSecret(
            secret=s.secret,
            create_time=timestamp(s.created_at),
            expire_time=timestamp(s.expires_at),
        )
        for s in secrets
    ]


def webhook_secrets_response(
    secrets: list[WebhookSecret],
) -> ingest_pb2.GetWebhookSecretsResponse:
    return ingest_pb2.GetWebhookSecretsResponse(secrets=_secrets(secrets))


def rotate_webhook_secret_response(
    secrets: list[WebhookSecret],
) -> ingest_pb2.RotateWebhookSecretResponse:
    return ingest_pb2.RotateWebhookSecretResponse(secrets=_secrets(secrets))
