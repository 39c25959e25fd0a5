"""The wire's two records: one RunRecord from the runner to the SDK's result, and the error
record; what older senders wrote still reads."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mpiengine.agent.protocol import completion_from_dict, completion_to_dict
from mpiengine.outcome import result_from_completion
from mpiengine.placement import Placement
from mpiengine.runner.launch import Completion
from mpiengine_sdk.results import MPIResult, ShellResult, unpack_result
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import (
    ErrorRecord,
    ResultMessage,
    RunRecord,
    TaskKind,
    TaskMessage,
    WireError,
    decode_result,
    decode_task,
    encode_result,
    encode_task,
    error_result,
    run_fields_from,
)

RUN = {f.name for f in dataclasses.fields(RunRecord)}


def test_every_shape_of_a_finished_task_is_the_one_run_record() -> None:
    assert RUN == {
        "argv",
        "returncode",
        "stdout",
        "stderr",
        "stdout_path",
        "stderr_path",
        "sandbox",
        "nodes",
        "num_ranks",
        "started",
        "ended",
        "block_id",
        "job_id",
    }
    for shape in (Completion, ResultMessage, ShellResult, MPIResult):
        assert issubclass(shape, RunRecord)
        assert RUN <= {f.name for f in dataclasses.fields(shape)}


def test_the_run_goes_from_the_runner_to_the_sdk_result_unchanged() -> None:
    done = Completion(
        task_id="t1",
        argv=("srun", "-N", "2", "./a.out"),
        returncode=3,
        stdout="o\n",
        stderr="e\n",
        stdout_path="/s/stdout",
        stderr_path="/s/stderr",
        sandbox="/s",
        started=1.0,
        ended=2.5,
        timed_out=False,
        cancelled=False,
    )
    done = completion_from_dict(json.loads(json.dumps(completion_to_dict(done))))  # the agent link
    task = TaskMessage("t1", TaskKind.MPI, {}, argv=("./a.out",))
    placement = Placement(
        task_id="t1", block_id="b1", nodes=("n1", "n2"), ranks_per_node=2, walltime=60.0
    )
    msg = decode_result(encode_result(result_from_completion(task, placement, done, job_id="7")))
    result = unpack_result(TaskKind.MPI, msg)
    assert isinstance(result, MPIResult)
    where = {"nodes": ("n1", "n2"), "num_ranks": 4, "block_id": "b1", "job_id": "7"}
    assert result.run_fields() == {**done.run_fields(), **where} == msg.run_fields()
    assert (result.task_id, result.state, result.ranks_per_node) == ("t1", TaskState.COMPLETED, 2)


def test_a_result_without_error_fields_is_encoded_as_before() -> None:
    plain = json.loads(encode_result(ResultMessage("t", TaskState.FAILED, error_type="X")))
    assert "error_fields" not in plain
    record = ErrorRecord("TaskTooLarge", "too big", {"requested": "5 nodes", "largest": "4"})
    line = encode_result(error_result("t", record, nodes=("n1",)))
    assert json.loads(line)["error_fields"] == {"requested": "5 nodes", "largest": "4"}
    back = decode_result(line)
    assert back.error == record and back.nodes == ("n1",)
    assert ResultMessage("t", TaskState.COMPLETED).error is None


def test_a_result_line_an_older_endpoint_wrote_still_reads() -> None:
    old = (
        b'{"v":1,"task_id":"t","state":"completed","returncode":0,"stdout":"hi\\n","stderr":"",'
        b'"stdout_path":"/s/stdout","stderr_path":"/s/stderr","sandbox":"/s","argv":["echo"],'
        b'"nodes":["n1"],"num_ranks":1,"started":1.0,"ended":2.0,"value":"","error_type":"",'
        b'"error_message":"","error_traceback":"","error_payload":"","block_id":"b","job_id":"",'
        b'"attempts":1,"staging":{}}'
    )
    msg = decode_result(old)
    assert (msg.returncode, msg.stdout, msg.argv, msg.nodes) == (0, "hi\n", ("echo",), ("n1",))
    assert msg.error_fields == {} and msg.error is None


def test_retries_travel_in_the_spec_and_an_old_clients_retries_field_is_accepted() -> None:
    task = TaskMessage("t", TaskKind.SHELL, {"retries": 2}, argv=("true",))
    encoded = json.loads(encode_task(task))
    assert "retries" not in encoded and encoded["spec"] == {"retries": 2}
    assert decode_task(json.dumps({**encoded, "retries": 2})) == task


@pytest.mark.parametrize("bad", [{"argv": "echo"}, {"nodes": [1]}, {"argv": [None]}])
def test_run_fields_refuse_what_is_not_a_list_of_strings(bad: dict[str, object]) -> None:
    with pytest.raises(WireError):
        run_fields_from(bad)
    assert run_fields_from({"argv": ["a"], "other": 1}) == {"argv": ("a",)}


def test_error_fields_must_be_an_object() -> None:
    line = json.dumps({"v": 1, "task_id": "t", "state": "failed", "error_fields": [1]})
    with pytest.raises(WireError, match="error_fields"):
        decode_result(line)
