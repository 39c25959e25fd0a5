"""Node failures seen by the endpoint: how a launcher reports one, and the result of a task
whose retries a failed node used up.

A node fails under a running task in one of two ways the endpoint hears of: the block's agent
reports it (the batch system marked it down, drained or failing, or took it out of the job;
see ``agent.health``), or the task's own launcher says so on stderr and exits (srun prints
``srun: error: Node failure on NODE`` and, as measured on Slurm 22.05, exits 0). Either way the
engine excludes the node and retries the task elsewhere within its ``retries`` budget; this
module builds the ``NodeFailed`` result once that budget is spent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mpiengine.outcome import result_from_completion, result_without_run
from mpiengine.placement import Placement
from mpiengine.runner.launch import Completion
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, TaskMessage, replace

__all__ = ["LAUNCHER_REASON", "failed_node_in", "node_failed_message", "node_failed_result"]

#: What srun prints when a node of its step fails (the step is killed on every node).
_SRUN_NODE_FAILURE = re.compile(r"^srun: error: Node failure on (\S+)\s*$", re.MULTILINE)

#: The reason recorded for a node the launcher reported.
LAUNCHER_REASON = "the launcher reported a node failure"


def failed_node_in(stderr: str, nodes: Sequence[str]) -> str | None:
    """The first of ``nodes`` that the launcher's stderr tail reports failed, or None.

    Only nodes of the task's own placement count: a line naming any other node is the task's
    own output, not its launcher's verdict.
    """
    if "Node failure" not in stderr:  # the common case, without a regex scan
        return None
    for match in _SRUN_NODE_FAILURE.finditer(stderr):
        if match[1] in nodes:
            return match[1]
    return None


def node_failed_message(task_id: str, node: str, block_id: str, job_id: str, reason: str) -> str:
    """The NodeFailed message: what failed, and what to do.

    The SDK reads the node back from ``node NAME of block`` (see ``mpiengine_sdk.results``).
    """
    return (
        f"task {task_id}: node {node} of block {block_id} (batch job {job_id or '-'}) failed "
        f"({reason}) and the task's retries are spent; its ranks on every node were killed and "
        "the endpoint places no more tasks on that node. Resubmit the task (it runs on other "
        "nodes), or give it retries (ResourceSpec(retries=N)) so the endpoint does so itself"
    )


def node_failed_result(
    task: TaskMessage,
    placement: Placement,
    done: Completion | None,
    *,
    node: str,
    reason: str,
    job_id: str,
    attempts: int,
) -> ResultMessage:
    """The LOST result, error type NodeFailed, of a task whose node failed and whose retries
    are spent; with the tails of the killed run when its completion came (``done``)."""
    message = node_failed_message(task.task_id, node, placement.block_id, job_id, reason)
    if done is None:
        return result_without_run(
            task.task_id,
            TaskState.LOST,
            "NodeFailed",
            message,
            error_fields={"node": node},
            nodes=placement.nodes,
            block_id=placement.block_id,
            job_id=job_id,
            attempts=attempts,
        )
    ran = result_from_completion(task, placement, done, job_id=job_id, attempts=attempts)
    result: ResultMessage = replace(
        ran,
        state=TaskState.LOST,
        value=b"",
        error_type="NodeFailed",
        error_message=message,
        error_fields={"node": node},
        error_traceback="",
        error_payload=b"",
    )
    return result
