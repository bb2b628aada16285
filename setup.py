"""Packaging beyond pyproject.toml: the repository's ``conf/`` ships inside the wheel as
``latentode/_conf`` so that a non-editable install finds its Hydra configs (editable installs map
the same package name onto ``conf/`` itself)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["latentode*"]), "latentode._conf"],
    package_dir={"latentode._conf": "conf"},
    package_data={"latentode._conf": ["*.yaml", "**/*.yaml"]},
)
