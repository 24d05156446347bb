"""requirements.lock (made by `make lock`, pip-compile --generate-hashes) is what the image
installs: every package pinned and hashed, and in step with pyproject.toml's ranges.
requirements-dev.lock is what `make venv` installs (without resolving): the same runtime
versions plus the dev extra; requirements-policy.lock is checkov's virtualenv."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")
DIRECT = "imgpipe (pyproject.toml)"


def locked(lock: str = "requirements.lock") -> dict[str, tuple[str, int, set[str]]]:
    """name -> (version, number of hashes, what it is there for)."""
    entries: dict[str, tuple[str, int, set[str]]] = {}
    name = ""
    for line in (ROOT / lock).read_text("utf-8").splitlines():
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


def dev_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return [r for r in dev if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize(
    "lock", ["requirements.lock", "requirements-dev.lock", "requirements-policy.lock"]
)
def test_every_locked_package_is_pinned_and_hashed(lock: str) -> None:
    entries = locked(lock)
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


def test_the_dev_lock_holds_the_runtime_lock_and_the_dev_extra_in_its_ranges() -> None:
    """What the tests run against is what the image ships, plus the dev tools."""
    runtime, dev = locked(), locked("requirements-dev.lock")
    assert {name: runtime[name][0] for name in runtime} == {
        name: dev[name][0] for name in runtime if name in dev
    }, "run `make lock`"
    for requirement in dev_requirements():
        name = canonicalize_name(requirement.name)
        assert name in dev, f"{name} is not in requirements-dev.lock: run `make lock`"
        version = dev[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside {requirement.specifier}: run `make lock`"
        )


def test_the_policy_lock_holds_the_checkov_of_its_input() -> None:
    wanted = [
        Requirement(line)
        for line in (ROOT / "requirements-policy.in").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    entries = locked("requirements-policy.lock")
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in entries, "run `make lock`"
        assert requirement.specifier.contains(entries[name][0]), "run `make lock`"
