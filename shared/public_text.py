"""Text that may reach a caller (an error message, a recorded image error): free of
credentials in URLs, of Python object reprs with heap addresses, and of the network
addresses of ingest's own peers (gRPC's `ipv4:10.0.0.7:50052`)."""

from __future__ import annotations

import re

_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
_HEAP_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_USER_INFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@]*@")
_GRPC_ADDRESS = re.compile(
    r"\b(?:ipv4|ipv6|unix|unix-abstract|vsock):(?:\[[^\]]*\]|[^\s,;:)\]}]+)(?::\d+)?"
)


def public_text(text: str) -> str:
    text = _REPR.sub("<object>", text)
    text = _HEAP_ADDRESS.sub("0x…", text)
    text = _USER_INFO.sub(r"\1", text)
    return _GRPC_ADDRESS.sub("(an internal address)", text)
