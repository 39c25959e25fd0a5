"""The per-rank wrapper, run for real: each rank holds exactly its share of CPUs and GPUs.

The wrapper (``bind_rank.sh``) is started here the way each launcher would start a rank: with
that launcher's rank variables set, plus a misleading ``SLURM_PROCID=0`` as every rank inherits
under hydra inside a Slurm job. Its command prints what the rank was given.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpiengine.binding import WRAPPER, Binding, gpu_mask, rank_lists, wrapper_argv
from mpiengine.config import load_config
from mpiengine.environment import clean_base_env
from mpiengine.launchers import available_launchers, load_launcher
from mpiengine.placement import Placement
from mpiengine.taskprep import build_launch
from mpiengine_sdk import MPIFunction, ResourceSpec
from mpiengine_sdk.errors import ConfigError

HOST_CPUS = sorted(os.sched_getaffinity(0))
SHOW = (
    'echo "$CUDA_VISIBLE_DEVICES|$ROCR_VISIBLE_DEVICES|$ZE_AFFINITY_MASK|'
    '$(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
)


def run_rank(argv: tuple[str, ...], env: dict[str, str]) -> tuple[str, str, str, str]:
    """Run one rank's wrapper argv; return (cuda, rocr, ze, Cpus_allowed_list)."""
    done = subprocess.run(
        [*argv, "sh", "-c", SHOW],
        env={"PATH": os.environ["PATH"], "SLURM_PROCID": "0", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    cuda, rocr, ze, cpus = done.stdout.strip().split("|")
    return cuda, rocr, ze, cpus


def cpu_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def rank_env(launcher: str, rank: int, local: int) -> dict[str, str]:
    """What ``launcher`` sets in a rank's environment."""
    names = load_launcher(launcher).rank_env
    if names is None:
        return {}
    env = {names[0]: str(rank)}
    if names[1] is not None:
        env[names[1]] = str(local)
    return env


@pytest.mark.parametrize("name", [n for n in available_launchers() if load_launcher(n).mpi_tasks])
@pytest.mark.parametrize(
    ("vendor", "tiles", "index"),
    [("nvidia", 1, 0), ("amd", 1, 1), ("intel", 2, 2)],
)
def test_each_rank_sees_only_its_gpus(name: str, vendor: str, tiles: int, index: int) -> None:
    # 2 nodes x 2 ranks x 1 GPU slot, different slots on each node: every rank one distinct slot.
    placement = Placement(
        "t", "b", ("n1", "n2"), 2, gpus_per_rank=1, gpus=((0, 1), (2, 3)), cores=((0,), (0,))
    )
    argv = wrapper_argv(
        placement,
        rank_env=load_launcher(name).rank_env,
        pin_cpus=False,
        gpu_variable=Binding(gpu_vendor=vendor, gpu_tiles=tiles).gpu_variable,
        gpu_tiles=tiles,
    )
    seen = {}
    for rank in range(4):
        shown = run_rank(argv, rank_env(name, rank, rank % 2))
        assert [v for i, v in enumerate(shown[:3]) if i != index] == ["", ""]
        seen[rank] = shown[index]
    expected = [gpu_mask([s], tiles) for s in (0, 1, 2, 3)]
    assert [seen[r] for r in range(4)] == expected


@settings(max_examples=25, deadline=None)
@given(
    nodes=st.integers(1, 3),
    rpn=st.integers(1, 3),
    cpr=st.integers(1, 2),
    gpr=st.integers(0, 2),
    shuffle=st.randoms(use_true_random=False),
)
def test_wrapper_gives_every_rank_exactly_its_share(
    nodes: int, rpn: int, cpr: int, gpr: int, shuffle: object
) -> None:
    # Any placement: per node, a list of real host CPUs (ranks may share one when the host has
    # fewer than the placement asks: pinning is checked against the share, not exclusivity) and
    # GPU slots; each rank must hold exactly its slice of its own node's lists.
    import random

    assert isinstance(shuffle, random.Random)
    cores = tuple(
        tuple(HOST_CPUS[(n + i) % len(HOST_CPUS)] for i in range(rpn * cpr)) for n in range(nodes)
    )
    gpus = tuple(tuple(shuffle.sample(range(16), rpn * gpr)) for _ in range(nodes)) if gpr else ()
    placement = Placement(
        "t", "b", tuple(f"n{n}" for n in range(nodes)), rpn, cpr, gpr, cores=cores, gpus=gpus
    )
    argv = wrapper_argv(
        placement,
        rank_env=("PMI_RANK", "MPI_LOCALRANKID"),
        pin_cpus=True,
        gpu_variable="CUDA_VISIBLE_DEVICES",
    )
    for rank in range(nodes * rpn):
        node, local = divmod(rank, rpn)
        cuda, _, _, cpus = run_rank(argv, {"PMI_RANK": str(rank), "MPI_LOCALRANKID": str(local)})
        assert cpu_set(cpus) == set(cores[node][local * cpr : (local + 1) * cpr])
        want = gpus[node][local * gpr : (local + 1) * gpr] if gpr else ()
        assert cuda == ",".join(map(str, want))


def test_a_core_the_site_forbids_keeps_the_launchers_binding_and_says_so() -> None:
    missing = max(HOST_CPUS) + 64  # no such CPU here: taskset must fail
    placement = Placement("t", "b", ("n1",), 1, cores=((missing,),))
    argv = wrapper_argv(placement, rank_env=None, pin_cpus=True, gpu_variable=None)
    done = subprocess.run(
        [*argv, "sh", "-c", "grep Cpus_allowed_list /proc/self/status | cut -f2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0  # the task still runs
    assert cpu_set(done.stdout.strip()) == set(HOST_CPUS)
    assert f"could not be pinned to CPUs {missing}" in done.stderr


def test_the_wrapper_refuses_a_malformed_call() -> None:
    done = subprocess.run(["/bin/sh", WRAPPER, "x"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 127 and "usage" in done.stderr


def test_the_wrapper_passes_arguments_through_untouched(tmp_path: Path) -> None:
    # No word splitting, globbing or expansion of the command: argv reaches execve as given.
    placement = Placement("t", "b", ("n1",), 1, gpus_per_rank=1, gpus=((0,),))
    argv = wrapper_argv(
        placement, rank_env=None, pin_cpus=False, gpu_variable="CUDA_VISIBLE_DEVICES"
    )
    tricky = ["a b", "*", "$HOME", "; rm -rf /", ""]
    done = subprocess.run(
        [*argv, "python3", "-c", "import sys; print(repr(sys.argv[1:]))", *tricky],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=True,
    )
    assert done.stdout.strip() == repr(tricky)


def test_rank_lists_are_given_once_when_every_node_has_the_same() -> None:
    assert rank_lists(((0, 1, 2, 3),) * 1000, 2, 2) == "0,1:2,3"
    assert rank_lists(((0, 1), (2, 3)), 1, 2) == "0:1;2:3"


def test_gpu_mask_tile_syntax() -> None:
    assert gpu_mask([0, 1, 5], 1) == "0,1,5"
    assert gpu_mask([0, 1, 5], 2) == "0.0,0.1,2.1"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu_vendor": "matrox"}, "gpu_vendor"),
        ({"gpu_vendor": "nvidia", "gpu_tiles": 2}, "gpu_tiles"),
        ({"gpu_vendor": "intel", "gpu_tiles": 0}, "gpu_tiles"),
        ({"gpu_vendor": "intel", "gpu_tiles": True}, "gpu_tiles"),
    ],
)
def test_bad_bindings_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Binding(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ({"gpu_vendor": "matrox"}, "gpu_vendor", "nvidia"),
        ({"gpu_vendor": "amd", "gpu_tiles": 2}, "gpu_tiles", "intel"),
        ({"gpu_vendor": "intel", "gpu_tiles": 2}, "gpu_tiles", "srun"),
    ],
)
def test_bad_gpu_configs_are_refused_at_load(
    doc: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        load_config({"provider": "slurm", "cores_per_node": 4, "gpus_per_node": 4, **doc})
    assert words in str(info.value)


def test_gpu_config_defaults_and_tile_slots() -> None:
    nvidia = load_config({"provider": "slurm", "cores_per_node": 4, "gpus_per_node": 4})
    assert nvidia.binding.gpu_variable == "CUDA_VISIBLE_DEVICES" and nvidia.gpu_slots == 4
    aurora = load_config(
        {
            "provider": "pbspro",
            "cores_per_node": 104,
            "gpus_per_node": 6,
            "gpu_vendor": "intel",
            "gpu_tiles": 2,
            "launcher": "pals",
        }
    )
    assert aurora.gpu_slots == 12 and aurora.binding.gpu_variable == "ZE_AFFINITY_MASK"
    assert load_config({"provider": "local"}).binding.gpu_vendor is None


def test_a_task_without_gpus_gets_no_wrapper_on_a_launcher_that_binds_its_cores(
    tmp_path: Path,
) -> None:
    spec = ResourceSpec(num_nodes=1, ranks_per_node=2)
    placement = Placement("t", "b", ("n1",), 2, cores=((0, 1),))
    task = MPIFunction(["./app"]).to_task("t", (), {}, spec)
    launch = build_launch(
        task,
        spec,
        placement,
        mpi_launcher=load_launcher("mpich"),
        cores_per_node=4,
        sandbox=tmp_path,
        # The batch job's GPU variables name the whole job's GPUs: never a task's.
        base_env=clean_base_env({"CUDA_VISIBLE_DEVICES": "0,1,2,3", "ZE_AFFINITY_MASK": "0"}),
        binding=Binding(gpu_vendor="nvidia"),
    )
    assert WRAPPER not in launch.argv
    assert "CUDA_VISIBLE_DEVICES" not in launch.env and "ZE_AFFINITY_MASK" not in launch.env
