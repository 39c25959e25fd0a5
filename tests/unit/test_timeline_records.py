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


def test_the_store_keeps_records_and_excluded_nodes(tmp_path):
    from mpiengine.timeline_store import TimelineStore, read_timeline

    store = TimelineStore(tmp_path)
    store.submitted([TaskMessage(task_id="a", kind=TaskKind.MPI, spec={"num_ranks": 4})])
    store.finished(ResultMessage(task_id="a", state=TaskState.RUNNING))  # progress: nothing
    assert read_timeline(tmp_path) == []
    store.finished(
        ResultMessage(
            task_id="a", state=TaskState.COMPLETED, nodes=("n1", "n2"), block_id="b1",
            num_ranks=4, started=10.0, ended=12.5,
        )
    )  # fmt: skip
    store.note_excluded({"b1": {"n3": "down"}})
    with (tmp_path / "timeline.jsonl").open("a") as out:
        out.write("not json\n")
    kept = read_timeline(tmp_path)
    assert [(r.task_id, r.nodes, r.ranks, r.cores, r.started, r.ended) for r in kept] == [
        ("a", ("n1", "n2"), 4, 4, 10.0, 12.5)
    ]
    assert kept.excluded == {"b1": {"n3": "down"}}


class StatusBackend:
    def __init__(self, workdir, excluded):
        self.workdir = workdir
        self.excluded = excluded

    def start(self, sink):
        self.sink = sink

    def submit(self, tasks):
        pass

    def cancel(self, task_id):
        pass

    def shutdown(self, wait=True):
        pass

    def status(self):
        class Status:
            excluded_nodes = self.excluded

        return Status()


def test_executor_timeline_carries_a_local_endpoints_excluded_nodes(tmp_path):
    from mpiengine_sdk import Executor

    ex = Executor(backend=StatusBackend(tmp_path, {"b1": {"n2": "drained"}}))
    assert ex.timeline().excluded == {"b1": {"n2": "drained"}}
    remote_like = StatusBackend(None, {"b1": {"n2": "drained"}})  # no workdir: never asked
    assert Executor(backend=remote_like).timeline().excluded == {}
