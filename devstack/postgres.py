"""PostgreSQL for local runs and tests: the configured server, or a private throwaway cluster.

`postgres(url)` uses `url` when a connection to it succeeds; otherwise it runs `initdb`
into a fresh temporary directory, starts a server on a free loopback port (tuned for
speed, not durability) and, on exit, stops it with `pg_ctl stop -m immediate` and removes
the directory, also when the exit is caused by Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg

from devstack.ports import free_port

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
TOOL_TIMEOUT = 120  # seconds: initdb, or pg_ctl waiting up to half of it
START_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it
SERVER_SETTINGS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    " -c full_page_writes=off -c max_connections=300"
)


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, started or controlled."""


class PostgresServer:
    """A PostgreSQL server reachable at `dsn`, run by someone else: it cannot be restarted."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def restart(self) -> None:
        raise PostgresError(f"cannot restart a server this process did not start ({self.dsn})")

    def stop(self) -> None:
        raise PostgresError(f"cannot stop a server this process did not start ({self.dsn})")

    def start(self) -> None:
        raise PostgresError(f"cannot start a server this process did not start ({self.dsn})")


class PrivateCluster(PostgresServer):
    """A throwaway cluster in `directory`: data in `data/`, log in `log`, socket in the top."""

    def __init__(self, bindir: Path, directory: Path, run_as: str | None) -> None:
        super().__init__("")  # set by start(), once the port is known
        self.bindir = bindir
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_file = directory / "log"
        self.port = 0
        self._run_as = run_as

    def _command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        return ["runuser", "-u", self._run_as, "--", *argv] if self._run_as else argv

    def _run(self, tool: str, *args: str, check: bool = True) -> tuple[int, str]:
        """Runs a PostgreSQL tool to completion, even when we are interrupted meanwhile.

        Killing initdb or pg_ctl half-way would leave their own children (a bootstrap
        backend, a postmaster) writing into a directory we are about to remove; so the
        tool runs in a session of its own (a Ctrl-C at the terminal does not reach it) and
        an exception raised here while it runs waits for it before propagating.
        """
        with tempfile.TemporaryFile() as out:
            process = subprocess.Popen(
                self._command(tool, *args),
                cwd=self.directory,  # a directory the server's user can enter
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                process.wait()
            except BaseException:
                process.wait(timeout=TOOL_TIMEOUT)
                raise
            out.seek(0)
            text = out.read().decode(errors="replace")
        if check and process.returncode != 0:
            raise PostgresError(
                f"{tool} {' '.join(args)} failed ({process.returncode}):\n{text}{self.log_tail()}"
            )
        return process.returncode, text

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _start_options(self) -> tuple[str, ...]:
        server = f"-p {self.port} -k {self.directory} {SERVER_SETTINGS}"
        return ("-l", str(self.log_file), "-o", server)

    def _pg_ctl(self, action: str, *args: str, check: bool = True) -> bool:
        wait = ("-w", "-t", str(TOOL_TIMEOUT // 2))
        code, _ = self._run("pg_ctl", action, *wait, "-D", str(self.data_dir), *args, check=check)
        return code == 0

    def init(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.data_dir), "-A", "trust", "-U", "postgres"),
            *("--no-sync", "-E", "UTF8", "--locale=C"),
        )

    def start(self) -> None:
        """Starts the server: on a free port the first time, on the same port after stop()."""
        if self.port:
            self._pg_ctl("start", *self._start_options())
            return
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            if self._pg_ctl("start", *self._start_options(), check=attempt == START_ATTEMPTS):
                break
            log.warning("PostgreSQL did not start on port %d; trying another", self.port)
            if (pid := self.postmaster_pid()) is not None:
                _terminate(pid)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: connections are closed, the port stays the same."""
        self._pg_ctl("restart", "-m", "fast", *self._start_options())

    def stop(self) -> None:
        """A fast shutdown; `start()` brings the server back on the same port."""
        self._pg_ctl("stop", "-m", "fast")

    def postmaster_pid(self) -> int | None:
        """The server's pid while it runs (from postmaster.pid), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def destroy(self) -> None:
        """Stops the server whatever state it is in and removes the directory."""
        try:
            if self.postmaster_pid() is not None:
                self._pg_ctl("stop", "-m", "immediate", check=False)
        finally:
            # Runs even if the stop above was interrupted: signal the postmaster directly.
            pid = self.postmaster_pid()
            if pid is not None:
                _terminate(pid)
            shutil.rmtree(self.directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether pid names a running process (a zombie awaiting its reaper does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone since kill(), or a system without /proc: then trust kill()
        return not Path("/proc/self").exists()
    return stat.rpartition(")")[2].split()[0] != "Z"


def _terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGQUIT (immediate shutdown, children included), then SIGKILL if it is still there."""
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def find_bindir() -> Path:
    """The directory of initdb and pg_ctl: `pg_config --bindir`, PATH, or Debian's layout."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            candidates.append(Path(out))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(d) for d in debian), key=lambda p: _version(p.parent.name))[::-1]
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via pg_config, "
        "PATH or /usr/lib/postgresql/*/bin: install PostgreSQL "
        "(e.g. `apt-get install postgresql`) or set DATABASE_URL to a running server"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def reachable(dsn: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether a real connection to dsn succeeds within timeout seconds."""

    async def connect() -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        await conn.close(timeout=timeout)

    # A thread of its own, so that this works from inside a running event loop too.
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, connect()).result()
        except Exception as exc:
            log.warning(
                "the configured database is not reachable (%s: %s); starting a private one",
                type(exc).__name__,
                exc,
            )
            return False
    return True


def _server_user() -> str | None:
    """`postgres` when running as root (the server refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root needs a `postgres` user to run PostgreSQL") from None
    if shutil.which("runuser") is None:
        raise PostgresError("running as root needs `runuser` to start PostgreSQL as postgres")
    return "postgres"


@contextlib.contextmanager
def postgres(database_url: str | None) -> Iterator[PostgresServer]:
    """The server at database_url if it answers, else a private cluster removed on exit."""
    if database_url and reachable(database_url):
        yield PostgresServer(database_url)
        return
    bindir = find_bindir()
    run_as = _server_user()
    cluster = PrivateCluster(bindir, Path(tempfile.mkdtemp(prefix="imgpipe-pg-")), run_as)
    try:
        if run_as:
            shutil.chown(cluster.directory, user=run_as)
        cluster.init()
        cluster.start()
        log.debug("private PostgreSQL at %s (%s)", cluster.dsn, cluster.directory)
        yield cluster
    finally:
        cluster.destroy()
