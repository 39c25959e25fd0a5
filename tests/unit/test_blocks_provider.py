"""The provider seam: Parsl's real SlurmProvider/PBSProProvider code against a fake batch system.

The fake is the command runner that Parsl's ``execute_wait`` goes through: it records every
command line and answers as sbatch/squeue/scancel would, or fails as they do.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mpiengine.blocks.provider import ProviderFailure, make_provider, survive_node_failure
from mpiengine.config import load_config


class FakeSlurm:
    """Answers sbatch/squeue/scancel command lines; set ``fail`` to make one of them fail."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.next_id = 100
        self.states: dict[str, str] = {}
        self.fail: dict[str, tuple[int, str]] = {}

    def __call__(self, cmd: str, timeout: int | None) -> tuple[int, str, str]:
        self.commands.append(cmd)
        word = cmd.split()[0]
        if word in self.fail:
            code, err = self.fail[word]
            return code, "", err
        if word == "sacct":
            return 1, "", "Slurm accounting storage is disabled"
        if word in ("sbatch", "qsub"):
            self.next_id += 1
            job = str(self.next_id)
            self.states[job] = "PD"
            out = f"Submitted batch job {job}\n" if word == "sbatch" else f"{job}.server\n"
            return 0, out, ""
        if word == "squeue":
            lines = [f"{j} {s}" for j, s in self.states.items() if s is not None]
            return 0, "\n".join(lines) + "\n", ""
        if word == "scancel":
            for job in cmd.split()[1:]:
                self.states.pop(job, None)
            return 0, "", ""
        return 127, "", f"{word}: not found"


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


def config(**extra):
    base = {
        "cores_per_node": 4,
        "nodes_per_block": 2,
        "max_blocks": 2,
        "walltime": "00:05:00",
        "partition": "debug",
        "account": "proj",
        "scheduler_options": "#SBATCH --comment=hello",
        "worker_init": "echo init-from-config",
    }
    return load_config(base | extra)


def test_submit_writes_a_slurm_script_with_the_config_and_returns_the_job_id(
    slurm: FakeSlurm, tmp_path: Path
) -> None:
    provider = make_provider(config(), runner=slurm, worker_init="export A=1")
    job = provider.submit("mpiengine agent --block-id=b1", tmp_path / "b1", "mpiengine.b1")
    assert job == "101"
    sbatch = [c for c in slurm.commands if c.startswith("sbatch")]
    assert len(sbatch) == 1
    script = Path(sbatch[0].split()[1])
    assert script.parent == tmp_path / "b1"
    text = script.read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --time=5",
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj",
        "#SBATCH --comment=hello",
        "export A=1",
        "echo init-from-config",
        "mpiengine agent --block-id=b1",
    ):
        assert line in text, line
    assert text.index("export A=1") < text.index("echo init-from-config")
    assert text.index("echo init-from-config") < text.index("mpiengine agent")
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_status_maps_slurm_states_and_missing_jobs_to_parsl_states(
    slurm: FakeSlurm, tmp_path: Path
) -> None:
    provider = make_provider(config(), runner=slurm)
    a = provider.submit("true", tmp_path, "a")
    b = provider.submit("true", tmp_path, "b")
    slurm.states[a] = "R"
    del slurm.states[b]  # squeue no longer lists a finished job
    views = provider.status([a, b])
    assert views[a].state == "RUNNING" and not views[a].terminal
    assert views[b].state == "COMPLETED" and views[b].terminal


def test_a_refused_sbatch_raises_provider_failure_with_the_command_and_stderr(
    slurm: FakeSlurm, tmp_path: Path
) -> None:
    provider = make_provider(config(), runner=slurm)
    slurm.fail["sbatch"] = (1, "sbatch: error: invalid partition specified: debug")
    with pytest.raises(ProviderFailure) as info:
        provider.submit("true", tmp_path, "x")
    err = info.value
    assert err.operation == "submit" and err.returncode == 1
    assert "invalid partition" in err.stderr and "invalid partition" in str(err)
    assert err.command.startswith("sbatch")


