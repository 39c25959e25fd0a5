"""The real multi-node Slurm cluster from ci/slurm-docker, checked from the outside.

The cluster is started by `bash ci/slurm-docker/start.sh` (one host, one slurmd per node) and
found through SLURM_CONF: from the environment, else from <repo>/.state/slurm/env.sh. Every
Slurm command runs with a subprocess timeout and a unique job name that is cancelled afterwards,
so a broken cluster fails a test instead of hanging it or leaving jobs behind.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, require

CI_DIR = REPO / "ci" / "slurm-docker"
START_HINT = "start it with: bash ci/slurm-docker/start.sh (stop: bash ci/slurm-docker/stop.sh)"
TIMEOUT = 60.0

MPI_HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rank, size, sum;
    char host[256];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    gethostname(host, sizeof host);
    printf("rank %d size %d sum %d host %s\n", rank, size, sum, host);
    MPI_Finalize();
    return 0;
}
"""


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its slurm.conf and what that file declares."""

    conf: Path
    nodes: tuple[str, ...]
    cpus: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}


def state_dir() -> Path:
    return Path(os.environ.get("MPIENGINE_SLURM_DIR", REPO / ".state" / "slurm"))


def find_conf() -> Path | None:
    """SLURM_CONF from the environment, else the export line start.sh wrote to env.sh."""
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    env_sh = state_dir() / "env.sh"
    if not env_sh.is_file():
        return None
    for line in env_sh.read_text().splitlines():
        if line.startswith("export SLURM_CONF="):
            return Path(shlex.split(line.removeprefix("export SLURM_CONF="))[0])
    return None


def parse_conf(text: str) -> tuple[dict[str, str], list[dict[str, str]], list[dict[str, str]]]:
    """Top-level settings, NodeName lines and PartitionName lines of a slurm.conf."""
    settings: dict[str, str] = {}
    nodes: list[dict[str, str]] = []
    partitions: list[dict[str, str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = dict(field.split("=", 1) for field in line.split())
        if "NodeName" in fields:
            nodes.append(fields)
        elif "PartitionName" in fields:
            partitions.append(fields)
        else:
            settings.update(fields)
    return settings, nodes, partitions


def slurm_answers(conf: Path) -> bool:
    if shutil.which("sinfo") is None or not conf.is_file():
        return False
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        done = subprocess.run(["sinfo", "-h"], env=env, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """The running cluster; fails under CI=true, skips otherwise, when it is not there."""
    conf = find_conf()
    require(conf is not None and slurm_answers(conf), "the Slurm CI cluster", START_HINT)
    assert conf is not None
    _, nodes, _ = parse_conf(conf.read_text())
    return Cluster(conf, tuple(n["NodeName"] for n in nodes), int(nodes[0]["CPUs"]))


@pytest.fixture
def job_name(cluster: Cluster) -> Iterator[str]:
    """A unique job name; every job carrying it is cancelled when the test ends."""
    name = f"mpiengine-test-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(
        ["scancel", f"--name={name}"], env=cluster.env(), capture_output=True, timeout=TIMEOUT
    )


def run(cluster: Cluster, args: list[str], cwd: Path | None = None) -> str:
    """Run a Slurm client command against the cluster; its stdout, or a failed test."""
    try:
        done = subprocess.run(
            args, env=cluster.env(), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args} did not finish within {TIMEOUT} s: {exc.stderr!r}")
    assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stderr}"
    return done.stdout


def node_states(cluster: Cluster) -> dict[str, str]:
    out = run(cluster, ["sinfo", "-h", "-N", "-o", "%N %T"])
    return dict(line.split() for line in out.splitlines() if line.strip())


@pytest.mark.slurm
def test_all_nodes_idle(cluster: Cluster) -> None:
    """sinfo lists every configured node, each idle (jobs of earlier tests may still finish)."""
    deadline = time.monotonic() + 15
    states = node_states(cluster)
    while set(states.values()) != {"idle"} and time.monotonic() < deadline:
        time.sleep(0.2)
        states = node_states(cluster)
    assert sorted(states) == sorted(cluster.nodes)
    assert len(cluster.nodes) >= 4
    assert set(states.values()) == {"idle"}, states


@pytest.mark.slurm
def test_srun_two_nodes_distinct_hostnames(cluster: Cluster, job_name: str) -> None:
    """Each slurmd runs in its own UTS namespace: `hostname` prints the Slurm node name."""
    out = run(cluster, ["srun", f"--job-name={job_name}", "-N2", "-n2", "hostname"])
    names = out.split()
    assert len(names) == 2
    assert len(set(names)) == 2
    assert set(names) <= set(cluster.nodes)


@pytest.mark.slurm
def test_sbatch_job_sees_its_nodelist(cluster: Cluster, job_name: str, tmp_path: Path) -> None:
    out_file = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        'echo "NODELIST=$SLURM_JOB_NODELIST NNODES=$SLURM_NNODES"\n'
        'scontrol show hostnames "$SLURM_JOB_NODELIST"\n'
    )
    job_id = run(
        cluster,
        [
            "sbatch",
            "--parsable",
            f"--job-name={job_name}",
            "-N2",
            f"--output={out_file}",
            str(script),
        ],
    ).strip()
    deadline = time.monotonic() + TIMEOUT
    while run(cluster, ["squeue", "-h", "-j", job_id]).strip():
        assert time.monotonic() < deadline, f"batch job {job_id} still queued or running"
        time.sleep(0.2)
    lines = out_file.read_text().splitlines()
    match = re.fullmatch(r"NODELIST=(\S+) NNODES=2", lines[0])
    assert match, lines
    hosts = lines[1:]
    assert len(hosts) == 2
    assert set(hosts) <= set(cluster.nodes)


@pytest.mark.slurm
def test_exclusive_steps_run_on_disjoint_nodes(
    cluster: Cluster, job_name: str, tmp_path: Path
) -> None:
    """Two whole-node steps in one 4-node allocation: disjoint nodes, at the same time.

    The allocation takes whole nodes (salloc --exclusive: without it CR_Core grants one CPU a
    node and a -c step is refused). In 22.05 a step's --exclusive reserves only the CPUs it asks
    for, so each step asks for all CPUs of its nodes (-c).
    """
    step = (
        f"srun -N2 -n2 -c{cluster.cpus} --exclusive "
        "bash -c 'echo $(hostname) $(date +%s.%N); sleep 2; echo end $(date +%s.%N)'"
    )
    # `wait PID` per step, so a step that fails fails the allocation's command.
    inner = f"{step} > {tmp_path}/a & a=$!; {step} > {tmp_path}/b & b=$!; wait $a && wait $b"
    run(cluster, ["salloc", f"--job-name={job_name}", "-N4", "--exclusive", "bash", "-c", inner])
    spans = {}
    for name in ("a", "b"):
        lines = (tmp_path / name).read_text().split("\n")
        starts = [ln.split() for ln in lines if ln and not ln.startswith("end ")]
        ends = [float(ln.split()[1]) for ln in lines if ln.startswith("end ")]
        assert len(starts) == 2 and len(ends) == 2, lines
        spans[name] = (
            {host for host, _ in starts},
            min(float(t) for _, t in starts),
            max(ends),
        )
    (hosts_a, start_a, end_a), (hosts_b, start_b, end_b) = spans["a"], spans["b"]
    assert len(hosts_a) == 2 and len(hosts_b) == 2
    assert not hosts_a & hosts_b, spans
    assert start_a < end_b and start_b < end_a, f"steps did not overlap: {spans}"


@pytest.mark.slurm
def test_mpich_pmi2_across_two_nodes(cluster: Cluster, job_name: str, tmp_path: Path) -> None:
    """Debian MPICH launched by srun --mpi=pmi2: 2 nodes x 2 ranks form one world of 4."""
    mpicc = shutil.which("mpicc.mpich")
    require(mpicc is not None, "Debian MPICH (mpicc.mpich)", START_HINT + ", which installs it")
    assert mpicc is not None
    (tmp_path / "hello.c").write_text(MPI_HELLO_C)
    subprocess.run([mpicc, "-o", "hello", "hello.c"], cwd=tmp_path, check=True, timeout=TIMEOUT)
    out = run(
        cluster,
        [
            "srun",
            f"--job-name={job_name}",
            "--mpi=pmi2",
            "-N2",
            "-n4",
            "--ntasks-per-node=2",
            "./hello",
        ],
        cwd=tmp_path,
    )
    ranks = [line.split() for line in out.splitlines() if line.startswith("rank ")]
    assert sorted(int(r[1]) for r in ranks) == [0, 1, 2, 3], out
    assert {r[3] for r in ranks} == {"4"}, out
    assert {r[5] for r in ranks} == {"6"}, out
    hosts = {r[7] for r in ranks}
    assert len(hosts) == 2 and hosts <= set(cluster.nodes), out


def render_conf(mode: str, env: dict[str, str], tmp_path: Path, *extra: str) -> str:
    args = ["bash", str(CI_DIR / "gen-slurm-conf.sh"), "--mode", mode, "--state", str(tmp_path)]
    args += ["--nodes", env["SLURM_NODES"], "--cpus", env["SLURM_CPUS"]]
    args += ["--gpu-nodes", env["SLURM_GPU_NODES"], "--gpu-cpus", env["SLURM_GPU_CPUS"]]
    args += ["--gpus", env["SLURM_GPUS"], *extra]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=TIMEOUT).stdout


def test_compose_matches_slurm_conf(tmp_path: Path) -> None:
    """docker-compose.yml and the slurm.conf both layouts render agree (no cluster needed)."""
    compose = yaml.safe_load((CI_DIR / "docker-compose.yml").read_text())
    services = compose["services"]
    env = services["slurmctld"]["environment"]
    n_nodes, cpus = int(env["SLURM_NODES"]), int(env["SLURM_CPUS"])
    gpu_nodes, gpu_cpus = int(env["SLURM_GPU_NODES"]), int(env["SLURM_GPU_CPUS"])
    docker_settings, docker_nodes, docker_parts = parse_conf(render_conf("docker", env, tmp_path))
    host_settings, host_nodes, host_parts = parse_conf(render_conf("host", env, tmp_path))

    ctld = services["slurmctld"]
    assert docker_settings["SlurmctldHost"] == f"{ctld['hostname']}({ctld['hostname']})"
    assert docker_settings["SlurmctldPort"] in ctld["expose"]
    node_services = sorted(name for name in services if re.fullmatch(r"node\d+", name))
    assert node_services == sorted(n["NodeName"] for n in docker_nodes)
    for node in docker_nodes:
        service = services[node["NodeName"]]
        assert service["hostname"] == node["NodeHostname"] == node["NodeAddr"]
        assert service["command"] == ["slurmd"]
        assert node["Port"] in service["expose"]
        is_gpu_node = int(node["NodeName"].removeprefix("node")) > n_nodes
        assert int(node["CPUs"]) == (gpu_cpus if is_gpu_node else cpus)
        assert node.get("Gres") == (f"gpu:{env['SLURM_GPUS']}" if is_gpu_node else None)
        assert service["environment"] == env
        assert "munge-key:/etc/munge" in service["volumes"]

    # Both layouts: same nodes, ports, CPUs, partition and settings, apart from paths/addresses.
    def shape(nodes: list[dict[str, str]]) -> list[tuple[str, ...]]:
        keys = ("NodeName", "Port", "CPUs", "CoresPerSocket", "ThreadsPerCore", "Gres")
        return [tuple(n.get(k, "") for k in keys) for n in nodes]

    assert shape(docker_nodes) == shape(host_nodes)
    assert docker_parts == host_parts
    assert docker_parts[0]["Default"] == "YES"
    assert docker_parts[0]["Nodes"] == f"node[1-{n_nodes}]"
    assert len(docker_nodes) == n_nodes + gpu_nodes
    assert [p["PartitionName"] for p in docker_parts][1:] == (["gpu"] if gpu_nodes else [])
    # gres.conf: the same GPU node(s) in both layouts, on each layout's own device paths.
    gres = {m: render_conf(m, env, tmp_path, "--gres-conf") for m in ("docker", "host")}
    assert f"File={tmp_path}/dev/gpu[0-" in gres["host"]
    docker_gres = gres["docker"].replace("/dev/fakegpu/", f"{tmp_path}/dev/")
    assert docker_gres.replace("(mode docker)", "(mode host)") == gres["host"]
    location_keys = {"SlurmctldHost", "AuthInfo"}
    for key in docker_settings.keys() | host_settings.keys():
        value = docker_settings.get(key)
        if key in location_keys or (value or "").startswith("/"):
            continue
        assert value == host_settings.get(key), key
    dockerfile = (CI_DIR / "Dockerfile").read_text()
    assert "gen-slurm-conf.sh" in dockerfile and "slurm.conf.in" in dockerfile
