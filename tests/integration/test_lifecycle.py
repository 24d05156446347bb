"""The service runner, through the real console scripts: a start that fails part-way stops
what had started, in reverse, and exits non-zero; SIGTERM stops every part in the exact
reverse of the start, so ingest closes its database pool only after its HTTP and gRPC
sides have drained. The order is read from the `part started` / `part stopped` log lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ports import free_port


def script(name: str) -> Path:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.skip(f"the console script is not installed: {path}")
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket listens on (without SO_REUSEPORT, so nobody can share it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def base_env(tmp_path: Path, grpc_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "IMGPIPE_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "IMGPIPE_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "IMGPIPE_STORAGE_URL": (tmp_path / "objects").as_uri(),
        "IMGPIPE_GRACE_SECONDS": "5",
        "IMGPIPE_WORKERS": "1",
        "IMGPIPE_LOG_LEVEL": "INFO",
    }


def ingest_env(tmp_path: Path, grpc_port: int, database_url: str) -> dict[str, str]:
    return {
        **base_env(tmp_path, grpc_port),
        "DATABASE_URL": database_url,
        "IMGPIPE_PROCESSOR_TARGET": "127.0.0.1:9",
    }


def log_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def parts(lines: list[dict[str, object]], msg: str) -> list[object]:
    return [line["part"] for line in lines if line["msg"] == msg]


def assert_stopped_in_reverse(lines: list[dict[str, object]]) -> list[object]:
    started = parts(lines, "part started")
    assert started, lines
    assert parts(lines, "part stopped") == started[::-1]
    return started


def run_to_exit(name: str, env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run(
        [str(script(name))], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return done.returncode, log_lines(done.stderr)


def test_processor_that_cannot_listen_on_grpc_stops_what_started(
    tmp_path: Path, taken_port: int
) -> None:
    code, lines = run_to_exit("imgpipe-processor", base_env(tmp_path, taken_port))
    assert code == 1
    assert any(line["msg"] == "processor failed to start" for line in lines)
    started = assert_stopped_in_reverse(lines)
    assert started == ["http", "codec", "storage", "storage session", "fetcher"]


async def test_ingest_that_cannot_listen_on_grpc_closes_its_pool(
    tmp_path: Path, taken_port: int, database_url: str
) -> None:
    env = ingest_env(tmp_path, taken_port, database_url)
    code, lines = await asyncio.to_thread(run_to_exit, "imgpipe-ingest", env)
    assert code == 1
    started = assert_stopped_in_reverse(lines)
    assert "database-pool" in started
    assert "grpc" not in started and "http" not in started


def wait_for_line(process: subprocess.Popen[str], msg: str) -> list[str]:
    """The stderr lines up to and including the first whose msg is `msg`."""
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("{") and json.loads(line)["msg"] == msg:
            return seen
    raise AssertionError(f"exited with {process.wait()} before {msg!r}: {''.join(seen)}")


def serve_then_sigterm(name: str, env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    """Starts the console script, waits for its `serving` line, sends SIGTERM and waits."""
    service = name.removeprefix("imgpipe-")
    process = subprocess.Popen([str(script(name))], env=env, stderr=subprocess.PIPE, text=True)
    try:
        before = wait_for_line(process, f"{service} serving")
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, log_lines("".join(before) + rest)


@pytest.mark.parametrize("name", ["imgpipe-ingest", "imgpipe-processor"])
async def test_sigterm_stops_every_part_in_reverse_and_exits_0(
    tmp_path: Path, database_url: str, name: str
) -> None:
    env = ingest_env(tmp_path, free_port(), database_url)
    code, lines = await asyncio.to_thread(serve_then_sigterm, name, env)
    assert code == 0, lines
    started = assert_stopped_in_reverse(lines)
    assert started[-1] == "serving"  # not serving is the first step of the stop
    if name == "imgpipe-processor":
        assert started == [
            "http",
            "codec",
            "storage",
            "storage session",
            "fetcher",
            "grpc",
            "serving",
        ]
    else:
        stopped = parts(lines, "part stopped")
        for drained in ("http", "grpc", "dispatcher-drain"):
            assert stopped.index(drained) < stopped.index("database-pool"), stopped
