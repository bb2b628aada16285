"""A non-editable install (a wheel) carries the Hydra configs, and the CLI finds them there."""

from __future__ import annotations

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
