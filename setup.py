"""Packaging layout and the C extension, which pyproject.toml cannot express (all metadata lives there).

The Hydra configs stay in ``configs/`` at the repository root, their one source, and
ship inside the package as ``lens_train/configs/`` so that a plain ``pip install .``
finds them (``lens_train.cli.config_dir``).
"""

import sys

from setuptools import Extension, find_namespace_packages, find_packages, setup

# The recorder's common cases in C (lens_train/capture/_hotpath*.c), CPython 3.11+. Optional: where it
# cannot be built (no compiler, another Python) the package installs and captures on the Python path.
HOTPATH = [Extension("lens_train.capture._hotpath",
                     [f"lens_train/capture/_hotpath{part}.c" for part in ("", "_ops", "_calls", "_build", "_model")],
                     depends=["lens_train/capture/_hotpath.h"], optional=True)]

CONFIGS = ["lens_train.configs", *(f"lens_train.configs.{group}" for group in find_namespace_packages(where="configs"))]

setup(
    packages=[*find_packages(include=["lens_train*"]), *CONFIGS],
    package_dir={"lens_train.configs": "configs"},
    ext_modules=HOTPATH if sys.version_info >= (3, 11) and sys.implementation.name == "cpython" else [],
    package_data={"lens_train": ["py.typed"], **{package: ["*.yaml"] for package in CONFIGS}},
)
