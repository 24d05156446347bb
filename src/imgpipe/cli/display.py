"""What the CLI shows: progress as a live bar (rich, on a terminal), as plain lines, or as
JSON lines; statuses and failures as text.

JSON is protobuf's JSON mapping with the options of ingest's HTTP side: field names as in the
.proto, enums by name, fields without presence always written."""

from __future__ import annotations

import json
from typing import Any, Protocol, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from imgpipe.v1 import ingest_pb2, requests_pb2

TERMINAL = frozenset(
    {
        requests_pb2.REQUEST_STATE_COMPLETED,
        requests_pb2.REQUEST_STATE_PARTIALLY_COMPLETED,
        requests_pb2.REQUEST_STATE_FAILED,
        requests_pb2.REQUEST_STATE_CANCELLED,
    }
)


def as_json(message: Message) -> str:
    return json.dumps(
        json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        ),
        ensure_ascii=False,
    )


def state_name(state: requests_pb2.RequestState.ValueType) -> str:
    return requests_pb2.RequestState.Name(state).removeprefix("REQUEST_STATE_")


def image_state_name(state: requests_pb2.ImageState.ValueType) -> str:
    return requests_pb2.ImageState.Name(state).removeprefix("IMAGE_STATE_")


def done_count(progress: requests_pb2.Progress) -> int:
    return progress.succeeded_images + progress.failed_images + progress.cancelled_images


class View(Protocol):
    """Shows the messages of a watch as they come."""

    def show(self, message: ingest_pb2.WatchStatusResponse) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class JsonView:
    """One JSON object per message, on stdout: for scripts."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, message: ingest_pb2.WatchStatusResponse) -> None:
        self._out.write(as_json(message) + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        pass  # stdout holds JSON only

    def close(self) -> None:
        pass


def progress_line(message: ingest_pb2.WatchStatusResponse) -> str:
    p = message.progress
    line = (
        f"[{message.sequence:>5}] {state_name(message.state):<19} "
        f"{done_count(p)}/{p.total_images} done ({p.succeeded_images} ok, "
        f"{p.failed_images} failed)"
    )
    if message.HasField("image"):
        image = message.image
        line += f"  #{image.serial_number}-{image.index} {image_state_name(image.state)}"
        if image.error:
            line += f": {image.error}"
    return line


class PlainView:
    """A line per message: for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, message: ingest_pb2.WatchStatusResponse) -> None:
        self._out.write(progress_line(message) + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def close(self) -> None:
        pass


class RateColumn(ProgressColumn):
    """Images done per second, over the last half minute."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")


class BarView:
    """A live progress bar with counts, rate and time left; failures printed above it."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.fields[state]:<19}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task("", total=None, state="CONNECTING", ok=0, failed=0)
        self._progress.start()

    def show(self, message: ingest_pb2.WatchStatusResponse) -> None:
        p = message.progress
        self._progress.update(
            self._task,
            total=p.total_images,
            completed=done_count(p),
            state=state_name(message.state),
            ok=p.succeeded_images,
            failed=p.failed_images,
        )
        image = message.image
        if message.HasField("image") and image.state == requests_pb2.IMAGE_STATE_FAILED:
            self._progress.console.print(
                f"[red]failed[/] #{image.serial_number}-{image.index}: {image.error}",
                markup=True,
                highlight=False,
            )
        if message.state in TERMINAL:
            self._progress.stop_task(self._task)

    def note(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def failures_text(status: ingest_pb2.GetStatusResponse) -> list[str]:
    failed = [
        (product.serial_number, index, image)
        for product in status.products
        for index, image in enumerate(product.images)
        if image.state == requests_pb2.IMAGE_STATE_FAILED
    ]
    if not failed:
        return []
    lines = [f"{len(failed)} image(s) failed:"]
    for serial, index, image in failed:
        lines += [f"  #{serial}-{index} {image.input_url}", f"    {image.error}"]
    return lines


def _time(message: Any, field: str) -> str:
    if not message.HasField(field):
        return "-"
    return str(getattr(message, field).ToJsonString())


def status_text(status: ingest_pb2.GetStatusResponse) -> list[str]:
    p = status.progress
    pending = p.total_images - done_count(p)
    lines = [
        f"request   {status.request_id}",
        f"state     {state_name(status.state)}",
        f"images    {p.total_images}: {p.succeeded_images} succeeded, {p.failed_images} failed, "
        f"{p.cancelled_images} cancelled, {pending} to do",
        f"products  {len(status.products)}",
        f"quality   {status.options.quality}",
        f"created   {_time(status, 'create_time')}",
        f"updated   {_time(status, 'update_time')}",
        f"completed {_time(status, 'complete_time')}",
    ]
    if status.result_csv_url:
        lines.append(f"result    {status.result_csv_url}")
    if status.HasField("webhook"):
        webhook = status.webhook
        state = ingest_pb2.WebhookDelivery.State.Name(webhook.state).removeprefix("STATE_")
        lines.append(f"webhook   {webhook.url} {state} after {webhook.attempts} attempt(s)")
    return lines + failures_text(status)
