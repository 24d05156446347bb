"""Integration fixtures: a real PostgreSQL with a fresh migrated database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from devstack.postgres import PostgresServer, postgres
from tests import pg


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
