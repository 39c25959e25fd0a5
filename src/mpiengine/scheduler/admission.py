"""Admission: refuse at submit a task that no block shape can ever hold."""

from __future__ import annotations

from collections.abc import Iterable

from mpiengine_sdk.errors import TaskTooLarge

from .model import BlockShape, TaskRequest

__all__ = ["check_fits", "fits_shape"]


def fits_shape(req: TaskRequest, shape: BlockShape) -> bool:
    """Whether one block of ``shape`` could ever hold ``req`` (when otherwise idle).

    A task without walltime fits any walltime (it runs until its block ends); a task with one
    needs a block whose own walltime is at least as long.
    """
    if req.num_nodes > shape.num_nodes:
        return False
    if req.cores_per_node > shape.cores_per_node or req.gpus_per_node > shape.gpus_per_node:
        return False
    return shape.walltime is None or req.walltime is None or req.walltime <= shape.walltime


def _describe(shape: BlockShape) -> str:
    text = f"{shape.num_nodes} nodes x {shape.cores_per_node} cores x {shape.gpus_per_node} gpus"
    if shape.walltime is not None:
        text += f" for {shape.walltime:g} s"
    return text


def check_fits(req: TaskRequest, shapes: Iterable[BlockShape]) -> None:
    """Refuse a task that no block of any of ``shapes`` can hold.

    Args:
        req: the task.
        shapes: the block shapes the endpoint can obtain.

    Raises:
        TaskTooLarge: no shape holds it (also when ``shapes`` is empty); the message names the
            request (``"N nodes x C cores x G gpus"``) and the largest shape.
    """
    shapes = list(shapes)
    if any(fits_shape(req, shape) for shape in shapes):
        return
    if not shapes:
        raise TaskTooLarge(req.describe(), "none (no block shape is configured)")
    inf = float("inf")
    largest = max(
        shapes,
        key=lambda s: (
            s.num_nodes * s.cores_per_node,
            s.gpus_per_node,
            inf if s.walltime is None else s.walltime,
        ),
    )
    raise TaskTooLarge(req.describe(), _describe(largest))
