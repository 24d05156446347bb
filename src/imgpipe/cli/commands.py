"""The commands. Each returns the exit status; errors are raised (CliError, grpc.RpcError).

stdout carries results (the request id first, statuses, the result CSV, JSON lines);
stderr carries progress and messages for the person at the terminal."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from rich.console import Console

from imgpipe.cli.client import Client, CliError
from imgpipe.cli.display import (
    BarView,
    JsonView,
    PlainView,
    View,
    as_json,
    failures_text,
    state_name,
    status_text,
)
from imgpipe.cli.options import Connection
from imgpipe.cli.watching import follow
from imgpipe.v1 import requests_pb2

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_ERROR = 0, 1, 2
DOWNLOAD_TIMEOUT = 60.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _view(as_json_lines: bool) -> View:
    if as_json_lines:
        return JsonView(sys.stdout)
    if sys.stderr.isatty():
        return BarView(Console(stderr=True))
    return PlainView(sys.stderr)


def watch(client: Client, request_id: str, as_json_lines: bool, after: int = 0) -> int:
    """Follows the request to its end; then (for people) the failures and the result."""
    view = _view(as_json_lines)
    try:
        last = follow(client, request_id, view, after)
    except KeyboardInterrupt:
        view.close()
        _say(f"stopped watching; {request_id} goes on (`imgpipe watch {request_id}` resumes)")
        raise
    view.close()
    if not as_json_lines:
        p = last.progress
        _say(
            f"{state_name(last.state)}: {p.succeeded_images} of {p.total_images} images "
            f"succeeded, {p.failed_images} failed, {p.cancelled_images} cancelled"
        )
        if p.failed_images:
            for line in failures_text(client.status(request_id)):
                _say(line)
        if last.result_csv_url:
            _say(f"result CSV: {last.result_csv_url}")
    return EXIT_OK if last.state == requests_pb2.REQUEST_STATE_COMPLETED else EXIT_NOT_COMPLETED


def submit(client: Client, args: argparse.Namespace) -> int:
    with args.file:
        data = args.file.read()
    response = client.submit(
        data,
        webhook_url=args.webhook,
        idempotency_key=args.idempotency_key,
        quality=args.quality,
    )
    if args.json:
        print(as_json(response), flush=True)
    else:
        print(response.request_id, flush=True)
        _say(f"submitted {response.product_count} products, {response.image_count} images")
    if args.watch:
        return watch(client, response.request_id, args.json)
    return EXIT_OK


def status(client: Client, args: argparse.Namespace) -> int:
    response = client.status(args.request_id)
    print(as_json(response) if args.json else "\n".join(status_text(response)), flush=True)
    return EXIT_OK


def cancel(client: Client, args: argparse.Namespace) -> int:
    response = client.cancel(args.request_id)
    if args.json:
        print(as_json(response), flush=True)
    else:
        p = response.progress
        print(
            f"{response.request_id} {state_name(response.state)}: {p.cancelled_images} "
            f"image(s) cancelled, {p.succeeded_images} succeeded, {p.failed_images} failed",
            flush=True,
        )
    return EXIT_OK


def result(client: Client, args: argparse.Namespace, connection: Connection) -> int:
    status = client.status(args.request_id)
    if not status.result_csv_url:
        raise CliError(
            f"no result CSV yet: the request is {state_name(status.state)}; "
            f"`imgpipe watch {args.request_id}` waits for it"
        )
    url = _result_url(status.result_csv_url, args.request_id, connection.http_url)
    data = download(url, _authorization(url, connection))
    if args.output:
        try:
            Path(args.output).write_bytes(data)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        _say(f"wrote {len(data)} bytes to {args.output}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return EXIT_OK


def _result_url(result_csv_url: str, request_id: str, http_url: str) -> str:
    """Ingest's HTTP side when its address is known (it makes the CSV with output URLs
    signed now); else the stored result's own URL when it can be read from here (its
    output URLs are unsigned: public ones, or s3://BUCKET/KEY with presigned storage)."""
    if http_url:
        return f"{http_url}/v1/requests/{request_id}/result.csv"
    parts = urlsplit(result_csv_url)
    readable = parts.scheme in ("http", "https") or (
        parts.scheme == "file" and Path(url2pathname(parts.path)).is_file()
    )
    if readable:
        return result_csv_url
    raise CliError(
        f"the result CSV is at {result_csv_url}, which cannot be read from here; "
        "give ingest's HTTP address with --http-url to download it through ingest"
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def _authorization(url: str, connection: Connection) -> dict[str, str]:
    """The token goes to ingest's own HTTP side only, never to storage or anyone else."""
    if connection.token and connection.http_url and _origin(url) == _origin(connection.http_url):
        return {"Authorization": f"Bearer {connection.token}"}
    return {}


def download(url: str, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    if parts.scheme == "file":
        try:
            return Path(url2pathname(parts.path)).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {url}: {exc.strerror or exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CliError(f"cannot download {url!r}: not an http(s) or file URL")
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode("utf-8", "replace").strip()
        raise CliError(f"{url}: HTTP {exc.code} {exc.reason}: {body}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise CliError(f"cannot download {url}: {exc}") from None


def run(args: argparse.Namespace, client: Client, connection: Connection) -> int:
    if args.command == "submit":
        return submit(client, args)
    if args.command == "watch":
        return watch(client, args.request_id, args.json, after=args.after)
    if args.command == "status":
        return status(client, args)
    if args.command == "cancel":
        return cancel(client, args)
    return result(client, args, connection)
