"""Agent pieces: node discovery, srun step naming and cleanup, the protocol, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiengine.agent.nodes import detect_scheduler, discover_nodes, local_cpus, read_nodefile
from mpiengine.agent.protocol import (
    ProtocolError,
    completion_from_dict,
    completion_to_dict,
    decode,
    launch_from_dict,
    launch_to_dict,
)
from mpiengine.agent.steps import SrunSteps, step_name
from mpiengine.cli.agent import agent
from mpiengine.runner.launch import LaunchSpec
from mpiengine_sdk.errors import BackendError
from tests.support.records import completion


def test_pbs_nodefile_is_deduplicated_in_order(tmp_path: Path) -> None:
    nodefile = tmp_path / "nodes"
    nodefile.write_text("a\na\nb\nb\na\nc\n\n")
    assert read_nodefile(nodefile) == ("a", "b", "c")
    env = {"PBS_NODEFILE": str(nodefile)}
    assert detect_scheduler(env) == "pbs"
    assert discover_nodes(env) == ("a", "b", "c")


def test_slurm_nodes_come_from_scontrol_with_the_lead_node_first() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return "node2\nnode3\nnode4\n"

    env = {"SLURM_JOB_NODELIST": "node[2-4]", "SLURMD_NODENAME": "node3"}
    assert discover_nodes(env, run=run) == ("node3", "node2", "node4")
    assert calls == [["scontrol", "show", "hostnames", "node[2-4]"]]


def test_local_nodes_and_cpus() -> None:
    assert detect_scheduler({}) == "local"
    assert len(discover_nodes({})) == 1
    assert local_cpus({"SLURM_CPUS_ON_NODE": "4"}) == 4
    assert local_cpus({}) >= 1


def test_a_missing_nodefile_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot discover"):
        discover_nodes({"PBS_NODEFILE": str(tmp_path / "missing")})


def launch(argv: tuple[str, ...]) -> LaunchSpec:
    return LaunchSpec(task_id="t1", argv=argv, env={}, sandbox=Path("/tmp"), walltime=None)


def test_srun_steps_are_named_after_their_task() -> None:
    steps = SrunSteps("42", run=lambda argv, t: (0, ""))
    tagged = steps.tag(launch(("srun", "--nodes=2", "hostname")))
    assert tagged.argv == ("srun", "--job-name=mpiengine.t1", "--nodes=2", "hostname")
    assert steps.tag(launch(("mpiexec", "-n", "2"))).argv == ("mpiexec", "-n", "2")
    assert SrunSteps(None).tag(launch(("srun", "x"))).argv == ("srun", "x")


def test_leftover_steps_are_cancelled_and_waited_for() -> None:
    listing = [f"42.0 {step_name('t1')}\n42.1 {step_name('other')}\n42.batch batch\n", ""]
    calls: list[list[str]] = []

    def run(argv: list[str], timeout: float) -> tuple[int, str]:
        calls.append(argv)
        if argv[0] == "squeue":
            return 0, listing.pop(0) if listing else ""
        return 0, ""

    assert SrunSteps("42", run=run).cancel("t1") == ["42.0"]
    assert ["scancel", "42.0"] in calls
    assert calls[0][:3] == ["squeue", "--noheader", "--steps"]


def test_protocol_round_trips_launches_and_completions() -> None:
    spec = LaunchSpec(
        task_id="t",
        argv=("a", "b"),
        env={"X": "1"},
        sandbox=Path("/tmp/s"),
        walltime=2.5,
        snippet_lines=7,
        files={"task.dill": b"\x00\xffbytes"},
    )
    assert launch_from_dict(launch_to_dict(spec)) == spec
    done = completion(cancelled=True)
    assert completion_from_dict(completion_to_dict(done)) == done
    with pytest.raises(ProtocolError):
        decode(b"[1]")
    with pytest.raises(ProtocolError):
        launch_from_dict({"task_id": "t"})


def test_the_cli_needs_a_token() -> None:
    result = CliRunner().invoke(agent, ["--connect", "tcp://127.0.0.1:1", "--block-id", "b"])
    assert result.exit_code != 0 and "--token" in result.output
    assert "grace" in CliRunner().invoke(agent, ["--help"]).output


def test_the_main_cli_mounts_the_agent_command() -> None:
    from mpiengine.cli import main

    result = CliRunner().invoke(main, ["agent", "--help"])
    assert result.exit_code == 0 and "--token-file" in result.output
