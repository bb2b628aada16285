"""Packaging beyond pyproject.toml: the repository's ``conf/`` ships inside the wheel as
``latentode/_conf`` so that a non-editable install finds its Hydra configs (editable installs map
the same package name onto ``conf/`` itself). ``py.typed`` tells type checkers that the package's
annotations are meant to be read (PEP 561)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["latentode*"]), "latentode._conf"],
    package_dir={"latentode._conf": "conf"},
    package_data={"latentode": ["py.typed"], "latentode._conf": ["*.yaml", "**/*.yaml"]},
)
