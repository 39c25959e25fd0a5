"""Every error class pickles with its data (so it can come back from a Python task)."""

from __future__ import annotations

import pickle

import dill
import pytest

from mpiengine_sdk import errors

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
