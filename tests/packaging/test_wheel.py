"""Install dbfence as a user would: build the wheel and sdist, install the wheel into a fresh venv.

Not editable and not from the source tree: the venv sees only what the wheel carries, so a module
imported at run time but missing from install_requires, or a data file left out of the package,
fails here rather than on an operator's host. pip's cache makes the dependencies quick to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import dbfence

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CONFIG = ROOT / "systemd" / "dbfence.toml"

pytestmark = pytest.mark.timeout(240)


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the installed package must not be shadowed by the source tree.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=200, check=False)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The default builds the sdist, then the wheel from the unpacked sdist: that also proves the
    # sdist is complete, and leaves no build/ directory in the source tree.
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    return out


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {found}"
    return found[0]


def test_wheel_carries_every_module_and_data_file(dist: Path) -> None:
    wheel = _only(dist, "dbfence-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "dbfence"
    wanted = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert "dbfence/py.typed" in wanted
    assert wanted - names == set(), "files of the package missing from the wheel"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dbfence = dbfence.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_sdist_carries_the_operator_files(dist: Path) -> None:
    sdist = _only(dist, "dbfence-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for wanted in ("setup.cfg", "pyproject.toml", "README.md", "systemd/dbfence.service",
                   "systemd/dbfence.toml", "docs/operations.md", "dbfence/py.typed"):
        assert wanted in names, f"{wanted} missing from the sdist"


def test_installed_wheel_runs(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    wheel = _only(dist, "dbfence-*-py3-none-any.whl")
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel,
         cwd=tmp_path)
    # Run from an empty directory: nothing may be imported from the checkout.
    version = _run(venv / "bin" / "dbfence", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"dbfence, version {dbfence.__version__}"
    shown = _run(venv / "bin" / "dbfence", "config", "show", "--config", SAMPLE_CONFIG, cwd=tmp_path)
    assert 'name = "orders"' in shown.stdout
    where = _run(venv / "bin" / "python", "-c", "import dbfence; print(dbfence.__file__)", cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv)), "dbfence was imported from outside the venv"
