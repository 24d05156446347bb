"""devstack.postgres: a private cluster starts, answers, restarts and leaves nothing behind."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from devstack.postgres import PostgresError, PrivateCluster, find_bindir, postgres


async def select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_private_cluster_lifecycle() -> None:
    with postgres(None) as server:
        assert isinstance(server, PrivateCluster)
        assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        assert asyncio.run(select_one(server.dsn)) == 1

        server.restart()
        assert asyncio.run(select_one(server.dsn)) == 1

        server.stop()
        assert not port_open(server.port)
        server.start()
        assert asyncio.run(select_one(server.dsn)) == 1
        port, directory = server.port, server.directory

    assert not port_open(port)
    assert not directory.exists()


def test_a_reachable_url_is_used_as_it_is() -> None:
    with postgres(None) as private, postgres(private.dsn) as server:
        assert not isinstance(server, PrivateCluster)
        assert server.dsn == private.dsn
        with pytest.raises(PostgresError):
            server.restart()


def test_an_unreachable_url_falls_back_to_a_private_cluster() -> None:
    with postgres("postgresql://postgres@127.0.0.1:1/postgres") as server:
        assert isinstance(server, PrivateCluster)
        assert asyncio.run(select_one(server.dsn)) == 1


def test_cleanup_runs_when_the_body_raises() -> None:
    with pytest.raises(KeyboardInterrupt), postgres(None) as server:
        assert isinstance(server, PrivateCluster)
        port, directory = server.port, server.directory
        raise KeyboardInterrupt
    assert not port_open(port)
    assert not directory.exists()


def test_no_binaries_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    with pytest.raises(PostgresError, match="no PostgreSQL server binaries"):
        find_bindir()
