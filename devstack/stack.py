"""imgpipe as real processes — N processors and one ingest on free loopback ports.

Used by `make run`, the end-to-end tests and the benchmark:

    with Stack(dsn, {"IMGPIPE_STORAGE_URL": "file:///tmp/out"}, log_dir=logs) as stack:
        ...  # stack.ingest_target, stack.kill("processor-1"), stack.restart("ingest")

Each process writes its stdout and stderr to `log_dir/NAME.log` (appended across
restarts). `start()` returns once every process answers the gRPC health check with
SERVING. `stop()` sends SIGTERM to all, waits, and SIGKILLs what is left; if it is itself
interrupted, whatever still runs is SIGKILLed on the way out.

The children stay in our process group on purpose: a Ctrl-C at the terminal reaches them
too (both services treat SIGINT like SIGTERM), so even if our own cleanup never ran,
nothing would be left behind; and `stop()` handles every other way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.ports import free_port

HOST = "127.0.0.1"
INGEST = "ingest"
HEALTH_TIMEOUT = 30.0
# Variables a developer's shell may hold that would make the stack behave differently.
INHERITED_PREFIXES = ("IMGPIPE_", "AWS_", "DATABASE_URL")
# Reconnect quickly while a server is still starting (the default backoff starts at 1 s).
HEALTH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class StackError(RuntimeError):
    """A process of the stack did not start, or did not become healthy."""


def console_script(name: str) -> Path:
    """An installed console script of this virtualenv (next to the running interpreter)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StackError(f"{path} not found: install the project first (`make venv`)")
    return path


