"""Every error class pickles with its data (so it can come back from a Python task), and
crosses the wire as a structured error (type, message, fields) that rebuilds it whole."""

from __future__ import annotations

import json
import pickle

import dill
import pytest

from mpiengine_sdk import errors
from mpiengine_sdk.wire import ErrorRecord

EXAMPLES: list[errors.MPIEngineError] = [
    errors.SpecError("num_nodes", 0, "an integer >= 1"),
    errors.TaskTooLarge("5 nodes x 1 cores", "4 nodes x 4 cores"),
    errors.ConfigError("blocks.max", "must be >= 1", "1, 2, ..."),
    errors.RelayError("boom", code="x"),
    errors.AuthenticationError("who are you"),
    errors.PayloadTooLarge(20, 10),
    errors.RateLimited(1.5),
    errors.TaskFailed("exit 3", task_id="t1", returncode=3, stdout="o", stderr="e"),
    errors.TaskTimeout("late", task_id="t2", returncode=124),
    errors.BlockLost("gone", task_id="t3", block_id="b1", job_id="42", nodes=["n1", "n2"]),
    errors.NodeFailed(
        "node n2 failed",
        task_id="t5",
        node="n2",
        block_id="b1",
        job_id="42",
        nodes=["n2"],
        returncode=-15,
        stdout="o",
        stderr="e",
    ),
    errors.RemoteExecutionError("ValueError", "bad", "Traceback ...", task_id="t4"),
    errors.SubmitError("no"),
    errors.TemplateError("broken"),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), (dill.dumps, dill.loads)])
def test_errors_round_trip(error, dumps, loads) -> None:
    back = loads(dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    public = {k: v for k, v in vars(error).items() if not k.startswith("_")}
    assert {k: v for k, v in vars(back).items() if not k.startswith("_")} == public


def test_every_error_class_is_listed_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} is missing from the tree in errors.py's docstring"


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_cross_the_wire_as_structured_errors(error) -> None:
    record = errors.error_record(error)
    assert record.type == type(error).__name__
    back = errors.error_from_record(ErrorRecord.from_dict(json.loads(json.dumps(record.to_dict()))))
    assert type(back) is type(error)
    assert str(back) == str(error)
    public = {k: v for k, v in vars(error).items() if not k.startswith("_")}
    assert {k: v for k, v in vars(back).items() if not k.startswith("_")} == public


def test_fields_are_what_the_constructor_took_and_no_defaults() -> None:
    assert errors.error_record(errors.TaskTooLarge("5 nodes", "4 nodes")).fields == {
        "requested": "5 nodes",
        "largest": "4 nodes",
    }
    assert errors.error_record(errors.TaskFailed("exit 3", task_id="t")) == ErrorRecord(
        "TaskFailed", "exit 3", {"task_id": "t"}
    )
    # The message without the stderr tail that str() appends; the tail is a field.
    failed = errors.TaskFailed("exit 3", stderr="boom")
    assert errors.error_record(failed).message == "exit 3"
    assert errors.error_record(errors.TemplateError("broken")).fields == {}
    assert errors.error_record(ValueError("x")) == ErrorRecord("ValueError", "x")


def test_a_value_that_is_not_json_travels_as_its_repr_with_the_same_message() -> None:
    error = errors.SpecError("launcher_options", {1, 2}, "a list")
    record = errors.error_record(error)
    assert record.fields["value"] == "{1, 2}"
    back = errors.error_from_record(ErrorRecord.from_dict(json.loads(json.dumps(record.to_dict()))))
    assert isinstance(back, errors.SpecError) and str(back) == str(error)


def test_unknown_or_unfit_records_are_not_rebuilt() -> None:
    for record in (
        ErrorRecord("ValueError", "x"),
        ErrorRecord("os.TaskFailed", "not ours"),
        ErrorRecord("TaskTooLarge", "no fields, no data"),
        ErrorRecord("RateLimited", "bad field", {"retry_after": "soon"}),
    ):
        assert errors.error_from_record(record) is None
    qualified = ErrorRecord("mpiengine_sdk.errors.TaskFailed", "x")
    assert type(errors.error_from_record(qualified)) is errors.TaskFailed


def test_context_fills_what_the_fields_do_not_carry() -> None:
    context = {"task_id": "t", "stderr": "tail", "block_id": "b", "unrelated": 1}
    lost = errors.error_from_record(ErrorRecord("BlockLost", "gone"), context)
    assert isinstance(lost, errors.BlockLost) and (lost.task_id, lost.block_id) == ("t", "b")
    record = ErrorRecord("TaskFailed", "exit 3", {"stderr": "own"})
    failed = errors.error_from_record(record, context)
    assert isinstance(failed, errors.TaskFailed) and failed.stderr == "own"


def test_the_flat_error_header_of_older_relays_still_reads() -> None:
    old = {"type": "PayloadTooLarge", "message": "m", "code": "payload_too_large", "size": 2}
    assert ErrorRecord.from_dict({**old, "limit": 1}).fields == {
        "code": "payload_too_large",
        "size": 2,
        "limit": 1,
    }
    back = errors.error_from_record(ErrorRecord.from_dict({**old, "limit": 1}))
    assert isinstance(back, errors.PayloadTooLarge) and (back.size, back.limit) == (2, 1)
