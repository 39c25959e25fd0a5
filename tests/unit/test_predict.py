"""Runtime predictions: the rule (average of the last two of a kind), the kinds, the file that
keeps them across restarts, the bound; and the engine learning from its tasks, waking when one
outlives its prediction, and never killing by a prediction."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from mpiengine.engine import Engine
from mpiengine.placement import Placement
from mpiengine.predict import FORMAT_VERSION, Kinds, Predictor, task_kinds
from mpiengine.runner.launch import Completion
from mpiengine.scheduler import BlockShape, Scheduler, TaskRequest
from mpiengine_sdk import ResourceSpec, ShellFunction
from mpiengine_sdk.wire import TaskKind, TaskMessage

from .test_node_failure import FakeBlock, Results

K = Kinds(exact="u|shell|sleep|1x1x1c0g|abc", general="u|shell|sleep|1x1x1c0g")


def test_the_prediction_is_the_average_of_the_last_two_runs() -> None:
    pred = Predictor(None)
    assert pred.predict(K) == (None, K.general)  # nothing known: the general kind
    assert pred.record(K, 10.0) == [(K.exact, 10.0), (K.general, 10.0)]
    pred.record(K, 20.0)
    assert pred.predict(K) == (15.0, K.exact)
    pred.record(K, 40.0)  # the first run is forgotten
    assert pred.predict(K) == (30.0, K.exact)


def test_the_exact_kind_wins_and_the_general_one_fills_in() -> None:
    pred = Predictor(None)
    other = Kinds(exact=K.general + "|def", general=K.general)
    pred.record(other, 8.0)
    assert pred.predict(K) == (8.0, K.general)  # a new command of the same program
    pred.record(K, 2.0)
    assert pred.predict(K) == (2.0, K.exact)
    assert pred.predict(other) == (8.0, other.exact)


def _msg(argv: tuple[str, ...] = (), script: str | None = None, **kw: object) -> TaskMessage:
    kind = kw.pop("kind", TaskKind.SHELL)
    return TaskMessage("t", kind, {}, argv=argv, script=script, **kw)  # type: ignore[arg-type]


def test_kinds_tell_commands_users_and_shapes_apart() -> None:
    one = ResourceSpec(num_nodes=1)
    a = task_kinds(_msg(("/bin/sleep", "1")), one)
    assert a == task_kinds(_msg(("/bin/sleep", "1")), one)
    b = task_kinds(_msg(("/bin/sleep", "2")), one)
    assert b.exact != a.exact and b.general == a.general and "|sleep|" in a.general
    assert task_kinds(_msg(("/bin/sleep", "1")), ResourceSpec(num_nodes=2)).general != a.general
    exclusive = ResourceSpec(num_nodes=1, exclusive=True)
    assert task_kinds(_msg(("/bin/sleep", "1")), exclusive).general != a.general
    assert task_kinds(_msg(("/bin/sleep", "1"), user="bob"), one).general != a.general
    named = task_kinds(_msg(script="python train.py --lr 0.1", name="train"), one)
    assert "|train|" in named.general
    other = task_kinds(_msg(script="python train.py --lr 0.2", name="train"), one)
    assert other.general == named.general and other.exact != named.exact
    py = task_kinds(_msg(kind=TaskKind.PYTHON, payload=b"fn+args", name="Model.fit"), one)
    assert "|python|Model.fit|" in py.general


def test_predictions_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    pred = Predictor(path, save_interval=60.0)
    pred.record(K, 3.0)
    assert pred.save_if_due(100.0) and path.is_file()
    pred.record(K, 5.0)
    assert not pred.save_if_due(130.0)  # not yet: at most once a minute
    assert pred.save()
    assert not pred.save()  # nothing new
    again = Predictor(path)
    assert again.predict(K) == (4.0, K.exact)
    assert json.loads(path.read_text())["version"] == FORMAT_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.json"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": 99, "kinds": {}}', '["a"]', '{"version": 1, "kinds": 3}'],
)
def test_an_unreadable_file_is_ignored_with_a_warning(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "predictions.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="mpiengine.predict"):
        pred = Predictor(path)
    assert len(pred) == 0
    if content != '{"version": 1, "kinds": 3}':
        assert "predictions" in caplog.text
    pred.record(K, 1.0)
    assert pred.save() and Predictor(path).predict(K) == (1.0, K.exact)


def test_bad_entries_in_the_file_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    kinds = {"a": [1.0, "x", -2, True, 3.0], "b": "no", "c": [], K.exact: [7.0, 9.0, 11.0]}
    path.write_text(json.dumps({"version": FORMAT_VERSION, "kinds": kinds}))
    pred = Predictor(path)
    assert len(pred) == 2
    assert pred.predict(Kinds("a", "zz")) == (2.0, "a")
    assert pred.predict(K) == (10.0, K.exact)  # the last two of three


def test_at_most_max_kinds_are_kept_the_least_recently_used_go_first() -> None:
    pred = Predictor(None, max_kinds=4)
    first = Kinds("e1", "g1")
    pred.record(first, 1.0)
    pred.record(Kinds("e2", "g2"), 2.0)
    pred.predict(first)  # used: kept
    pred.record(Kinds("e3", "g3"), 3.0)
    assert len(pred) == 4  # g1 and e2 (the least recently used) are gone
    assert pred.predict(first) == (1.0, "e1")
    assert pred.predict(Kinds("e2", "g2")) == (2.0, "g2")
    assert pred.predict(Kinds("zz", "g1")) == (None, "g1")
    with pytest.raises(ValueError, match="max_kinds"):
        Predictor(None, max_kinds=1)


# -- in the engine ------------------------------------------------------------------------


class Recording(Scheduler):
    """The real policy, recording what the engine tells it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, TaskRequest] = {}
        self.calls: list[float] = []
        self.lock = threading.Lock()

    def submit(self, req: TaskRequest) -> None:
        with self.lock:
            self.requests[req.task_id] = req
        super().submit(req)

    def schedule(self, now: float) -> list[Placement]:
        with self.lock:
            self.calls.append(now)
        return super().schedule(now)


