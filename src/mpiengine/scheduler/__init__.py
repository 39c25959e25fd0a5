"""The scheduler/partitioner: a pure policy mapping waiting tasks onto blocks' node/core/GPU slots.

No clock, no I/O, no threads: the endpoint tells a :class:`Scheduler` what happened (blocks added
or removed, tasks submitted, cancelled or ended) and calls ``schedule(now)``, which returns the
:class:`~mpiengine.placement.Placement` of every task that may start now. See ``policy`` for the
rules (priority with aging, FIFO among equals, EASY backfill, walltime-aware), ``pool`` for how
nodes are chosen, and ``simulate`` for the virtual-clock driver used by tests and benchmarks.
"""

from __future__ import annotations

from .admission import check_fits, fits_shape
from .model import BlockInfo, BlockShape, Demand, Reservation, TaskRequest
from .policy import Scheduler
from .simulate import SimResult, SimTask, simulate

__all__ = [
    "BlockInfo",
    "BlockShape",
    "Demand",
    "Reservation",
    "Scheduler",
    "SimResult",
    "SimTask",
    "TaskRequest",
    "check_fits",
    "fits_shape",
    "simulate",
]
