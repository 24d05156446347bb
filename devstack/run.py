"""`make run`: imgpipe on this machine, then the example CSV through the `imgpipe` CLI.

Starts PostgreSQL (DATABASE_URL if it answers, else a private throwaway cluster), a
loopback server for `examples/images/` on port 8765 (the port `examples/products.csv`
names), a local object store in a temporary directory, two processors and an ingest;
submits the CSV with `imgpipe submit --watch` (progress on stderr) and prints the result
CSV on stdout. Everything is stopped and removed on the way out, also on Ctrl-C or
SIGTERM. Exit status: 0 when the request COMPLETED, 130 when interrupted, 1 otherwise.

    python -m devstack.run [CSV] [--keep] [--processors N]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from devstack.image_server import ImageServer
from devstack.postgres import PostgresError, postgres
from devstack.stack import Stack, StackError, console_script

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IMAGE_PORT = 8765  # fixed: examples/products.csv points here
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PREFIX = "[make run]"


class Failed(Exception):
    """Something in the run went wrong; the message says what."""


def say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """The first SIGINT/SIGTERM/SIGHUP unwinds into the cleanup; later ones are ignored."""
    _ignore_signals()
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.run", description=__doc__)
    parser.add_argument("csv", nargs="?", type=Path, default=EXAMPLES / "products.csv")
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    parser.add_argument("--processors", type=int, default=2)
    return parser.parse_args(argv)


def start_stack(args: argparse.Namespace, cleanup: ExitStack) -> Stack:
    """PostgreSQL, the image server, an object store and the stack; cleanup undoes each."""
    say("starting PostgreSQL…")
    database = cleanup.enter_context(postgres(os.environ.get("DATABASE_URL")))
    say(f"PostgreSQL at {database.dsn}")  # a private cluster unless DATABASE_URL answered

    try:
        images = ImageServer(port=IMAGE_PORT)
    except OSError as exc:
        raise Failed(f"cannot serve the example images on port {IMAGE_PORT}: {exc}") from None
    images.add_directory(EXAMPLES / "images", "/images/")
    cleanup.enter_context(images)
    say(f"example images at {images.url('/images/')}")

    workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="imgpipe-run-")))
    objects = workdir / "objects"
    objects.mkdir()
    # file:// storage: the stack points IMGPIPE_PUBLIC_BASE_URL at ingest's /objects/.
    storage = {"IMGPIPE_STORAGE_URL": objects.as_uri()}
    stack = Stack(database.dsn, storage, processors=args.processors, log_dir=workdir / "logs")
    say(f"starting {args.processors} processors and ingest…")
    cleanup.callback(stop_stack, stack)
    stack.start()
    say(f"processors on {', '.join(stack.processor_targets)}")
    say(f"ingest on {stack.ingest_target} (gRPC), {stack.ingest_http} (HTTP)")
    say(f"outputs in {objects}, served at {stack.ingest_http}/objects/; logs in {workdir / 'logs'}")
    return stack


def stop_stack(stack: Stack) -> None:
    codes = stack.stop()
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        say(f"exit codes other than 0: {unclean}")


def submit(stack: Stack, csv_path: Path) -> bool:
    """Submits and watches the CSV, then prints the result CSV; True if it COMPLETED."""
    cli = [str(console_script("imgpipe")), "--target", stack.ingest_target]
    say(f"imgpipe submit {csv_path} --watch")
    sys.stdout.flush()
    watched = subprocess.run(
        [*cli, "submit", str(csv_path), "--watch"], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = watched.stdout.splitlines()
    if not lines:
        raise Failed(f"imgpipe submit failed (exit {watched.returncode})")
    request_id = lines[0].strip()
    say(f"request {request_id} finished: imgpipe exit {watched.returncode}; result CSV:")
    result = subprocess.run([*cli, "result", request_id], check=False)
    return watched.returncode == 0 and result.returncode == 0


def wait_for_interrupt(stack: Stack) -> None:
    say(f"running; try `grpcurl -plaintext {stack.ingest_target} list`. Ctrl-C stops it all.")
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PREFIX} %(message)s", stream=sys.stderr)
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)
    code = 1
    stack: Stack | None = None
    cleanup = ExitStack()
    try:
        stack = start_stack(args, cleanup)
        if submit(stack, args.csv.resolve()):
            code = 0
            if args.keep:
                wait_for_interrupt(stack)
        else:
            say("the request did not complete; the services' logs end with:")
            print(stack.tails(), file=sys.stderr)
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    except (Failed, StackError, PostgresError) as exc:
        say(f"failed: {exc}")
        if stack is not None:
            print(stack.tails(), file=sys.stderr)
    finally:
        _ignore_signals()  # nothing may cut the cleanup short
        say("stopping…")
        cleanup.close()
        say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
