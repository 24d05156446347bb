"""Migrations: applied once, under an advisory lock, safe when replicas start together."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from imgpipe.ingest import postgres


async def test_migrations_are_numbered_once_each_from_1() -> None:
    """Numbers may leave gaps (each branch of work has its own range), never repeat."""
    versions = [v for v, _, _ in postgres.migrations()]
    assert versions[0] == 1
    assert versions == sorted(set(versions))


async def test_migrating_a_migrated_database_changes_nothing(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await postgres.migrate(conn) == []
        applied = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert applied == [v for v, _, _ in postgres.migrations()]
    finally:
        await conn.close()


async def test_replicas_migrating_an_empty_database_at_once_apply_each_version_once(
    database_url: str,
) -> None:
    admin = await asyncpg.connect(database_url)
    await admin.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(postgres.migrate(c) for c in conns))
        assert sorted(v for r in results for v in r) == [v for v, _, _ in postgres.migrations()]
        assert await admin.fetchval("SELECT count(*) FROM requests") == 0
    finally:
        for conn in conns:
            await conn.close()
        await admin.close()


@pytest.mark.parametrize("name", sorted(postgres.queries()))
async def test_named_query_parses_and_plans_against_the_schema(
    database_url: str, name: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.prepare(postgres.Q(name))
    finally:
        await conn.close()
