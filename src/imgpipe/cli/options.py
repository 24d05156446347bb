"""The command line: commands, their arguments, and the connection options (each with an
environment variable as its default). Connection options go before or after the command."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TARGET = "127.0.0.1:50051"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Tls:
    """Files for a TLS channel; with none of them, the system's root certificates."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Connection:
    target: str
    token: str
    tls: Tls | None
    http_url: str  # ingest's HTTP side, for `result` downloads; "" if unknown


def _common(parser: argparse.ArgumentParser, env: Mapping[str, str], *, top: bool) -> None:
    """Options every command takes. On the top-level parser they carry the defaults; on a
    command's parser they are SUPPRESSed, so that only options given there override."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        metavar="ADDR",
        default=default(env.get("IMGPIPE_TARGET") or DEFAULT_TARGET),
        help=f"ingest's gRPC address (env IMGPIPE_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token",
        default=default(env.get("IMGPIPE_TOKEN", "")),
        help="bearer token, sent as `authorization: Bearer TOKEN` (env IMGPIPE_TOKEN)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(env.get("IMGPIPE_TLS", "").strip().lower() in _TRUE),
        help="connect with TLS (env IMGPIPE_TLS=true); implied by the options below",
    )
    for flag, metavar, variable, text in [
        ("--ca-cert", "FILE", "IMGPIPE_TLS_CA", "PEM CA certificate(s) to trust for the server"),
        ("--client-cert", "FILE", "IMGPIPE_TLS_CLIENT_CERT", "PEM client certificate (mTLS)"),
        ("--client-key", "FILE", "IMGPIPE_TLS_CLIENT_KEY", "PEM key of the client certificate"),
        ("--tls-server-name", "NAME", "IMGPIPE_TLS_SERVER_NAME", "name the server cert bears"),
    ]:
        group.add_argument(
            flag,
            metavar=metavar,
            default=default(env.get(variable) or None),
            help=f"{text} (env {variable})",
        )
    group.add_argument(
        "--http-url",
        metavar="URL",
        default=default(env.get("IMGPIPE_HTTP_URL", "")),
        help="ingest's HTTP address, e.g. http://127.0.0.1:8080 (env IMGPIPE_HTTP_URL): "
        "`result` downloads from it when the result's own URL cannot be read from here, "
        "and sends the token only there",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON object per line on stdout (field names as in the .proto)",
    )


def parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    top = argparse.ArgumentParser(
        prog="imgpipe",
        description="Submit CSVs of product image URLs to imgpipe, watch them, fetch results.",
        epilog="Exit status: 0 when a watched request COMPLETED (or a command succeeded), "
        "1 when it ended otherwise, 2 on errors.",
    )
    _common(top, env, top=True)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        _common(sub, env, top=False)
        return sub

    submit = command("submit", "submit a CSV file; prints the request id")
    submit.add_argument("file", type=argparse.FileType("rb"), help="the CSV ('-': stdin)")
    submit.add_argument(
        "--webhook", metavar="URL", default="", help="URL to POST to when the request is done"
    )
    submit.add_argument(
        "--quality", metavar="N", type=int, default=0, help="JPEG quality 1-95 (default 50)"
    )
    submit.add_argument(
        "--idempotency-key", metavar="KEY", default="", help="same key: same request"
    )
    submit.add_argument("--watch", action="store_true", help="then watch it until it is done")

    command("status", "print a request's status").add_argument("request_id")
    watch = command("watch", "show a request's progress until it is done (resumes by itself)")
    watch.add_argument("request_id")
    watch.add_argument(
        "--after", metavar="SEQ", type=int, default=0, help="start after this event sequence"
    )
    command("cancel", "cancel a request").add_argument("request_id")
    result = command("result", "download a request's result CSV")
    result.add_argument("request_id")
    result.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    return top


def connection(args: argparse.Namespace) -> Connection:
    tls_files = (args.ca_cert, args.client_cert, args.client_key, args.tls_server_name)
    tls = Tls(*tls_files) if args.tls or any(tls_files) else None
    return Connection(args.target, args.token, tls, args.http_url.rstrip("/"))
