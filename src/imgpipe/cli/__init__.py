"""`imgpipe`: submit CSVs, watch their progress, fetch results, from a terminal or a script.

`imgpipe submit products.csv --watch` prints the request id on stdout, progress on stderr
(a live bar on a terminal, plain lines otherwise), and exits 0 only when every image
succeeded (1 when the request ended otherwise, 2 on errors).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from imgpipe.cli import commands
from imgpipe.cli.client import Client, CliError, describe_rpc_error, open_channel
from imgpipe.cli.options import connection, parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = connection(args)
        with open_channel(settings) as channel:
            code = commands.run(args, Client(channel, settings.token), settings)
    except grpc.RpcError as exc:
        print(f"imgpipe: {describe_rpc_error(exc)}", file=sys.stderr)
        code = commands.EXIT_ERROR
    except (CliError, OSError) as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        code = commands.EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
