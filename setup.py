"""Packaging layout that pyproject.toml cannot express (all metadata lives there).

The Hydra configs stay in ``configs/`` at the repository root, their one source, and
ship inside the package as ``lens_train/configs/`` so that a plain ``pip install .``
finds them (``lens_train.cli.config_dir``).
"""

from setuptools import find_namespace_packages, find_packages, setup

CONFIGS = ["lens_train.configs", *(f"lens_train.configs.{group}" for group in find_namespace_packages(where="configs"))]

setup(
    packages=[*find_packages(include=["lens_train*"]), *CONFIGS],
    package_dir={"lens_train.configs": "configs"},
    package_data={"lens_train": ["py.typed"], **{package: ["*.yaml"] for package in CONFIGS}},
)
