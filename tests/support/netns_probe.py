"""The SSRF matrix's far side, run inside a network namespace of its own.

tests/integration/test_ssrf.py starts `python -m support.netns_probe` under
`unshare --net --mount`. Before touching anything the probe checks that it is in a new
network namespace whose only interface is `lo`: there is no route out, so whatever the
guard under test lets through reaches this namespace's loopback and nothing else. Then it:
- brings `lo` up and adds the private, metadata and embedded-IPv4 test addresses to it;
- bind-mounts its own /etc/hosts (names that resolve to those addresses) and a
  /etc/resolv.conf that points at loopback, for this mount namespace only;
- serves, on every address of `lo`, ports 80, 443 and 8080: the allowed origin
  (ORIGIN:80, a public address by every check; it redirects and serves /image) and, on
  every other address and port, a canary that records each connection it accepts;
- fetches every URL it reads (JSON on stdin) with the real Fetcher, private networks not
  allowed, and prints a JSON report: each URL's result, the canary's connections and the
  origin's requests. With "url_check": false, AddressPolicy.check_url is switched off in
  this process, to show that the connector alone (filtering resolver and socket factory)
  still refuses every non-public address.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.errors import ServiceError
from imgpipe.common.grpc_errors import grpc_code
from imgpipe.processor.fetch import Fetcher
from imgpipe.processor.settings import FetchSettings

# TEST-NET ranges are not public, so the allowed origin needs a globally routable address;
# inside this namespace it is on `lo` and nothing can leave.
ORIGIN = "1.2.3.4"
ORIGIN_IMAGE = b"an image from the origin"
CANARY_BODY = b"the canary answered: the guard let this through"
PORTS = (80, 443, 8080)
IPV4_ADDRESSES = [
    ORIGIN,
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "198.18.0.1",
    "192.0.2.1",
    "240.0.0.1",
]
IPV6_ADDRESSES = [
    "fd00::1",  # unique local
    "fe80::1",  # link-local
    "fec0::1",  # site-local
    "::a00:1",  # IPv4-compatible 10.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:a00:1::1",  # Teredo
]
HOSTS = """\
127.0.0.1 localhost
::1 localhost
127.0.0.1 loopback.test
10.0.0.1 internal.test
fd00::1 internal.test
169.254.169.254 instance-data.test
::ffff:127.0.0.1 mapped.test
1.2.3.4 public.test
1.2.3.4 mixed.test
10.0.0.1 mixed.test
fd00::1 mixed.test
"""
FETCH_ENV = {
    "IMGPIPE_FETCH_CONNECT_TIMEOUT": "2",
    "IMGPIPE_FETCH_READ_TIMEOUT": "2",
    "IMGPIPE_FETCH_TOTAL_TIMEOUT": "5",
}


def refuse_unless_isolated(parent_netns: int) -> None:
    """Exits unless this is a fresh network namespace with `lo` as its only interface."""
    if os.stat("/proc/self/ns/net").st_ino == parent_netns:
        sys.exit("netns_probe: still in the caller's network namespace; refusing to run")
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        sys.exit(f"netns_probe: interfaces other than lo: {interfaces}; refusing to run")


def set_up_network() -> None:
    commands = [["ip", "link", "set", "lo", "up"]]
    commands += [["ip", "addr", "add", f"{a}/32", "dev", "lo"] for a in IPV4_ADDRESSES]
    commands += [
        ["ip", "-6", "addr", "add", f"{a}/128", "dev", "lo", "nodad"] for a in IPV6_ADDRESSES
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)


def set_up_names(directory: Path) -> None:
    """Our /etc/hosts and a resolver on loopback, in this mount namespace only."""
    for name, text in [("hosts", HOSTS), ("resolv.conf", "nameserver 127.0.0.1\n")]:
        path = directory / name
        path.write_text(text)
        subprocess.run(
            ["mount", "--bind", str(path), f"/etc/{name}"], check=True, capture_output=True
        )


class Servers:
    """The origin on ORIGIN:80 and the canary on every other address and port."""

    def __init__(self) -> None:
        self.canary: list[str] = []
        self.origin: list[str] = []

    async def start(self) -> list[asyncio.Server]:
        return [
            await asyncio.start_server(self.handle, host=["0.0.0.0", "::"], port=port)
            for port in PORTS
        ]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("sockname")[:2]
        try:
            if (host, port) == (ORIGIN, 80):
                await self._origin(reader, writer)
            else:
                shown = f"[{host}]" if ":" in host else host
                self.canary.append(f"{shown}:{port}")
                writer.write(_response(200, CANARY_BODY))
                await writer.drain()
        finally:
            writer.close()

    async def _origin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        target = head.split(b" ", 2)[1].decode()
        self.origin.append(target)
        parts = urlsplit(target)
        if parts.path == "/image":
            writer.write(_response(200, ORIGIN_IMAGE))
        elif parts.path == "/redirect":
            location = parse_qs(parts.query)["to"][0]
            writer.write(_response(302, b"", {"Location": location}))
        else:
            writer.write(_response(404, b"not found"))
        await writer.drain()


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def fetch_one(fetcher: Fetcher, url: str) -> dict[str, Any]:
    try:
        body = (await fetcher.fetch(url)).body or b""
    except ServiceError as exc:
        return {"error": type(exc).__name__, "code": grpc_code(exc).name, "message": exc.message}
    except Exception as exc:
        return {"error": type(exc).__name__, "code": "INTERNAL", "message": str(exc)}
    return {"body": body.decode(errors="replace")}


async def run(urls: list[str]) -> dict[str, Any]:
    servers = Servers()
    listening = await servers.start()
    fetcher = Fetcher(FetchSettings.from_env(FETCH_ENV), max_connections=16)
    try:
        results = await asyncio.gather(*(fetch_one(fetcher, url) for url in urls))
    finally:
        await fetcher.close()
        for server in listening:
            server.close()
            await server.wait_closed()
    return {
        "results": dict(zip(urls, results, strict=True)),
        "canary": servers.canary,
        "origin": servers.origin,
    }


def main() -> None:
    request = json.load(sys.stdin)
    refuse_unless_isolated(request["parent_netns"])
    set_up_network()
    with ExitStack() as stack:
        set_up_names(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        if not request.get("url_check", True):
            stack.enter_context(mock.patch.object(AddressPolicy, "check_url", return_value=None))
        report = asyncio.run(run(request["urls"]))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
