"""PostgreSQL for the tests: one server per session (DATABASE_URL if it answers, else a
private cluster), a template database migrated once, and a fresh clone per test.

Under pytest-xdist each worker is a session of its own: a private cluster of its own, or,
on a shared DATABASE_URL, a template of its own (PYTEST_XDIST_WORKER in its name), since
one worker dropping and recreating the template would break another's clones."""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from imgpipe.ingest import postgres

TEMPLATE = f"imgpipe_test_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def create_template(dsn: str) -> None:
    async def run() -> None:
        await _admin(
            dsn,
            f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE}",
        )
        conn = await asyncpg.connect(with_database(dsn, TEMPLATE))
        try:
            await postgres.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())


async def create_database(dsn: str) -> str:
    name = f"imgpipe_test_{uuid.uuid4().hex[:12]}"
    await _admin(dsn, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return name


async def drop_database(dsn: str, name: str) -> None:
    await _admin(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
