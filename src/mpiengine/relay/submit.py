"""Submissions: validate a batch, drop duplicates, forward it to the endpoint's queue.

Each task is checked on its own (wire schema, task id, resource spec, size); a refused task gets
a FAILED result naming the error, the others go on. A task id is the user's forever (while its
row lives): the same user sending it again is a duplicate (a resend after a lost confirm) and is
not run twice; another user sending it is refused.

The client's message is acknowledged only after the broker confirmed the forwarded batch, and a
task row stays PENDING until then: if the relay dies in between, the redelivered request
forwards the PENDING tasks again and the endpoint drops what it already has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mpiengine.queues import declare_endpoint_queues
from mpiengine.relay.access import authorize_endpoint
from mpiengine.relay.config import RelayConfig
from mpiengine.relay.ratelimit import RateLimiter
from mpiengine.relay.store import EXPIRED, PENDING, EndpointRecord, RelayStore
from mpiengine.taskid import validate_task_id
from mpiengine_sdk.errors import (
    AuthorizationError,
    MPIEngineError,
    PayloadTooLarge,
    RateLimited,
    RelayError,
    SubmitError,
)
from mpiengine_sdk.relayclient.protocol import Frame, encode_frame, failed_result, task_queue
from mpiengine_sdk.relayclient.transport import Channel, Unroutable
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import (
    ResultMessage,
    TaskKind,
    TaskMessage,
    WireError,
    decode_task,
    encode_result,
    encode_task,
    replace,
)

__all__ = ["SubmitHandler"]

_TASK_ID = re.compile(rb'"task_id":"([A-Za-z0-9_.-]{1,128})"')
_FORWARD_TASKS = 1000
_FORWARD_BYTES = 8 * 1024 * 1024
#: How the SDK's encoder ends a task line: ``user`` (unset) is the object's last member.
_NO_USER = b',"user":""}'


def _peek_id(line: bytes) -> str | None:
    """The task id of a line too broken or too big to decode, if it can be seen."""
    match = _TASK_ID.search(line[:400])
    return match.group(1).decode() if match else None


def _stamped(task: TaskMessage, line: bytes, user: str) -> bytes:
    """The line to forward: the task as it was checked, with ``user`` set to the sender.

    When the line ends with an unset ``user`` (what the SDK sends), only those bytes change
    instead of decoding and encoding the task again. That is exact: the last ``"`` there is a
    real string delimiter (no backslash precedes it) and the line is valid JSON, so that
    member is the object's last one, and a JSON decoder keeps the last of duplicate keys: the
    endpoint decodes the very task the relay checked, with this user. Any other line is
    encoded again from the decoded task.
    """
    if not task.user and line.endswith(_NO_USER):
        return b"".join((line[: -len(_NO_USER)], b',"user":', json.dumps(user).encode(), b"}"))
    return encode_task(replace(task, user=user))


def _check(task: TaskMessage) -> None:
    validate_task_id(task.task_id)
    ResourceSpec.from_dict(task.spec)
    if task.kind in (TaskKind.SHELL, TaskKind.MPI) and not (task.argv or task.script):
        raise SubmitError(f"task {task.task_id}: a {task.kind.value} task needs argv or script")
    if task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON) and not task.payload:
        raise SubmitError(f"task {task.task_id}: a {task.kind.value} task needs a payload")


class SubmitHandler:
    """Handles ``submit`` requests and answers ``fetch`` from the stored results."""

    def __init__(self, store: RelayStore, config: RelayConfig, limiter: RateLimiter) -> None:
        self.store = store
        self.config = config
        self.limiter = limiter

    def handle(
        self, channel: Channel, user: str, frame: Frame, reply_to: str | None
    ) -> Mapping[str, Any]:
        """Validate, deduplicate, rate-limit and forward one batch.

        Raises:
            AuthorizationError: the endpoint does not allow the user.
        """
        record = authorize_endpoint(self.store, user, frame.header.get("endpoint_id"))
        tasks, lines, refused = self._validate(frame.lines)
        new, again, pending = self._dedup(user, tasks, refused)
        principal = self.store.user(user)
        rate = principal.rate if principal and principal.rate else self.config.rate
        burst = principal.burst if principal and principal.burst else self.config.burst
        granted, retry_after = self.limiter.grant(user, len(new), rate, burst)
        if granted < len(new):
            limited = RateLimited(retry_after)
            refused.extend(failed_result(t.task_id, limited) for t in new[granted:])
            new = new[:granted]
        self.store.admit(user, record.id, reply_to or "", [(t.task_id, t.kind.value) for t in new])
        # PENDING: the relay stopped before the broker confirmed them; forward again (the
        # endpoint drops what it has). Any other state: already on its way, not run twice.
        self._forward(channel, record, user, [*new, *pending], lines)
        answers = [encode_result(r) for r in refused]
        if again and reply_to:  # a resubmitted id: this session gets its (stored) result
            answers += self.stored_results(user, [t.task_id for t in again], reply_to)[0]
        if answers and reply_to:
            body = encode_frame({"type": "results"}, answers)
            channel.publish("", reply_to, body, persistent=False, confirm=False)
        return {"accepted": len(new), "refused": len(refused)}

    def _validate(
        self, lines: Sequence[bytes]
    ) -> tuple[list[TaskMessage], dict[str, bytes], list[ResultMessage]]:
        """The valid tasks, the line of each task id's first valid copy, the refusals."""
        limit = self.config.max_payload_bytes
        tasks: list[TaskMessage] = []
        valid: dict[str, bytes] = {}
        refused: list[ResultMessage] = []
        for line in lines:
            error: MPIEngineError
            try:
                if len(line) > limit:
                    raise PayloadTooLarge(len(line), limit)
                task = decode_task(line)
                _check(task)
                tasks.append(task)
                valid.setdefault(task.task_id, line)  # _dedup keeps the first copy too
                continue
            except WireError as exc:
                error = SubmitError(f"malformed task: {exc}")
            except MPIEngineError as exc:
                error = exc
            tid = _peek_id(line)
            if tid is not None:
                refused.append(failed_result(tid, error))
        return tasks, valid, refused

    def _dedup(
        self, user: str, tasks: list[TaskMessage], refused: list[ResultMessage]
    ) -> tuple[list[TaskMessage], list[TaskMessage], list[TaskMessage]]:
        """Split into new tasks, this user's known ids, and those of them still PENDING."""
        rows = self.store.rows([t.task_id for t in tasks])
        new: list[TaskMessage] = []
        again: list[TaskMessage] = []
        seen: set[str] = set()
        for task in tasks:
            tid = task.task_id
            row = rows.get(tid)
            if tid in seen:
                continue
            seen.add(tid)
            if row is None:
                new.append(task)
            elif row.user != user:
                taken = SubmitError(f"task id {tid!r} is already taken; submit with another id")
                refused.append(failed_result(tid, taken))
            else:
                again.append(task)  # a resend, or the same id submitted again by this user
        pending = [t for t in again if rows[t.task_id].state == PENDING]
        return new, again, pending

    def _forward(
        self,
        channel: Channel,
        record: EndpointRecord,
        user: str,
        tasks: list[TaskMessage],
        lines: Mapping[str, bytes],
    ) -> None:
        queue = task_queue(record.owner, record.id)
        batch: list[bytes] = []
        size = 0
        for i, task in enumerate(tasks):
            line = _stamped(task, lines[task.task_id], user)
            batch.append(line)
            size += len(line)
            if len(batch) >= _FORWARD_TASKS or size >= _FORWARD_BYTES or i == len(tasks) - 1:
                body = encode_frame({"type": "tasks"}, batch)
                try:
                    channel.publish("", queue, body, mandatory=True)
                except Unroutable:  # created by an admin command, never registered yet
                    declare_endpoint_queues(channel, record.owner, record.id)
                    channel.publish("", queue, body, mandatory=True)
                batch, size = [], 0
        if tasks:
            self.store.mark_queued([t.task_id for t in tasks])

    def stored_results(
        self, user: str, task_ids: Sequence[str], session: str, *, report_unknown: bool = False
    ) -> tuple[list[bytes], list[str]]:
        """Result lines for a ``fetch``: stored results, RUNNING for running tasks, a FAILED
        RelayError for expired ones and one that names no owner for unknown/foreign ids. The
        user's unfinished tasks among them report to ``session`` from now on.

        Args:
            report_unknown: list unknown/foreign ids instead of answering them with a FAILED
                result: the client asks again for tasks it submitted that the relay has not
                seen yet (another relay process may still hold the submit).

        Returns:
            (result lines, the ids left out).
        """
        rows = self.store.claim(user, task_ids, session)
        lines: list[bytes] = []
        unknown: list[str] = []
        for tid in task_ids:
            row = rows.get(tid)
            if row is None or row.user != user:
                if report_unknown:
                    unknown.append(tid)
                else:
                    lines.append(encode_result(failed_result(tid, self._unknown(user, tid))))
            elif row.state == EXPIRED:
                lines.append(encode_result(failed_result(tid, self._expired(tid))))
            elif row.result is not None:
                lines.append(row.result)
            elif row.state == TaskState.RUNNING.value:
                lines.append(encode_result(ResultMessage(tid, TaskState.RUNNING)))
        return lines, unknown

    def _unknown(self, user: str, tid: str) -> AuthorizationError:
        kept = self.config.result_retention
        return AuthorizationError(
            f"no task {tid!r} for user {user!r}: unknown, removed {kept:.0f} s after its "
            "result was fetched, or another user's",
            "unknown_task",
        )

    def _expired(self, tid: str) -> RelayError:
        return RelayError(
            f"the result of task {tid!r} expired: it was not fetched within "
            f"{self.config.result_max_age:.0f} s of completion (the relay's result_max_age)",
            "expired",
        )
