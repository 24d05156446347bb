"""End-to-end tests run imgpipe as processes of its own; this process holds only the tests'
clients and servers (aiohttp and gRPC clients, the moto S3 server, the image server).

A ResourceWarning here is about one of those, and the garbage collector reports it in
whichever test it happens to run in: an upload the server cut short leaves aiohttp's
transport "closing" (its unsent body never drains), a moto connection outlives its client.
Two CI runs failed unrelated tests that way. imgpipe's own leaks are caught where it runs
in this process: the unit and integration tests keep every warning an error."""

from __future__ import annotations

from pathlib import Path

import pytest

E2E = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
