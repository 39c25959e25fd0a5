"""Every slip a new user makes gets a precise error at submit (issue 13, item 6)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import mpiengine_sdk.functions as functions_module
from mpiengine.cli import main
from mpiengine.cli.endpoint import endpoint
from mpiengine.runner.pyoutcome import read_python_outcome
from mpiengine_sdk import (
    ArgumentError,
    Executor,
    MPIFunction,
    MPIPythonFunction,
    ResourceSpec,
    ShellFunction,
    TemplateError,
)
from mpiengine_sdk.wire import TaskMessage

README = Path(__file__).resolve().parents[2] / "README.md"


class RecordingBackend:
    """Accepts tasks and keeps them; never runs anything."""

    def __init__(self) -> None:
        self.tasks: list[TaskMessage] = []

    def start(self, sink):
        self.sink = sink

    def submit(self, tasks):
        self.tasks.extend(tasks)

    def cancel(self, task_id):
        pass

    def shutdown(self, wait=True):
        pass


def scale(x, factor=2):
    return x * factor


def test_a_misspelt_submit_option_is_refused_at_submit_naming_the_option():
    backend = RecordingBackend()
    ex = Executor(backend=backend)
    with pytest.raises(ArgumentError) as info:
        ex.submit(scale, 1, resource_specs=ResourceSpec(num_nodes=1))
    assert str(info.value) == (
        "scale(x, factor=2) cannot be called with these arguments: got an unexpected keyword "
        "argument 'resource_specs'; did you mean resource_spec=, the submit option, "
        "for resource_specs=?"
    )
    assert backend.tasks == []  # nothing was sent


def test_wrong_python_arguments_are_refused_at_submit_with_the_signature():
    ex = Executor(backend=RecordingBackend())
    with pytest.raises(ArgumentError, match=re.escape("scale(x, factor=2) cannot be called")):
        ex.submit(scale)
    with pytest.raises(ArgumentError, match=r"did you mean factor= for facter=\?"):
        ex.submit(scale, 1, facter=3)
    ex.submit(scale, 1, factor=3)  # a call that fits is accepted


def test_an_mpi_python_function_is_checked_with_comm_first():
    ex = Executor(backend=RecordingBackend())

    def reduce(comm, x):
        return x

    with pytest.raises(ArgumentError, match=r"\(the endpoint passes comm first\)"):
        ex.submit(MPIPythonFunction(reduce), 1, 2)
    ex.submit(MPIPythonFunction(reduce), 1)


def test_a_misspelt_template_value_is_named_with_the_closest_placeholder():
    ex = Executor(backend=RecordingBackend())
    with pytest.raises(TemplateError) as info:
        ex.submit(ShellFunction("echo {name}"), nmae="x")
    assert str(info.value) == (
        "no value for placeholder(s) ['name']; pass them as keyword arguments (the template "
        "uses ['name']); value(s) ['nmae'] are not used by the template; did you mean {name} "
        "for 'nmae'?"
    )
    with pytest.raises(TemplateError, match=r"did you mean \{steps\} for 'step'\?"):
        ex.submit(ShellFunction("echo {name} {steps}"), name="a", steps=1, step=2)


def test_the_documented_mpi_function_example_is_accepted():
    ex = Executor(backend=RecordingBackend())
    for doc in (MPIFunction.__doc__ or "", functions_module.__doc__ or ""):
        assert '["./solver", "--steps", "{steps}"]' not in doc
        assert 'MPIFunction("./solver --steps {steps}")' in doc
    future = ex.submit(MPIFunction("./solver --steps {steps}"), steps=100)
    assert ex.backend.tasks[-1].script == "./solver --steps 100"  # type: ignore[attr-defined]
    assert future.task_id == ex.backend.tasks[-1].task_id  # type: ignore[attr-defined]
    ex.submit(MPIFunction(["./solver", "--steps", "100"]))
    assert ex.backend.tasks[-1].argv == ("./solver", "--steps", "100")  # type: ignore[attr-defined]


def test_mpiengine_run_names_its_own_knob_for_an_oversize_task():
    result = CliRunner().invoke(main, ["run", "--virtual-nodes", "2", "--nodes", "3", "--", "true"])
    assert result.exit_code == 1
    assert "(--virtual-nodes N)" in result.output
    assert "nodes_per_block" not in result.output


def test_the_readme_says_batch_blocks_need_the_providers_extra():
    text = README.read_text()
    batch = text[text.index("## Slurm, PBS or local blocks") :]
    first_paragraph = batch.split("\n\n")[1]
    assert "'.[mpi,providers]'" in first_paragraph
    assert "mpiengine[providers]" in first_paragraph


def test_endpoint_configure_refuses_a_config_path_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path / "home"))
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(
        endpoint, ["configure", "ep1", "--backend", "batch", "--option", f"config={missing}"]
    )
    assert result.exit_code == 2
    assert f"config={missing}: no such file" in result.output
    present = tmp_path / "ep.yaml"
    present.write_text("provider: local\n")
    result = CliRunner().invoke(
        endpoint, ["configure", "ep1", "--backend", "batch", "--option", f"config={present}"]
    )
    assert result.exit_code == 0, result.output


def test_a_python_result_over_the_payload_limit_is_not_read(tmp_path):
    (tmp_path / "value.dill").write_bytes(b"x" * 101)
    outcome = read_python_outcome(tmp_path, max_bytes=100)
    assert outcome.value is None
    assert outcome.error_type == "TaskFailed"
    assert outcome.error_message == (
        "the task's result (value.dill) is 101 bytes, over the payload limit of 100 bytes; "
        "return a smaller value, or write the data to a file and return its path"
    )
    assert read_python_outcome(tmp_path, max_bytes=101).value == b"x" * 101


def test_the_embedded_executor_names_its_own_knob_for_an_oversize_task(tmp_path):
    from mpiengine_sdk import TaskTooLarge

    with Executor(nodes=2, workdir=tmp_path) as ex:
        with pytest.raises(TaskTooLarge) as info:
            ex.submit(ShellFunction("true"), resource_spec=ResourceSpec(num_nodes=3))
    assert str(info.value).endswith(
        "ask for fewer nodes/cores/GPUs or configure larger blocks (the embedded endpoint's "
        "size: Executor(nodes=N, cores_per_node=C), or endpoint configure NAME --nodes N)"
    )


def test_a_task_too_large_keeps_its_knob_across_the_wire():
    from mpiengine_sdk import TaskTooLarge
    from mpiengine_sdk.errors import error_record
    from mpiengine_sdk.results import unpack_result
    from mpiengine_sdk.wire import TaskKind, decode_result, encode_result, error_result

    for knob in ("nodes_per_block", "Executor(nodes=N, cores_per_node=C)"):
        sent = TaskTooLarge("3 nodes x 1 cores x 0 gpus", "2 nodes x 4 cores x 0 gpus", knob)
        msg = decode_result(encode_result(error_result("t", error_record(sent))))
        with pytest.raises(TaskTooLarge) as info:
            unpack_result(TaskKind.SHELL, msg)
        assert info.value.knob == knob
        assert str(info.value) == str(sent)
