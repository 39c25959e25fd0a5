"""The ``mpiengine`` command as a whole: ``python -m mpiengine``, its groups, its one error
mapper, cheap startup, and the endpoint config's renamed keys (``engine`` -> ``backend``)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from mpiengine.cli import main
from mpiengine.cli.errors import cli_errors
from mpiengine.service.config import load_service_config
from mpiengine_sdk.errors import ConfigError, TaskTooLarge

GROUPS = ("agent", "demo", "endpoint", "gc", "relay", "run", "sites", "timeline")


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_python_m_mpiengine_help_lists_the_command_groups() -> None:
    done = _python("-m", "mpiengine", "--help")
    assert done.returncode == 0, done.stderr
    commands = done.stdout.split("Commands:")[1].split()
    for name in GROUPS:
        assert name in commands
    assert set(GROUPS) == set(main.commands)


def test_python_m_mpiengine_runs_a_group_and_the_agent_alias_still_works() -> None:
    done = _python("-m", "mpiengine", "endpoint", "start", "--help")
    assert done.returncode == 0 and "--detach" in done.stdout, done.stderr
    old = _python("-m", "mpiengine.agent", "--help")  # job scripts of blocks submitted before
    assert old.returncode == 0 and "--token-file" in old.stdout, old.stderr


def test_importing_the_cli_imports_no_command_s_library() -> None:
    code = (
        "import sys, mpiengine.cli\n"
        "heavy = ('mpiengine_sdk', 'mpiengine.agent.agent', 'mpiengine.service', "
        "'mpiengine.relay', 'yaml', 'zmq', 'pika')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _command(error: Exception, **options: bool) -> click.Command:
    @click.command()
    def fails() -> None:
        with cli_errors(**options):
            raise error

    return fails


def test_the_error_mapper_reports_the_project_s_errors_with_their_message() -> None:
    result = CliRunner().invoke(_command(ConfigError("prefetch", "must be positive")))
    assert result.exit_code == 1
    assert result.output == "Error: prefetch: must be positive\n"
    assert isinstance(result.exception, SystemExit)


def test_the_error_mapper_names_virtual_nodes_for_the_embedded_endpoint() -> None:
    too_large = TaskTooLarge("3 nodes", "2 nodes")
    plain = CliRunner().invoke(_command(too_large))
    assert plain.exit_code == 1 and "--virtual-nodes" not in plain.output
    embedded = CliRunner().invoke(_command(too_large, embedded=True))
    assert embedded.exit_code == 1
    assert "task needs 3 nodes, but the largest block is 2 nodes" in embedded.output
    assert "--virtual-nodes N" in embedded.output


def test_the_error_mapper_lets_click_s_errors_and_bugs_through() -> None:
    usage = CliRunner().invoke(_command(click.UsageError("name one")))
    assert usage.exit_code == 2 and "Error: name one" in usage.output
    bug = CliRunner().invoke(_command(KeyError("x")))
    assert bug.exit_code == 1 and isinstance(bug.exception, KeyError)


def test_an_old_engine_key_loads_with_a_deprecation_naming_the_new_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "endpoint.yaml"
    path.write_text("user: u\nengine: 'null'\nengine_options:\n  nodes: 2\n")
    with caplog.at_level(logging.WARNING, logger="mpiengine.service.config"):
        config = load_service_config(path)
        again = load_service_config(path)
    assert config == again
    assert config.backend == "null" and config.backend_options == {"nodes": 2}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per key, not once per load
    assert "'engine' is deprecated, rename it 'backend'" in messages[0]
    assert "'engine_options' is deprecated, rename it 'backend_options'" in messages[1]
    assert all(str(path) in m for m in messages)


def test_old_and_new_key_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "endpoint.yaml"
    path.write_text("engine: batch\nbackend: embedded\n")
    with pytest.raises(ConfigError, match="'engine' is the old name of 'backend'"):
        load_service_config(path)


def test_configure_rewrites_old_keys_and_still_takes_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path))
    (tmp_path / "ep").mkdir()
    (tmp_path / "ep" / "endpoint.yaml").write_text("engine: batch\nengine_options: {nodes: 2}\n")
    result = CliRunner().invoke(main, ["endpoint", "configure", "ep", "--engine", "embedded"])
    assert result.exit_code == 0, result.output
    assert "--engine is deprecated; use --backend" in result.output
    doc = yaml.safe_load((tmp_path / "ep" / "endpoint.yaml").read_text())
    assert doc["backend"] == "embedded" and doc["backend_options"] == {"nodes": 2}
    assert "engine" not in doc and "engine_options" not in doc
    both = ["endpoint", "configure", "ep", "--engine", "null", "--backend", "batch"]
    assert CliRunner().invoke(main, both).exit_code == 2
