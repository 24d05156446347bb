"""What /proc says about a process: CPU seconds (utime + stime), VmRSS, VmHWM."""

from __future__ import annotations

import os
import resource
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces; everything after its ')' is fixed.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rpartition(")")[2].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of pid (and of its reaped children when asked), in seconds."""
    fields = _stat_fields(pid)
    # After ')': state is index 0, so utime (field 14) is index 11, cutime index 13.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def parent_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of root and every process below it, alive or reaped (a PostgreSQL
    postmaster and its backends; a processor, its fork server and codec workers)."""
    total = cpu_seconds(root, children=True)
    for pid in descendants(root):
        try:
            total += cpu_seconds(pid, children=True)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def system_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def descendants(root: int) -> list[int]:
    """Live processes below root (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parent_of(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def own_seconds(extra_roots: list[int]) -> float:
    """CPU seconds of this process, of every process it started (reaped or alive), and of
    extra_roots' trees (a PostgreSQL started through pg_ctl is not our child)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for pid in descendants(os.getpid()):
        try:
            total += cpu_seconds(pid, children=True)
        except (OSError, ValueError, IndexError):
            continue
    for root in extra_roots:
        try:
            total += tree_cpu_seconds(root)
        except (OSError, ValueError, IndexError):
            continue
    return total
