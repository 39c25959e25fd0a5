"""Where the shipped data folders (launchers/, site-configs/) are.

In a wheel they live inside the package as ``mpiengine/_data/<name>``; in a source checkout (an
editable install) they are the repository's top-level folders. Both resolve through one function.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory of the shipped data folder ``name`` ("launchers", "site-configs").

    Raises:
        FileNotFoundError: neither the installed nor the checkout location exists.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parents[1] / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"data folder {name!r} not found inside the package or the source checkout; "
        "reinstall mpiengine"
    )
