"""A non-editable install (a wheel) carries the Hydra configs, and the CLI finds them there."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_config_and_the_cli_finds_them(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 70:  # bdist_wheel built in from 70 on
        pytest.skip("needs setuptools >= 70 to build a wheel without build isolation")
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    for name in ("latentode", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("latentode-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "latentode/py.typed" in archive.namelist()  # PEP 561: annotations for checkers
        shipped = {n.removeprefix("latentode/_conf/") for n in archive.namelist()
                   if n.startswith("latentode/_conf/")}
        archive.extractall(tmp_path / "site")
    expected = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == expected
    found = subprocess.run(  # from the unpacked wheel alone, far from the checkout
        [sys.executable, "-c", "from latentode.cli import config_dir; print(config_dir())"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
        timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()) == tmp_path / "site" / "latentode" / "_conf"


def test_lower_bounds_are_the_versions_the_lowest_check_pins():
    """Every ``>=`` bound in pyproject.toml (runtime and extras) is pinned exactly in
    .ci/lowest.txt, which scripts/check_lowest_deps.sh tests; a bound raised or lowered in one
    file and not the other fails here. Not pinned there: torch (the script's TORCH=) and ruff
    (a lint tool the suite does not run)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [*project["dependencies"], *(r for group in project["optional-dependencies"].values()
                                          for r in group)]
    bounds = {}
    for text in wanted:
        req = Requirement(text)
        for spec in req.specifier:
            if spec.operator == ">=" and req.name not in ("torch", "ruff"):
                bounds[req.name] = Version(spec.version)
    pinned = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.strip()] = Version(version)
    assert pinned == bounds


@pytest.mark.slow
def test_the_package_type_checks_clean():
    """latentode ships py.typed, so its annotations reach users' type checkers: mypy (the
    [tool.mypy] settings in pyproject.toml) finds no error, also when told the oldest Python
    requires-python admits: typeshed then flags standard-library names that Python lacks (only
    3.11 is installed here, so this is how 3.10 gets checked). ~40 s; run with -m slow."""
    pytest.importorskip("mypy")
    oldest = re.search(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert oldest, "requires-python not found in pyproject.toml"
    for extra in ([], ["--python-version", oldest.group(1)]):
        run = subprocess.run([sys.executable, "-m", "mypy", *extra], capture_output=True,
                             text=True, cwd=ROOT, timeout=600)
        assert run.returncode == 0, (extra, run.stdout[-4000:])
    assert (ROOT / "latentode" / "py.typed").is_file()
