"""The one mapping from the project's errors to click's, used by every command.

An error of the project's tree (``mpiengine_sdk.errors.MPIEngineError``: ConfigError,
ArgumentError, SpecError, RelayError and the rest) becomes a ``click.ClickException`` with the
error's own message: click prints ``Error: MESSAGE`` and the command exits with status 1.
click's own errors (UsageError and BadParameter: status 2; Abort) and every other exception (a
bug: its traceback) pass through unchanged.

The error tree is imported only once an error has happened, so that importing the CLI stays
cheap: a command that never raises never imports it for this mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

__all__ = ["cli_errors", "click_error"]


def click_error(exc: BaseException, *, embedded: bool = False) -> click.ClickException | None:
    """The click error that reports ``exc``, or None if it is not one of the project's errors.

    Args:
        exc: the error a command raised.
        embedded: the command ran the embedded endpoint, whose size is ``--virtual-nodes``: a
            TaskTooLarge then names that option, not the batch endpoints' ``nodes_per_block``.
    """
    from mpiengine_sdk.errors import MPIEngineError, TaskTooLarge

    if embedded and isinstance(exc, TaskTooLarge):
        return click.ClickException(
            f"task needs {exc.requested}, but the largest block is {exc.largest}; ask for "
            "fewer nodes/cores/GPUs or run it on more virtual nodes (--virtual-nodes N)"
        )
    if isinstance(exc, MPIEngineError):
        return click.ClickException(str(exc))
    return None


@contextmanager
def cli_errors(*, embedded: bool = False) -> Iterator[None]:
    """Run a command's body, reporting the project's errors as click errors (chained).

    Args:
        embedded: as :func:`click_error`.
    """
    try:
        yield
    except Exception as exc:
        mapped = click_error(exc, embedded=embedded)
        if mapped is None:
            raise
        raise mapped from exc
