"""Turn a task message and its placement into the exact process to start.

Everything a task sees is decided here: its argv (launcher prefix + command), its environment
(the endpoint's base environment plus the ``MPIENGINE_*`` variables of *this* task, nothing from
any other task), the files written into its sandbox, and its walltime.

Where each kind of task runs (the placement guarantee):

- MPI and MPI Python tasks: every rank under the block's launcher, on its placed nodes, with the
  per-rank wrapper in front of the command where the launcher cannot bind CPUs or GPUs itself
  (see ``mpiengine.binding``).
- Shell and Python tasks on real nodes: one rank launched on the placement's lead node (the
  launcher's one-rank form: ``srun -N1 -n1 --nodelist=LEAD --exact ...``, ``mpiexec -n 1 -hosts
  LEAD``), holding the lead node's placed cores and GPUs. A shell task's launch gets the
  launcher's ``nested_launch_args`` (srun ``--overlap``) so that ``$MPIENGINE_MPI_PREFIX``,
  rendered for its whole placement, can start steps on the same nodes.
- On the embedded endpoint's virtual nodes (and with the ``local`` launcher) shell and Python
  tasks start directly on this host; only their GPUs are set, through the vendor variable.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from mpiengine.binding import REAL_NODES, Binding, gpu_mask, wrapper_argv
from mpiengine.launchers import Launch, LauncherSpec
from mpiengine.placement import Placement
from mpiengine.runner.process import LaunchSpec
from mpiengine.scheduler import TaskRequest
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.wire import TaskKind, TaskMessage

__all__ = ["build_launch", "task_request"]

_PYRUNNER = ("-m", "mpiengine.runner.pyrunner")


def task_request(
    task: TaskMessage,
    spec: ResourceSpec,
    submit_time: float,
    *,
    estimate: float | None = None,
    kind: str | None = None,
) -> TaskRequest:
    """The scheduler's view of a task.

    Args:
        estimate: its predicted runtime (see ``mpiengine.predict``), or None: a belief that
            steers backfill; never a limit (the walltime stays the spec's).
        kind: the kind it shares learned estimates with, or None.
    """
    return TaskRequest(
        task_id=task.task_id,
        num_nodes=spec.num_nodes,
        # A shell task holds its whole MPI shape (its script may launch across it through
        # MPIENGINE_MPI_PREFIX); a Python function is one process.
        ranks_per_node=1 if task.kind is TaskKind.PYTHON else spec.ranks_per_node,
        cpus_per_rank=spec.cpus_per_rank,
        gpus_per_rank=spec.gpus_per_rank,
        exclusive=spec.exclusive,
        walltime=spec.walltime,
        priority=spec.priority,
        submit_time=submit_time,
        estimate=estimate,
        kind=kind,
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


def _same_on_every_node(per_node: tuple[tuple[int, ...], ...], placement: Placement) -> bool:
    return len(per_node) == placement.num_nodes and all(ids == per_node[0] for ids in per_node)


def _rank_wrapper(
    launcher: LauncherSpec, placement: Placement, binding: Binding, *, gpus_by_wrapper: bool
) -> tuple[str, ...]:
    """The per-rank wrapper's argv for what ``launcher`` does not bind itself, or ``()``."""
    pin = (
        binding.real_nodes
        and not placement.exclusive
        and (
            launcher.cpu_binding == "wrapper"
            or (
                launcher.cpu_binding == "launcher"
                and not _same_on_every_node(placement.cores, placement)
            )
        )
    )
    gpu_var = binding.gpu_variable if gpus_by_wrapper else None
    return wrapper_argv(
        placement,
        rank_env=launcher.rank_env,
        pin_cpus=pin,
        gpu_variable=gpu_var,
        gpu_tiles=binding.gpu_tiles,
    )


def _lead_only(placement: Placement, task: TaskMessage) -> Placement:
    """One rank on the lead node holding the lead node's placed cores and GPUs."""
    cores = placement.cores[0] if placement.cores else ()
    gpus = placement.gpus[0] if placement.gpus else ()
    rpn = placement.ranks_per_node
    n_gpus = rpn * placement.gpus_per_rank
    return Placement(
        task_id=task.task_id,
        block_id=placement.block_id,
        nodes=placement.nodes[:1],
        ranks_per_node=1,
        cpus_per_rank=len(cores) if cores else rpn * placement.cpus_per_rank,
        gpus_per_rank=n_gpus,
        cores=(cores,) if cores else (),
        gpus=(gpus[:n_gpus],) if gpus and n_gpus else (),
        exclusive=placement.exclusive,
        walltime=placement.walltime,
    )


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
    binding: Binding = REAL_NODES,
) -> LaunchSpec:
    """Everything the runner needs to start ``task`` on ``placement``.

    MPI tasks run under ``mpi_launcher`` across the placement; shell and Python tasks run once,
    on the placement's lead node (see the module docstring). Shell tasks also get
    ``MPIENGINE_MPI_PREFIX`` (the launcher prefix for their whole placement, shell-quoted) so a
    script can start MPI steps itself, as with Globus Compute's ``$PARSL_MPI_PREFIX``.

    Args:
        binding: the block's GPU vendor and tiles, and whether its nodes are real (virtual
            nodes: shell and Python tasks start here directly, nothing is pinned).
    """
    placement = binding.on_cpus(placement)  # core slots -> the nodes' own CPU numbers
    hostfile = f"{sandbox}/hostfile"
    options = spec.launcher_options
    mpi, prefix = _render(mpi_launcher, placement, cores_per_node, options, hostfile)
    command = _command(task, sandbox, python)
    gpu_var = binding.gpu_variable
    lead_gpus = (
        placement.gpus[0][: placement.ranks_per_node * placement.gpus_per_rank]
        if (placement.gpus and placement.gpus_per_rank)
        else ()
    )

    env = dict(base_env)
    files: dict[str, bytes] = {}
    if task.kind in (TaskKind.MPI, TaskKind.MPI_PYTHON):
        by_wrapper = mpi_launcher.gpu_binding == "wrapper"
        wrapper = _rank_wrapper(mpi_launcher, placement, binding, gpus_by_wrapper=by_wrapper)
        argv = (*mpi.argv, *wrapper, *command)
        env.update(mpi.env)
    elif not binding.real_nodes or mpi_launcher.executable is None:
        # This host: the command as it is (pinned by the wrapper only on real nodes).
        argv = command
        if binding.real_nodes:
            one = _lead_only(placement, task)
            argv = (*_rank_wrapper(mpi_launcher, one, binding, gpus_by_wrapper=False), *command)
        if gpu_var is not None and lead_gpus:
            env[gpu_var] = gpu_mask(lead_gpus, binding.gpu_tiles)
    else:
        nested = mpi_launcher.nested_launch_args if task.kind is TaskKind.SHELL else ()
        # An --overlap step reserves nothing, so it must not ask for GPUs (the wrapper names
        # them), and it is never exclusive (srun refuses both; it still asks for every CPU).
        ask_gpus = mpi_launcher.gpu_binding == "launcher" and not nested
        one = _lead_only(placement, task)
        asked = one
        if nested:
            asked = dataclasses.replace(one, exclusive=False, gpus_per_rank=0)
        elif not ask_gpus:
            asked = dataclasses.replace(one, gpus_per_rank=0)
        # Its own file: the task's hostfile describes the whole placement (jsrun's ERF).
        lead_file = f"{sandbox}/lead.hostfile"
        launch, _ = _render(mpi_launcher, asked, cores_per_node, options, lead_file)
        if launch.hostfile is not None:
            files["lead.hostfile"] = launch.hostfile.encode()
        wrapper = _rank_wrapper(mpi_launcher, one, binding, gpus_by_wrapper=not ask_gpus)
        head = launch.argv[:1]
        argv = (*head, *nested, *launch.argv[1:], *wrapper, *command)
        env.update(launch.env)
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
            # The placement's own cores and GPU slots on the lead node.
            "MPIENGINE_CPUS": ",".join(map(str, placement.cores[0])) if placement.cores else "",
            "MPIENGINE_GPUS": ",".join(map(str, lead_gpus)),
            "MPIENGINE_MPI_PREFIX": prefix,
            # Globus Compute / Parsl names, so their scripts run unchanged.
            "PARSL_MPI_PREFIX": prefix,
            "PARSL_NUM_NODES": str(placement.num_nodes),
            "PARSL_NUM_RANKS": str(spec.num_nodes * spec.ranks_per_node),
            "PARSL_RANKS_PER_NODE": str(spec.ranks_per_node),
        }
    )
    if mpi.hostfile is not None:
        files["hostfile"] = mpi.hostfile.encode()
        env["MPIENGINE_HOSTFILE"] = hostfile
    if task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON):
        files["task.dill"] = task.payload
    if task.staging and task.kind in (TaskKind.SHELL, TaskKind.MPI):
        # Staged once, around the whole launch (launcher included), in the shared sandbox.
        files["staging.json"] = json.dumps(dict(task.staging)).encode()
        argv = (python, "-m", "mpiengine.staging", str(sandbox), "--", *argv)
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
