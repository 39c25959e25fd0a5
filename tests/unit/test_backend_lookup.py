"""The Executor finds backends outside the SDK through the ``mpiengine.backends`` entry points."""

from __future__ import annotations

import importlib.metadata

import pytest

from mpiengine_sdk import BackendError, Executor
from mpiengine_sdk import backend as backend_module
from mpiengine_sdk.backend import ENTRY_POINT_GROUP, backend_factory


def test_the_engine_package_registers_the_embedded_endpoint() -> None:
    from mpiengine.embedded import EmbeddedEndpoint

    (entry,) = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name="embedded")
    assert entry.value == "mpiengine.embedded:EmbeddedEndpoint"
    assert backend_factory("embedded") is EmbeddedEndpoint


def test_an_unknown_backend_names_the_group() -> None:
    with pytest.raises(BackendError, match=r"no backend 'nope' is installed .*mpiengine\.backends"):
        backend_factory("nope")


def test_without_the_engine_package_the_executor_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(backend_module, "_registered", dict)
    with pytest.raises(BackendError, match=r"needs the engine: pip install mpiengine"):
        Executor()


def test_a_registered_backend_that_cannot_load_is_a_backend_error(monkeypatch) -> None:
    broken = importlib.metadata.EntryPoint(
        name="embedded", value="mpiengine_no_such_module:Endpoint", group=ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(backend_module, "_registered", lambda: {"embedded": broken})
    with pytest.raises(BackendError, match=r"cannot load backend 'embedded' \(mpiengine_no_such"):
        Executor()
