"""Golden launches: the whole argv and binding env of shell, Python and MPI tasks per launcher.

``tests/golden/launchers/`` pins what each launcher file renders for a placement; this file pins
what a task really starts with: the launcher's one-rank form for shell and Python tasks, the
per-rank wrapper where the launcher binds nothing itself, and the GPU variable of each vendor
(NVIDIA, AMD, Intel with two tiles per GPU). The wrapper's path is written as ``{WRAPPER}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mpiengine.binding import WRAPPER, Binding
from mpiengine.launchers import available_launchers, load_launcher
from mpiengine.placement import Placement
from mpiengine.taskprep import build_launch
from mpiengine_sdk import MPIFunction, ResourceSpec, ShellFunction
from mpiengine_sdk.errors import SpecError
from mpiengine_sdk.functions import python_task
from mpiengine_sdk.wire import TaskKind

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tasks"
REGEN = "MPIENGINE_REGEN_GOLDEN=1 pytest tests/unit/test_task_launch_golden.py"
SANDBOX = Path("/sandbox/task-1")
#: The variables a task's binding shows; everything else in its env is covered elsewhere.
SHOWN = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "MPIENGINE_CPUS",
    "MPIENGINE_GPUS",
)


def _p(nodes: list[str], rpn: int, **kw: object) -> Placement:
    return Placement("task-1", "block-1", tuple(nodes), rpn, **kw)  # type: ignore[arg-type]


# name -> placement (cores_per_node 8, 4 GPU slots per node).
CASES: dict[str, Placement] = {
    "1node_1rank_1gpu": _p(["node3"], 1, cores=((5,),), gpus_per_rank=1, gpus=((2,),)),
    "1node_4ranks_1gpu": _p(
        ["node1"], 4, cores=((0, 1, 2, 3),), gpus_per_rank=1, gpus=((0, 1, 2, 3),)
    ),
    "2nodes_2ranks_2cpus_1gpu": _p(
        ["node2", "node3"],
        2,
        cpus_per_rank=2,
        gpus_per_rank=1,
        cores=((4, 5, 6, 7),) * 2,
        gpus=((2, 3),) * 2,
    ),
    "2nodes_cores_differ_no_gpu": _p(["node1", "node2"], 2, cores=((0, 1), (2, 3))),
    "1node_exclusive_2gpus": _p(
        ["node4"],
        2,
        gpus_per_rank=2,
        cores=(tuple(range(8)),),
        gpus=((0, 1, 2, 3),),
        exclusive=True,
    ),
}
VENDORS = {
    "nvidia": Binding(gpu_vendor="nvidia"),
    "amd": Binding(gpu_vendor="amd"),
    "intel_tiles": Binding(gpu_vendor="intel", gpu_tiles=2),
}
KINDS = (TaskKind.SHELL, TaskKind.PYTHON, TaskKind.MPI)


def _task(kind: TaskKind, placement: Placement) -> tuple[object, ResourceSpec]:
    spec = ResourceSpec(
        num_nodes=placement.num_nodes,
        ranks_per_node=placement.ranks_per_node,
        cpus_per_rank=placement.cpus_per_rank,
        gpus_per_rank=placement.gpus_per_rank,
        exclusive=placement.exclusive,
    )
    if kind is TaskKind.SHELL:
        return ShellFunction("./app").to_task("task-1", (), {}, spec), spec
    if kind is TaskKind.MPI:
        return MPIFunction(["./app"]).to_task("task-1", (), {}, spec), spec
    return python_task(len, ("x",), {}, "task-1", spec), spec


def _render(name: str) -> dict[str, object]:
    launcher = load_launcher(name)
    out: dict[str, object] = {}
    for case, placement in CASES.items():
        for vendor, binding in VENDORS.items():
            for kind in KINDS:
                if kind is TaskKind.PYTHON and placement.num_ranks > 1:
                    continue  # a Python function is one process: the scheduler never makes it
                if not launcher.mpi_tasks and kind is TaskKind.MPI and placement.num_ranks > 1:
                    continue
                task, spec = _task(kind, placement)
                try:
                    launch = build_launch(
                        task,  # type: ignore[arg-type]
                        spec,
                        placement,
                        mpi_launcher=launcher,
                        cores_per_node=8,
                        sandbox=SANDBOX,
                        base_env={},
                        python="python3",
                        binding=binding,
                    )
                except SpecError as exc:  # a refusal is pinned too
                    out[f"{case}/{vendor}/{kind.value}"] = {"error": f"{type(exc).__name__}"}
                    continue
                argv = [WRAPPER_MARK if a == WRAPPER else a for a in launch.argv]
                env = {k: launch.env[k] for k in SHOWN if k in launch.env}
                out[f"{case}/{vendor}/{kind.value}"] = {"argv": argv, "env": env}
    return out


WRAPPER_MARK = "{WRAPPER}"


@pytest.mark.parametrize("name", available_launchers())
def test_task_launches_match_the_golden_file(name: str) -> None:
    actual = _render(name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("MPIENGINE_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.is_file(), f"no golden file {path}; create it with `{REGEN}` and review it"
    expected = json.loads(path.read_text())
    assert actual == expected, (
        f"task launches under {name} differ from {path}. If the change is intended, "
        f"regenerate with `{REGEN}` and review the diff before committing."
    )


def test_no_stale_task_golden_files() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == available_launchers()
