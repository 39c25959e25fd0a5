"""``mpiengine_sdk.remote``, the relay client's old name, still resolves its public names."""

from __future__ import annotations

import importlib

import pytest

from mpiengine_sdk import relayclient


def test_the_old_name_resolves_the_relay_backend_with_a_deprecation_warning() -> None:
    old = importlib.import_module("mpiengine_sdk.remote")
    with pytest.warns(DeprecationWarning, match=r"use mpiengine_sdk\.relayclient\.RelayBackend"):
        from mpiengine_sdk.remote import RelayBackend
    assert RelayBackend is relayclient.RelayBackend
    with pytest.warns(DeprecationWarning):
        assert old.RelayBackend is relayclient.RelayBackend


def test_the_old_attach_calls_executor_attach_with_a_deprecation_warning() -> None:
    class Recorder:
        def attach(self, task_ids):
            return [("attached", list(task_ids))]

    with pytest.warns(DeprecationWarning, match=r"use Executor\.attach\(task_ids\)"):
        from mpiengine_sdk.remote import attach
    assert attach(Recorder(), iter(["a", "b"])) == [("attached", ["a", "b"])]


def test_the_old_name_has_no_private_names() -> None:
    old = importlib.import_module("mpiengine_sdk.remote")
    with pytest.raises(AttributeError):
        old.client  # noqa: B018
