"""The client's timeline recorder: bounded, and never holding a task's payload."""

from __future__ import annotations

from mpiengine_sdk.states import TaskState
from mpiengine_sdk.timeline import TimelineRecorder
from mpiengine_sdk.wire import ResultMessage, TaskKind, TaskMessage


def test_the_timeline_keeps_at_most_max_records_oldest_dropped_first():
    recorder = TimelineRecorder(max_records=2)
    for i in range(3):
        recorder.submitted(TaskMessage(task_id=f"t{i}", kind=TaskKind.SHELL, spec={}, name="x"))
    for i in range(3):
        record = recorder.finished(ResultMessage(task_id=f"t{i}", state=TaskState.COMPLETED))
        assert record is not None and record.task_id == f"t{i}"
    assert [r.task_id for r in recorder.timeline()] == ["t1", "t2"]
    assert recorder.finished(ResultMessage(task_id="unknown", state=TaskState.COMPLETED)) is None
    keep_none = TimelineRecorder(max_records=0)
    keep_none.submitted(TaskMessage(task_id="a", kind=TaskKind.SHELL, spec={}))
    assert keep_none.finished(ResultMessage(task_id="a", state=TaskState.COMPLETED)) is not None
    assert keep_none.timeline() == []