def test_an_unreachable_squeue_is_an_error_not_a_silent_no_update(
    slurm: FakeSlurm, tmp_path: Path
) -> None:
    provider = make_provider(config(), runner=slurm)
    job = provider.submit("true", tmp_path, "x")
    slurm.fail["squeue"] = (1, "slurm_load_jobs error: Unable to contact slurm controller")
    with pytest.raises(ProviderFailure, match="Unable to contact"):
        provider.status([job])
    del slurm.fail["squeue"]
    assert provider.status([job])[job].state == "PENDING"


def test_a_timed_out_command_is_a_provider_failure(tmp_path: Path) -> None:
    def hang(cmd: str, timeout: int | None) -> tuple[int, str, str]:
        if cmd.startswith("sacct"):
            return 1, "", ""
        raise subprocess.TimeoutExpired(cmd, timeout or 0)

    provider = make_provider(config(), runner=hang)
    with pytest.raises(ProviderFailure, match="TimeoutExpired"):
        provider.submit("true", tmp_path, "x")


def test_cancel_runs_scancel_with_the_job_ids(slurm: FakeSlurm, tmp_path: Path) -> None:
    provider = make_provider(config(), runner=slurm)
    job = provider.submit("true", tmp_path, "x")
    provider.cancel([job])
    assert f"scancel {job}" in slurm.commands
    slurm.fail["scancel"] = (1, "scancel: error: Kill job error")
    with pytest.raises(ProviderFailure):
        provider.cancel([job])


def test_pbspro_is_configured_the_same_way(slurm: FakeSlurm, tmp_path: Path) -> None:
    cfg = config(provider="pbspro", queue="debug", partition=None)
    provider = make_provider(cfg, runner=slurm)
    assert provider.label == "pbspro"
    job = provider.submit("mpiengine agent", tmp_path, "p")
    assert job == "101.server"
    qsub = next(c for c in slurm.commands if c.startswith("qsub"))
    assert "-q debug" in qsub and "-A proj" in qsub
    text = Path(qsub.split()[-1]).read_text()
    assert "#PBS -l walltime=00:05:00" in text and "mpiengine agent" in text


def test_the_job_command_starts_the_agent_with_a_token_file_not_a_token(tmp_path: Path) -> None:
    import shlex

    from mpiengine.blocks.jobcommand import job_command

    cfg = config(heartbeat_period=1.5, agent_grace=20, max_concurrent_launches=8)
    words = shlex.split(job_command(cfg, "tcp://127.0.0.1:5555", "blk1", tmp_path / "b 1"))
    assert words[1] == "agent" or words[1:4] == ["-m", "mpiengine", "agent"]
    for opt in (
        "--connect=tcp://127.0.0.1:5555",
        "--block-id=blk1",
        f"--token-file={tmp_path / 'b 1' / 'token'}",
        "--heartbeat=1.5",
        "--grace=20",
        "--max-launches=8",
        f"--log-file={tmp_path / 'b 1' / 'agent.log'}",
    ):
        assert opt in words, opt
    assert not any(w.startswith("--token=") for w in words)
    assert job_command(config(agent_command="my-agent"), "tcp://h:1", "b", tmp_path).startswith(
        "my-agent --connect="
    )


def test_blocks_are_submitted_to_survive_a_node_failure(slurm: FakeSlurm, tmp_path: Path) -> None:
    provider = make_provider(config(), runner=slurm)
    provider.submit("mpiengine agent", tmp_path / "s", "s")
    text = Path(next(c for c in slurm.commands if c.startswith("sbatch")).split()[1]).read_text()
    assert "#SBATCH --no-kill\n" in text and "#SBATCH --comment=hello" in text
    pbs = make_provider(config(provider="pbspro", queue="debug", partition=None), runner=slurm)
    pbs.submit("mpiengine agent", tmp_path / "p", "p")
    qsub = next(c for c in slurm.commands if c.startswith("qsub"))
    assert "#PBS -W tolerate_node_failures=all\n" in Path(qsub.split()[-1]).read_text()


@pytest.mark.parametrize(
    ("provider", "options"),
    [("slurm", "#SBATCH --no-kill=off"), ("pbspro", "#PBS -W tolerate_node_failures=none")],
)
def test_scheduler_options_that_say_otherwise_win(provider: str, options: str) -> None:
    cfg = config(provider=provider, scheduler_options=options, queue="q", partition=None)
    assert survive_node_failure(cfg) == options
