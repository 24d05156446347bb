"""The built wheel: one top-level name, `imgpipe`, holding every module and data file of
the folders pyproject.toml maps into it (SQL, migrations, stubs, py.typed), and the C
extension modules built from them.

Built from a copy of exactly what the Dockerfile copies, so the build needs nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# What an installed package is made of; anything else in the folders is not shipped.
SHIPPED = {".py", ".pyi", ".sql", ".typed", ".html", ".css", ".js"}


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def package_dirs() -> dict[str, str]:
    mapping: dict[str, str] = pyproject()["tool"]["setuptools"]["package-dir"]
    return mapping


def expected_files() -> set[str]:
    """imgpipe/... paths of every shipped file under the mapped folders, and the C
    extensions built for this Python."""
    extensions = pyproject()["tool"]["setuptools"]["ext-modules"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    files = {extension["name"].replace(".", "/") + suffix for extension in extensions}
    for package, folder in package_dirs().items():
        prefix = package.replace(".", "/")
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in SHIPPED and "__pycache__" not in path.parts:
                files.add(f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}")
    return files


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    for top in {folder.split("/")[0] for folder in package_dirs().values()}:
        shutil.copytree(
            ROOT / top, source / top, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = out.glob("imgpipe-*.whl")
    return wheel


def test_the_wheel_installs_imgpipe_alone_with_all_its_files(tmp_path: Path) -> None:
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = [n for n in wheel.namelist() if not n.endswith("/")]
        [dist_info] = {n.split("/")[0] for n in names if ".dist-info/" in n}
        top_level = {n.split("/")[0] for n in names} - {dist_info}
        assert top_level == {"imgpipe"}
        assert {n for n in names if not n.startswith(dist_info)} == expected_files()
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    for script, target in pyproject()["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points


def test_the_expected_files_include_the_package_data() -> None:
    files = expected_files()
    assert "imgpipe/py.typed" in files
    assert "imgpipe/v1/py.typed" in files
    assert "imgpipe/v1/ingest_pb2.pyi" in files
    assert "imgpipe/ingest/sql/queries.sql" in files
    assert "imgpipe/ingest/migrations/0001_initial.sql" in files
    assert "imgpipe/ingest/web/index.html" in files
