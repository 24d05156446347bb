"""Fixtures for the real parts: PostgreSQL (a fresh migrated database per test), an S3
server over HTTP (moto) and a loopback image server; async tests on the services' event
loop (uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from moto.server import ThreadedMotoServer

from devstack.image_server import ImageServer
from devstack.ports import free_port
from devstack.postgres import PostgresServer, postgres
from imgpipe.common.config import S3Settings
from imgpipe.common.storage import Storage, open_storage
from support import pg
from support.ingest_harness import IngestFactory
from support.pki import make_pki


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test and fixture runs on the event loop the services run on."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session", autouse=True)
def teardown_on_sigterm() -> None:
    """A SIGTERM (a CI timeout, `timeout`) ends the run like Ctrl-C: fixtures are torn
    down, so no private PostgreSQL or server outlives the run."""
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with postgres(os.environ.get("DATABASE_URL")) as server:
        pg.create_template(server.dsn)
        yield server


@pytest.fixture
async def database_url(pg_server: PostgresServer) -> AsyncIterator[str]:
    name = await pg.create_database(pg_server.dsn)
    try:
        yield pg.with_database(pg_server.dsn, name)
    finally:
        await pg.drop_database(pg_server.dsn, name)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """Environment for a process that stores into a fresh bucket on the S3 server."""
    return {
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "IMGPIPE_STORAGE_URL": f"s3://imgpipe-{uuid.uuid4().hex[:12]}/out",
    }


@pytest.fixture
def s3_settings(s3_env: dict[str, str]) -> S3Settings:
    return S3Settings.from_env(s3_env)


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture
async def start_ingest(database_url: str, tmp_path: Path) -> AsyncIterator[IngestFactory]:
    """The one way tests start an in-process ingest (see IngestFactory)."""
    async with contextlib.AsyncExitStack() as stack:
        yield IngestFactory(stack, database_url, tmp_path / "objects")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA and the server and client certificates it signs, as PEM files in tmp_path."""
    return make_pki(tmp_path)


@pytest.fixture
def storage(s3_env: dict[str, str]) -> Storage:
    """The S3 storage of s3_env, as the services open it."""
    return open_storage(s3_env["IMGPIPE_STORAGE_URL"], S3Settings.from_env(s3_env))
