"""Turn what the runner saw (a Completion) into the task's ResultMessage.

The Completion's run record goes on as it is, with where it ran (nodes, ranks, block) added.

The endpoint never unpickles user data: a Python task's value and exception travel as the bytes
the task's own process wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpiengine.placement import Placement
from mpiengine.runner.process import Completion
from mpiengine.runner.pyoutcome import read_python_outcome
from mpiengine.staging import read_report
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage

__all__ = ["result_from_completion", "result_without_run"]


def _state(done: Completion) -> TaskState:
    if done.error:
        return TaskState.FAILED
    if done.cancelled:
        return TaskState.CANCELLED
    if done.timed_out:
        return TaskState.TIMEOUT
    if done.hung:
        return TaskState.HUNG
    return TaskState.COMPLETED


def result_from_completion(
    task: TaskMessage,
    placement: Placement,
    done: Completion,
    *,
    job_id: str = "",
    attempts: int = 1,
) -> ResultMessage:
    """The result of a task that was started (it may have failed, timed out or been killed)."""
    state = _state(done)
    fields: dict[str, Any] = {}
    if done.error:
        fields.update(error_type="LaunchError", error_message=done.error)
    elif task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON) and state is TaskState.COMPLETED:
        py = read_python_outcome(Path(done.sandbox))
        if py.value is not None:
            fields["value"] = py.value
        elif py.error_type:
            state = TaskState.FAILED
            fields.update(
                error_type=py.error_type,
                error_message=py.error_message,
                error_traceback=py.error_traceback,
                error_payload=py.error_payload,
            )
        else:
            state = TaskState.FAILED
            fields.update(
                error_type="TaskFailed",
                error_message=(
                    f"Python task exited with code {done.returncode} without a result "
                    "(crashed or killed); see stderr"
                ),
            )
    elif state is TaskState.TIMEOUT:
        fields.update(
            error_type="TaskTimeout",
            error_message=f"walltime of {placement.walltime} s expired; process tree killed",
        )
    elif state is TaskState.HUNG:
        fields.update(
            error_type="TaskHung",
            error_message=(
                f"no output on stdout or stderr for {task.spec.get('progress_timeout')} s "
                "(progress_timeout); taken as hung and process tree killed"
            ),
        )
    if task.staging and done.sandbox and not done.error:
        report = read_report(Path(done.sandbox))
        if report is not None:
            fields["staging"] = report
            if report.get("error") and state is TaskState.COMPLETED:
                state = TaskState.FAILED
                fields.update(error_type="StagingError", error_message=str(report["error"]))
    run = done.run_fields()
    run.update(
        nodes=placement.nodes,
        num_ranks=placement.num_ranks if task.kind in (TaskKind.MPI, TaskKind.MPI_PYTHON) else 1,
        block_id=placement.block_id,
        job_id=job_id,
    )
    return ResultMessage(task.task_id, state, **run, attempts=attempts, **fields)


def result_without_run(
    task_id: str, state: TaskState, error_type: str, message: str, **extra: object
) -> ResultMessage:
    """The result of a task that never started (refused, cancelled while queued, lost)."""
    return ResultMessage(
        task_id=task_id,
        state=state,
        error_type=error_type,
        error_message=message,
        **extra,  # type: ignore[arg-type]
    )