def _engine(
    workdir: Path, sched: Scheduler, tick: float = 0.05
) -> tuple[Engine, FakeBlock, Results]:
    results = Results()
    engine = Engine(
        workdir=workdir,
        sink=results,
        shapes=[BlockShape(3, 2)],
        scheduler=sched,
        base_env={"PATH": "/usr/bin:/bin"},
        tick_interval=tick,
    )
    block = FakeBlock(engine)
    engine.add_block(block)
    engine.start()
    return engine, block, results


def _sleep(task_id: str, walltime: float | None = None) -> TaskMessage:
    spec = ResourceSpec(num_nodes=1, walltime=walltime)
    return ShellFunction(["sleep", "3"]).to_task(task_id, (), {}, spec)


def _wait(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _end(engine: Engine, block: FakeBlock, task_id: str, runtime: float, **kw: object) -> None:
    spec = block.launched[task_id]
    now = time.time()
    fields = {
        "task_id": task_id,
        "returncode": 0,
        "stdout": "",
        "stderr": "",
        "stdout_path": "",
        "stderr_path": "",
        "sandbox": str(spec.sandbox),
        "argv": spec.argv,
        "started": now - runtime,
        "ended": now,
        "timed_out": False,
        "cancelled": False,
    } | kw
    engine.report(block.info.block_id, Completion(**fields))  # type: ignore[arg-type]


def test_the_engine_learns_runtimes_keeps_them_and_never_kills_by_them(tmp_path: Path) -> None:
    sched = Recording()
    engine, block, results = _engine(tmp_path, sched)
    try:
        engine.submit([_sleep("a")])
        _wait(lambda: "a" in block.launched)
        assert sched.requests["a"].estimate is None  # nothing known yet
        _end(engine, block, "a", runtime=3.0)
        results.final("a")  # learned by now
        engine.submit([_sleep("b")])  # the same command again: its runtime is predicted
        _wait(lambda: "b" in block.launched)
        assert sched.requests["b"].estimate == pytest.approx(3.0, abs=0.05)
        assert block.launched["b"].walltime is None  # a prediction never kills
        # Killed at its walltime, or cancelled: no lesson about its runtime.
        _end(engine, block, "b", runtime=100.0, timed_out=True, returncode=124)
        results.final("b")
        engine.submit([_sleep("c", walltime=50.0)])
        _wait(lambda: "c" in block.launched)
        assert sched.requests["c"].estimate == pytest.approx(3.0, abs=0.05)
        assert block.launched["c"].walltime == 50.0
        _end(engine, block, "c", runtime=100.0, cancelled=True)
        results.final("c")
    finally:
        engine.shutdown(wait=False, timeout=10)
    # A restart on the same workdir predicts the same.
    again = Recording()
    engine, block, _ = _engine(tmp_path, again)
    try:
        engine.submit([_sleep("d")])
        _wait(lambda: "d" in block.launched)
        assert again.requests["d"].estimate == pytest.approx(3.0, abs=0.05)
    finally:
        engine.shutdown(wait=False, timeout=10)


def test_the_engine_wakes_when_a_task_outlives_its_prediction(tmp_path: Path) -> None:
    pred = Predictor(tmp_path / "predictions.json")
    kinds = task_kinds(_sleep("x"), ResourceSpec(num_nodes=1))
    pred.record(kinds, 0.3)
    pred.save()
    sched = Recording()
    # Ticks far apart and no event: only the prediction's expiry can wake the engine.
    engine, block, _ = _engine(tmp_path, sched, tick=30.0)
    try:
        engine.submit([_sleep("x")])
        _wait(lambda: "x" in block.launched)
        with sched.lock:
            started = sched.calls[-1]
        assert sched.next_wake == pytest.approx(started + 0.3)
        _wait(lambda: sched.calls[-1] >= started + 0.3, timeout=5.0)
        # Woken at its predicted end, it was found still running: now expected at 1.1 x.
        _wait(lambda: sched.next_wake == pytest.approx(started + 0.33), timeout=5.0)
    finally:
        engine.shutdown(wait=False, timeout=10)
