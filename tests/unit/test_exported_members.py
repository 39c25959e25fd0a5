"""The public API is exactly what ``__all__`` says, sorted, and every name is documented."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("module_name", ["mpiengine_sdk", "mpiengine"])
def test_all_is_sorted_and_complete(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{module_name}.__all__ must be sorted"
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith(module_name)
    }
    # mpiengine loads its exports lazily; every name must still resolve.
    assert public <= set(exported)
    if module_name == "mpiengine_sdk":
        assert public == set(exported)
    for name in exported:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("module_name", ["mpiengine_sdk", "mpiengine"])
def test_every_export_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(module, name).__doc__, f"{module_name}.{name} has no docstring"
