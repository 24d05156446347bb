"""Health follows readiness: ingest is NOT_SERVING while its database is down."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.postgres import PostgresServer, PrivateCluster
from support.eventually import eventually
from support.ingest_harness import IngestFactory

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_ingest_is_not_serving_while_the_database_is_down(
    pg_server: PostgresServer, start_ingest: IngestFactory
) -> None:
    if not isinstance(pg_server, PrivateCluster):
        pytest.skip("needs the private PostgreSQL cluster (DATABASE_URL was given)")
    ingest = await start_ingest()
    health = health_pb2_grpc.HealthStub(ingest.channel)

    async def wait_for(status: int) -> None:
        await eventually(
            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
            lambda response: response.status == status,
            what=f"health {status}",
        )

    await wait_for(SERVING)
    await asyncio.to_thread(pg_server.stop)
    try:
        await wait_for(NOT_SERVING)
    finally:
        await asyncio.to_thread(pg_server.start)
    await wait_for(SERVING)
