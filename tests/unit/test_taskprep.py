"""build_launch: argv, env and files of a task; its launcher renderings are reused per shape."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from mpiengine.binding import WRAPPER
from mpiengine.launchers import load_launcher
from mpiengine.placement import Placement
from mpiengine.taskprep import build_launch
from mpiengine_sdk import MPIFunction, ResourceSpec

SPEC = ResourceSpec(num_nodes=2, ranks_per_node=2)
BASE = Placement("t0", "blk", ("n1", "n2"), 2, cores=((0, 1), (0, 1)))
# Each differs from BASE in one field; a reused rendering must never hide the difference.
VARIANTS = [
    dataclasses.replace(BASE, task_id="t1"),
    dataclasses.replace(BASE, block_id="blk2"),
    dataclasses.replace(BASE, nodes=("n3", "n4")),
    dataclasses.replace(BASE, ranks_per_node=1, cores=((0,), (0,))),
    dataclasses.replace(BASE, cpus_per_rank=2, cores=((0, 1, 2, 3),) * 2),
    dataclasses.replace(BASE, cores=((2, 3), (2, 3))),
    dataclasses.replace(BASE, exclusive=True),
    dataclasses.replace(BASE, walltime=30.0),
    BASE,
]


def _launch(launcher_name: str, placement: Placement, sandbox: Path, options=()):
    spec = ResourceSpec(
        num_nodes=placement.num_nodes,
        ranks_per_node=placement.ranks_per_node,
        launcher_options=list(options),
    )
    task = MPIFunction(["true"]).to_task(placement.task_id, (), {}, spec)
    return build_launch(
        task,
        spec,
        placement,
        mpi_launcher=load_launcher(launcher_name),
        cores_per_node=8,
        sandbox=sandbox,
        base_env={},
    )


@pytest.mark.parametrize("name", ["mpich", "srun", "pals", "openmpi"])
def test_every_launch_matches_a_fresh_rendering(name: str, tmp_path: Path) -> None:
    launcher = load_launcher(name)
    for i, placement in enumerate([BASE, *VARIANTS, *VARIANTS]):
        sandbox = tmp_path / f"s{i}"
        launch = _launch(name, placement, sandbox)
        fresh = launcher.render(placement, cores_per_node=8, hostfile_path=f"{sandbox}/hostfile")
        head, middle = launch.argv[: len(fresh.argv)], launch.argv[len(fresh.argv) : -1]
        assert head == fresh.argv and launch.argv[-1] == "true", placement
        # srun cannot pin to the placement's cores, nor Open MPI one rank at a time inside
        # --cpu-set: the per-rank wrapper does, on shared nodes.
        wants_wrapper = launcher.cpu_binding == "wrapper" and not placement.exclusive
        assert middle[:2] == (("/bin/sh", WRAPPER) if wants_wrapper else ()), placement
        assert launch.env["MPIENGINE_MPI_PREFIX"] == shlex.join(fresh.argv)
        assert launch.env["MPIENGINE_TASK_ID"] == placement.task_id


def test_launcher_options_are_part_of_the_shape(tmp_path: Path) -> None:
    plain = _launch("srun", BASE, tmp_path / "a")
    with_opt = _launch("srun", BASE, tmp_path / "b", options=["--mpi=pmix"])
    assert "--mpi=pmix" in with_opt.argv and "--mpi=pmix" not in plain.argv


def test_a_rendering_that_reads_the_hostfile_is_never_reused(tmp_path: Path) -> None:
    nodes = tuple(f"n{i}" for i in range(1025))  # mpich switches to a hostfile above 1024
    big = Placement("t0", "blk", nodes, 1)
    first = _launch("mpich", big, tmp_path / "a")
    second = _launch("mpich", dataclasses.replace(big, task_id="t1"), tmp_path / "b")
    assert f"{tmp_path}/a/hostfile" in first.argv
    assert f"{tmp_path}/b/hostfile" in second.argv
    assert second.files["hostfile"] == first.files["hostfile"]
