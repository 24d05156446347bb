"""`imgpipe`: submit CSVs, watch their progress, fetch results, from a terminal or a script.

`imgpipe submit products.csv --watch` prints the request id on stdout, progress on stderr,
and exits 0 only when every image succeeded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import TextIO, cast

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_ERROR = 0, 1, 2
TERMINAL = {
    types_pb2.REQUEST_STATE_COMPLETED,
    types_pb2.REQUEST_STATE_PARTIALLY_COMPLETED,
    types_pb2.REQUEST_STATE_FAILED,
    types_pb2.REQUEST_STATE_CANCELLED,
}
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def _state_name(state: types_pb2.RequestState.ValueType) -> str:
    return types_pb2.RequestState.Name(state).removeprefix("REQUEST_STATE_")


def _image_state_name(state: types_pb2.ImageState.ValueType) -> str:
    return types_pb2.ImageState.Name(state).removeprefix("IMAGE_STATE_")


class CliError(Exception):
    pass


def _describe_rpc_error(exc: grpc.RpcError) -> str:
    call = cast(grpc.Call, exc)  # what grpc raises is a Call as well as an RpcError
    lines = [f"{call.code().name}: {call.details()}"]
    status = rpc_status.from_call(call)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(lines)


def _progress_line(message: ingest_pb2.WatchStatusResponse) -> str:
    p = message.progress
    done = p.succeeded_images + p.failed_images + p.cancelled_images
    line = (
        f"[{message.sequence:>5}] {_state_name(message.state):<19} "
        f"{done}/{p.total_images} done ({p.succeeded_images} ok, {p.failed_images} failed)"
    )
    if message.HasField("image"):
        image = message.image
        line += f"  #{image.serial_number}-{image.index} {_image_state_name(image.state)}"
        if image.error:
            line += f": {image.error}"
    return line


def watch(
    stub: ingest_pb2_grpc.IngestServiceStub,
    request_id: str,
    out: TextIO,
    as_json: bool,
    after: int = 0,
) -> int:
    """Streams progress until a terminal state, resuming where it left off if the stream
    drops. Returns the exit code."""
    last: ingest_pb2.WatchStatusResponse | None = None
    retries = 0
    while True:
        try:
            for message in stub.WatchStatus(
                ingest_pb2.WatchStatusRequest(request_id=request_id, after_sequence=after)
            ):
                retries = 0
                last = message
                after = message.sequence
                if as_json:
                    out.write(json_format.MessageToJson(message, indent=None) + "\n")
                else:
                    out.write(_progress_line(message) + "\n")
                out.flush()
            break
        except grpc.RpcError as exc:
            if cast(grpc.Call, exc).code() not in RESUMABLE or retries >= 30:
                raise
            retries += 1
            time.sleep(min(5.0, 0.2 * 2**retries))
    if last is None or last.state not in TERMINAL:
        return EXIT_NOT_COMPLETED
    if not as_json:
        _print_failures(stub, request_id, out)
        if last.result_csv_url:
            out.write(f"result CSV: {last.result_csv_url}\n")
    return EXIT_OK if last.state == types_pb2.REQUEST_STATE_COMPLETED else EXIT_NOT_COMPLETED


def _print_failures(stub: ingest_pb2_grpc.IngestServiceStub, request_id: str, out: TextIO) -> None:
    status = stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=request_id))
    failed = [
        (product.serial_number, index, image)
        for product in status.products
        for index, image in enumerate(product.images)
        if image.state == types_pb2.IMAGE_STATE_FAILED
    ]
    if failed:
        out.write(f"{len(failed)} image(s) failed:\n")
        for serial, index, image in failed:
            out.write(f"  #{serial}-{index} {image.input_url}\n    {image.error}\n")


def fetch_url(url: str) -> bytes:
    if not url.startswith(("http://", "https://", "file://")):
        raise CliError(f"cannot fetch {url!r}")
    with urllib.request.urlopen(url, timeout=60) as response:
        data: bytes = response.read()
        return data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgpipe", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("IMGPIPE_TARGET", "127.0.0.1:50051"),
        help="ingest's gRPC address (env IMGPIPE_TARGET; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="submit a CSV file")
    submit.add_argument("file", type=argparse.FileType("rb"))
    submit.add_argument("--webhook", default="", help="URL to POST to when done")
    submit.add_argument("--quality", type=int, default=0, help="JPEG quality 1-95 (default 50)")
    submit.add_argument("--idempotency-key", default="")
    submit.add_argument("--watch", action="store_true", help="stream progress until done")

    for name, text in [
        ("status", "print a request's status"),
        ("watch", "stream a request's progress until it is done"),
        ("cancel", "cancel a request"),
        ("result", "download a request's result CSV"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument("request_id")
        if name == "watch":
            command.add_argument("--after", type=int, default=0, help="resume after a sequence")
        if name == "result":
            command.add_argument("-o", "--output", help="file to write (default: stdout)")
    return parser


def run(args: argparse.Namespace, stub: ingest_pb2_grpc.IngestServiceStub) -> int:
    if args.command == "submit":
        with args.file:
            data = args.file.read()
        response = stub.Submit(
            ingest_pb2.SubmitRequest(
                csv=data,
                webhook_url=args.webhook,
                idempotency_key=args.idempotency_key,
                options=types_pb2.CompressionOptions(quality=args.quality),
            )
        )
        if args.json:
            print(json_format.MessageToJson(response, indent=None), flush=True)
        else:
            print(response.request_id, flush=True)
            print(
                f"submitted {response.product_count} products, {response.image_count} images",
                file=sys.stderr,
            )
        if args.watch:
            out = sys.stdout if args.json else sys.stderr
            return watch(stub, response.request_id, out, args.json)
        return EXIT_OK
    if args.command == "watch":
        out = sys.stdout if args.json else sys.stderr
        return watch(stub, args.request_id, out, args.json, after=args.after)
    if args.command == "status":
        status = stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=args.request_id))
        print(json_format.MessageToJson(status, indent=None if args.json else 2))
        return EXIT_OK
    if args.command == "cancel":
        cancelled = stub.Cancel(ingest_pb2.CancelRequest(request_id=args.request_id))
        print(json_format.MessageToJson(cancelled, indent=None if args.json else 2))
        return EXIT_OK
    status = stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=args.request_id))
    if not status.result_csv_url:
        raise CliError(f"no result CSV yet (the request is {_state_name(status.state)})")
    data = fetch_url(status.result_csv_url)
    if args.output:
        with open(args.output, "wb") as out_file:
            out_file.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        with grpc.insecure_channel(args.target) as channel:
            code = run(args, ingest_pb2_grpc.IngestServiceStub(channel))
    except grpc.RpcError as exc:
        print(f"imgpipe: {_describe_rpc_error(exc)}", file=sys.stderr)
        code = EXIT_ERROR
    except (CliError, OSError) as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
