"""`--profile`: py-spy samples of a process while a section runs, kept as collapsed stacks
(`*.folded`, for flamegraph tools) and summarised as the functions where the time goes."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _start(argv: list[str]) -> subprocess.Popen[bytes] | None:
    """py-spy, attached; None if it gave up (attaching can fail now and then: retried)."""
    for _ in range(3):
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return process  # sampling
        error = process.stderr.read().decode(errors="replace") if process.stderr else ""
        print(f"[bench] py-spy: {error.splitlines()[0] if error else process.returncode}")
    return None


@contextlib.contextmanager
def record(pid: int, output: Path) -> Iterator[None]:
    """Samples pid (all threads, idle ones excluded) at 100 Hz without pausing it, until
    the block ends. Python frames only: time in C (libjpeg, zlib, the gRPC core) counts
    for the Python function that called it."""
    exe = py_spy()
    if exe is None:
        print(f"[bench] py-spy not found; no profile for {output.name}", file=sys.stderr)
        yield
        return
    argv = [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
    argv += ["--nonblocking", "--output", str(output)]
    process = _start(argv)
    try:
        yield
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _function(frame: str) -> str:
    """`name (file.py:12)` -> `name (file.py)`: lines of one function together."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({Path(file).name})" if file else name


def summarize(path: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, total %) of the functions with the most self time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        # The first frame is the thread: "process 123:\"...\"" or "thread (0x...)".
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return []
    return [
        (name, 100 * n / total, 100 * inclusive[name] / total) for name, n in own.most_common(top)
    ]


def report(path: Path, title: str) -> str:
    rows = summarize(path)
    lines = [f"-- profile: {title} ({path})", f"   {'self %':>7} {'total %':>8}  function"]
    lines += [f"   {s:7.1f} {t:8.1f}  {name}" for name, s, t in rows]
    return "\n".join(lines)
