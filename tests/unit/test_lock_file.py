"""requirements.lock (made by `make lock`, pip-compile --generate-hashes) is what the image
installs: every package pinned and hashed, and in step with pyproject.toml's ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")
DIRECT = "imgpipe (pyproject.toml)"


def locked() -> dict[str, tuple[str, int, set[str]]]:
    """name -> (version, number of hashes, what it is there for)."""
    entries: dict[str, tuple[str, int, set[str]]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text("utf-8").splitlines():
        if match := ENTRY.match(line):
            name = canonicalize_name(match.group(1))
            entries[name] = (match.group(2), 0, set())
        elif line.strip().startswith("--hash=sha256:"):
            version, hashes, via = entries[name]
            entries[name] = (version, hashes + 1, via)
        elif line.strip().startswith("#") and name:
            text = line.strip().lstrip("#").strip().removeprefix("via").strip()
            if text:
                entries[name][2].add(text)
    return entries


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_locked_package_is_pinned_and_hashed() -> None:
    entries = locked()
    assert entries
    assert not [name for name, (_, hashes, _) in entries.items() if hashes == 0]


def test_the_lock_holds_exactly_the_runtime_dependencies_in_their_ranges() -> None:
    """Fails when pyproject.toml gains, loses or narrows a dependency without `make lock`."""
    entries = locked()
    wanted = {canonicalize_name(r.name): r for r in runtime_requirements()}
    direct = {name for name, (_, _, via) in entries.items() if DIRECT in via}
    assert direct == set(wanted), "run `make lock`"
    for name, requirement in wanted.items():
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside {requirement.specifier}: run `make lock`"
        )
    # Nothing in the lock that nothing needs (a dependency dropped from pyproject.toml).
    assert all(via for _, _, via in entries.values())
