"""``mpiengine_sdk.remote``, the relay client's old name, still resolves its public names."""

from __future__ import annotations

import importlib

import pytest

from mpiengine_sdk import relayclient


@pytest.mark.parametrize("name", ["RelayBackend", "attach"])
def test_the_old_name_resolves_public_names_with_a_deprecation_warning(name: str) -> None:
    old = importlib.import_module("mpiengine_sdk.remote")
    with pytest.warns(DeprecationWarning, match=r"mpiengine_sdk\.remote is deprecated"):
        value = getattr(old, name)
    assert value is getattr(relayclient, name)


def test_the_old_name_has_no_private_names() -> None:
    old = importlib.import_module("mpiengine_sdk.remote")
    with pytest.raises(AttributeError):
        old.client  # noqa: B018
