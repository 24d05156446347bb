"""Following a request to its end over WatchStatus, resuming where the stream dropped."""

from __future__ import annotations

import time

import grpc

from imgpipe.cli.client import Client, CliError, code_of
from imgpipe.cli.display import TERMINAL, View
from imgpipe.common.backoff import Backoff
from imgpipe.v1 import ingest_pb2

# A stream that fails with one of these is resumed after the last sequence seen.
RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
MAX_RESUMES = 30  # in a row, without a message in between: some 2.5 minutes with the delays
RESUME_BACKOFF = Backoff(first=0.4, cap=5.0, jitter=0.0)


def follow(
    client: Client, request_id: str, view: View, after: int = 0
) -> ingest_pb2.WatchStatusResponse:
    """Shows every message until the terminal one, which it returns. A stream that drops
    (or ends early) is resumed with after_sequence = the last sequence seen, so nothing is
    shown twice or skipped."""
    resumes = 0
    while True:
        try:
            for message in client.watch(request_id, after):
                resumes = 0
                after = message.sequence
                view.show(message)
                if message.state in TERMINAL:
                    return message
            reason = "the stream ended early"
        except grpc.RpcError as exc:
            code = code_of(exc)
            if code not in RESUMABLE:
                raise
            reason = f"the stream dropped ({code.name})"
        resumes += 1
        if resumes > MAX_RESUMES:
            raise CliError(f"{reason} {MAX_RESUMES} times in a row; giving up")
        delay = RESUME_BACKOFF.delay(resumes)
        view.note(f"{reason}; resuming after event {after} in {delay:.1f} s")
        time.sleep(delay)
