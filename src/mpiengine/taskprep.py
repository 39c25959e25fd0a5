"""Turn a task message and its placement into the exact process to start.

Everything a task sees is decided here: its argv (launcher prefix + command), its environment
(the endpoint's base environment plus the ``MPIENGINE_*`` variables of *this* task, nothing from
any other task), the files written into its sandbox, and its walltime.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from mpiengine.launchers import Launch, LauncherSpec
from mpiengine.placement import Placement
from mpiengine.runner.process import LaunchSpec
from mpiengine.scheduler import TaskRequest
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.wire import TaskKind, TaskMessage

__all__ = ["build_launch", "clean_base_env", "task_request"]

#: Variables a task inherits from nowhere but its own placement.
_OWN_PREFIXES = ("MPIENGINE_", "PARSL_", "SLURM_STEP_", "PMI_", "PMIX_RANK", "OMPI_COMM_WORLD")

_PYRUNNER = ("-m", "mpiengine.runner.pyrunner")


def clean_base_env(env: Mapping[str, str]) -> dict[str, str]:
    """The endpoint's environment minus anything that would describe another task."""
    return {k: v for k, v in env.items() if not k.startswith(_OWN_PREFIXES)}


def task_request(task: TaskMessage, spec: ResourceSpec, submit_time: float) -> TaskRequest:
    """The scheduler's view of a task."""
    return TaskRequest(
        task_id=task.task_id,
        num_nodes=spec.num_nodes,
        ranks_per_node=1 if task.kind in (TaskKind.SHELL, TaskKind.PYTHON) else spec.ranks_per_node,
        cpus_per_rank=spec.cpus_per_rank,
        gpus_per_rank=spec.gpus_per_rank,
        exclusive=spec.exclusive,
        walltime=spec.walltime,
        priority=spec.priority,
        submit_time=submit_time,
    )


def _command(task: TaskMessage, sandbox: Path, python: str) -> tuple[str, ...]:
    if task.kind in (TaskKind.SHELL, TaskKind.MPI):
        if task.script is not None:
            return ("/bin/bash", "-c", task.script)
        return tuple(task.argv)
    args: tuple[str, ...] = (python, *_PYRUNNER)
    if task.kind is TaskKind.MPI_PYTHON:
        args += ("--mpi",)
        if task.return_all:
            args += ("--return-all",)
    return (*args, str(sandbox))


#: Rendered launches that did not read the hostfile path, so they hold for any task with the
#: same placement shape: (launcher, Launch, shell-quoted prefix) by shape key. Bounded.
_RENDERED: dict[tuple[object, ...], tuple[LauncherSpec, Launch, str]] = {}
_RENDERED_MAX = 4096
#: Every Placement field but the task id: a new field joins the key by itself.
_SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(Placement) if f.name != "task_id")


def _render(
    launcher: LauncherSpec,
    placement: Placement,
    cores_per_node: int,
    options: tuple[str, ...],
    hostfile: str,
) -> tuple[Launch, str]:
    """The launcher's rendering of ``placement`` and its shell-quoted argv.

    Rendering is a pure function of the launcher, the placement (not its task id) and the
    options; one that never read ``hostfile`` is reused for the next task of the same shape,
    which is every task but the first on a busy endpoint.
    """
    key = (
        id(launcher),
        *(getattr(placement, name) for name in _SHAPE_FIELDS),
        cores_per_node,
        options,
    )
    hit = _RENDERED.get(key)
    if hit is not None and hit[0] is launcher:  # the id was not reused by another launcher
        return hit[1], hit[2]
    mpi = launcher.render(
        placement, cores_per_node=cores_per_node, user_options=options, hostfile_path=hostfile
    )
    prefix = shlex.join(mpi.argv)
    if mpi.hostfile is None:
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[key] = (launcher, mpi, prefix)
    return mpi, prefix


def build_launch(
    task: TaskMessage,
    spec: ResourceSpec,
    placement: Placement,
    *,
    mpi_launcher: LauncherSpec,
    cores_per_node: int,
    sandbox: Path,
    base_env: Mapping[str, str],
    python: str = sys.executable,
) -> LaunchSpec:
    """Everything the runner needs to start ``task`` on ``placement``.

    Shell and Python tasks run once, on the lead node; MPI tasks run under ``mpi_launcher``
    across the placement. Shell tasks still get ``MPIENGINE_MPI_PREFIX`` (the launcher prefix for
    their placement, shell-quoted) so a script can start MPI steps itself, as with Globus
    Compute's ``$PARSL_MPI_PREFIX``.
    """
    hostfile = f"{sandbox}/hostfile"
    mpi, prefix = _render(mpi_launcher, placement, cores_per_node, spec.launcher_options, hostfile)
    runs_under_launcher = task.kind in (TaskKind.MPI, TaskKind.MPI_PYTHON)
    command = _command(task, sandbox, python)
    argv = (*mpi.argv, *command) if runs_under_launcher else command

    env = dict(base_env)
    if runs_under_launcher:
        env.update(mpi.env)
    env.update(
        {
            "MPIENGINE_TASK_ID": task.task_id,
            "MPIENGINE_SANDBOX": str(sandbox),
            "MPIENGINE_BLOCK_ID": placement.block_id,
            "MPIENGINE_NODELIST": ",".join(placement.nodes),
            "MPIENGINE_NUM_NODES": str(placement.num_nodes),
            "MPIENGINE_RANKS_PER_NODE": str(spec.ranks_per_node),
            "MPIENGINE_NUM_RANKS": str(spec.num_nodes * spec.ranks_per_node),
            "MPIENGINE_CPUS_PER_RANK": str(spec.cpus_per_rank),
            "MPIENGINE_GPUS_PER_RANK": str(spec.gpus_per_rank),
            "MPIENGINE_MPI_PREFIX": prefix,
            # Globus Compute / Parsl names, so their scripts run unchanged.
            "PARSL_MPI_PREFIX": prefix,
            "PARSL_NUM_NODES": str(placement.num_nodes),
            "PARSL_NUM_RANKS": str(spec.num_nodes * spec.ranks_per_node),
            "PARSL_RANKS_PER_NODE": str(spec.ranks_per_node),
        }
    )
    files: dict[str, bytes] = {}
    if mpi.hostfile is not None:
        files["hostfile"] = mpi.hostfile.encode()
        env["MPIENGINE_HOSTFILE"] = hostfile
    if task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON):
        files["task.dill"] = task.payload
    return LaunchSpec(
        task_id=task.task_id,
        argv=argv,
        env=env,
        sandbox=sandbox,
        walltime=placement.walltime,
        snippet_lines=task.snippet_lines,
        files=files,
        progress_timeout=spec.progress_timeout,
    )
