"""PostgreSQL: the connection pool, the named queries, and migrations under an advisory lock."""

from __future__ import annotations

import logging
import re
from functools import cache
from importlib.resources import files

import asyncpg
import asyncpg.pool

log = logging.getLogger(__name__)

# What statements run on: a connection of its own, or one the pool lends.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# Any constant works; it only has to be the same in every ingest replica.
MIGRATION_LOCK_KEY = 0x1D9_0001

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
# The comment lines under a name document the query in the file; the statement sent starts
# with its verb (what traces name a statement's span by).
_LEADING_COMMENTS = re.compile(r"\A(?:\s*--[^\n]*\n)+")


def _parse_named(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = _LEADING_COMMENTS.sub("", body.strip()).strip().rstrip(";")
    return queries


@cache
def queries() -> dict[str, str]:
    """The named queries of sql/queries.sql, loaded once."""
    return _parse_named((files(__package__) / "sql" / "queries.sql").read_text("utf-8"))


def Q(name: str) -> str:
    return queries()[name]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each migrations/NNNN_name.sql, in order."""
    found = []
    for entry in files(__package__).joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found)


async def migrate(conn: Connection) -> list[int]:
    """Applies the migrations not applied yet; safe with replicas starting at once."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied_now.append(version)
    if applied_now:
        log.info("schema migrated", extra={"versions": applied_now})
    return applied_now


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=60,
        # Pool connections hold no LISTEN, session locks or settings (the notifier has a
        # connection of its own), so skip the reset asyncpg sends on every release.
        reset=_no_reset,
    )


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Nothing to undo between uses of a pooled connection."""