class Service:
    """One imgpipe process: its ports, environment and log, and the running process."""

    def __init__(self, name: str, script: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.script = script
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        return self.env["IMGPIPE_GRPC_ADDR"]

    @property
    def http_url(self) -> str:
        return f"http://{self.env['IMGPIPE_HTTP_ADDR']}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(console_script(self.script))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def wait_healthy(self, deadline: float) -> None:
        """Polls grpc.health.v1 until SERVING; raises if the process exits or time runs out."""
        assert self.process is not None
        request = health_pb2.HealthCheckRequest(service="")
        with grpc.insecure_channel(self.grpc_target, HEALTH_CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                code = self.process.poll()
                if code is not None:
                    raise StackError(
                        f"{self.name} exited with {code} while starting\n{self.tail()}"
                    )
                try:
                    reply = stub.Check(request, timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{self.name} not SERVING in time\n{self.tail()}")
                time.sleep(0.1)

    def send(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    def tail(self, lines: int = 30) -> str:
        """The last lines of the process's log, headed by its name."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        body = "\n".join(f"  {line}" for line in text.splitlines()[-lines:])
        return f"--- {self.log_path} (last {lines} lines) ---\n{body}"


class Stack:
    """`ingests` ingests (`ingest`, `ingest-2`, ...) sharing one database, and `processors`
    processors, started as real processes.

    Environment of each process, later entries winning: ours minus any inherited
    `IMGPIPE_*`, `AWS_*` and `DATABASE_URL` (so a developer's shell cannot change a test);
    for `file://` storage, `IMGPIPE_PUBLIC_BASE_URL=http://INGEST_HTTP/objects`;
    `storage_env`; the stack's own settings (ingest: `DATABASE_URL`,
    `IMGPIPE_PROCESSOR_TARGET`; processors: `IMGPIPE_ALLOW_PRIVATE_NETWORKS=true`);
    `extra_env`; then `processor_env` (processors) or `ingest_env` (ingests); and last the
    listen addresses. Ports are chosen here, so every address
    (`ingest_target`, `ingest_http`, ...) is known before `start()`.
    """

    def __init__(
        self,
        database_url: str,
        storage_env: Mapping[str, str],
        *,
        log_dir: Path,
        processors: int = 2,
        ingests: int = 1,
        extra_env: Mapping[str, str] | None = None,
        processor_env: Mapping[str, str] | None = None,
        ingest_env: Mapping[str, str] | None = None,
        health_timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        if processors < 1 or ingests < 1:
            raise ValueError("a stack needs at least one processor and one ingest")
        self.log_dir = log_dir
        self.health_timeout = health_timeout
        ports = _distinct_free_ports(2 * (processors + ingests))
        ingest_addrs = [_addresses(ports[i], ports[i + 1]) for i in range(0, 2 * ingests, 2)]
        processor_addrs = [
            _addresses(ports[i], ports[i + 1]) for i in range(2 * ingests, len(ports), 2)
        ]
        processor_target = _processor_target([a["IMGPIPE_GRPC_ADDR"] for a in processor_addrs])

        common = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
        common["PYTHONUNBUFFERED"] = "1"
        if storage_env.get("IMGPIPE_STORAGE_URL", "").startswith("file://"):
            # Ingest serves file storage on its HTTP side; processors write the output URLs.
            http = ingest_addrs[0]["IMGPIPE_HTTP_ADDR"]
            common["IMGPIPE_PUBLIC_BASE_URL"] = f"http://{http}/objects"
        common |= dict(storage_env)
        extra = dict(extra_env or {})
        for_processors = extra | dict(processor_env or {})
        for_ingests = extra | dict(ingest_env or {})

        self.services: dict[str, Service] = {}
        for i, addrs in enumerate(processor_addrs, start=1):
            env = common | {"IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true"} | for_processors | addrs
            self._add(f"processor-{i}", "imgpipe-processor", env)
        ingest = {"DATABASE_URL": database_url, "IMGPIPE_PROCESSOR_TARGET": processor_target}
        for i, addrs in enumerate(ingest_addrs, start=1):
            name = INGEST if i == 1 else f"{INGEST}-{i}"
            self._add(name, "imgpipe-ingest", common | ingest | for_ingests | addrs)

    def _add(self, name: str, script: str, env: dict[str, str]) -> None:
        self.services[name] = Service(name, script, env, self.log_dir / f"{name}.log")

    # -- addresses ------------------------------------------------------------------------

    @property
    def ingest_target(self) -> str:
        """The ingest gRPC address, `127.0.0.1:PORT`."""
        return self.services[INGEST].grpc_target

    @property
    def ingest_http(self) -> str:
        """The ingest HTTP base URL, `http://127.0.0.1:PORT` (known before `start()`)."""
        return self.services[INGEST].http_url

    @property
    def processor_targets(self) -> list[str]:
        """The processors' gRPC addresses, in the order of their names."""
        return [s.grpc_target for s in self.services.values() if s.script == "imgpipe-processor"]

    @property
    def names(self) -> list[str]:
        """`processor-1`, ..., `ingest`."""
        return list(self.services)

    def pid(self, name: str) -> int:
        process = self.services[name].process
        if process is None:
            raise StackError(f"{name} has not been started")
        return process.pid

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Stack:
        """Starts every process and waits until all are SERVING; on failure stops them all."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for service in self.services.values():
                service.spawn()
            deadline = time.monotonic() + self.health_timeout
            for service in self.services.values():
                service.wait_healthy(deadline)
        except BaseException:
            self.stop(grace=2)
            raise
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Sends sig to one process (nothing if it is not running); does not wait."""
        self.services[name].send(sig)

    def wait(self, name: str, timeout: float = 30.0) -> int:
        """Waits for one process to exit and returns its exit code (-N: killed by signal N)."""
        process = self.services[name].process
        if process is None:
            raise StackError(f"{name} has not been started")
        return process.wait(timeout)

    def restart(self, name: str, grace: float = 10.0) -> None:
        """Stops one process (if it runs) and starts it again on the same ports."""
        service = self.services[name]
        _stop_all([service], grace)
        service.spawn()
        service.wait_healthy(time.monotonic() + self.health_timeout)

    def stop(self, grace: float = 10.0) -> dict[str, int]:
        """SIGTERM to all, up to grace seconds to exit, then SIGKILL; returns exit codes."""
        started = [s for s in self.services.values() if s.process is not None]
        _stop_all(started, grace)
        return {s.name: s.process.returncode for s in started if s.process is not None}

    def tails(self, lines: int = 30) -> str:
        """The last lines of every process's log."""
        return "\n".join(s.tail(lines) for s in self.services.values())

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stop_all(services: list[Service], grace: float) -> None:
    """SIGTERM, wait until grace runs out, SIGKILL — the last step even if interrupted."""
    try:
        for service in services:
            service.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in services:
            if service.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    service.process.wait(max(0.0, deadline - time.monotonic()))
    finally:
        for service in services:
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait()


def _addresses(grpc_port: int, http_port: int) -> dict[str, str]:
    return {
        "IMGPIPE_GRPC_ADDR": f"{HOST}:{grpc_port}",
        "IMGPIPE_HTTP_ADDR": f"{HOST}:{http_port}",
    }


def _processor_target(targets: list[str]) -> str:
    """`127.0.0.1:P` for one processor, `ipv4:127.0.0.1:P1,127.0.0.1:P2` for several."""
    return targets[0] if len(targets) == 1 else "ipv4:" + ",".join(targets)


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(HOST)
        if port not in ports:
            ports.append(port)
    return ports
