"""TaskRunner with real processes: isolation, tails, walltimes, kills, failures, concurrency."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from mpiengine.runner.launch import Completion, LaunchSpec
from mpiengine.runner.process import TaskRunner
from mpiengine.runner.sandbox import create_sandbox

PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"
ENV = {"PATH": PATH}


class Collector:
    """on_complete that counts deliveries per task and hands Completions to the test."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Completion] = queue.Queue()
        self.count: Counter[str] = Counter()

    def __call__(self, done: Completion) -> None:
        self.count[done.task_id] += 1
        self.queue.put(done)

    def get(self, timeout: float = 30.0) -> Completion:
        return self.queue.get(timeout=timeout)


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def runner(collector: Collector) -> Iterator[TaskRunner]:
    r = TaskRunner(collector, kill_grace=0.5)
    try:
        yield r
    finally:
        r.close(kill=True)


@pytest.fixture
def spec(tmp_path: Path) -> Callable[..., LaunchSpec]:
    def make(task_id: str, *argv: str, walltime: float | None = 30.0, **kw: object) -> LaunchSpec:
        env = kw.pop("env", ENV)
        return LaunchSpec(
            task_id, argv, env, create_sandbox(tmp_path / "tasks", task_id), walltime, **kw
        )

    return make


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def read_pids(path: Path, count: int) -> list[psutil.Process]:
    wait_for(lambda: path.exists() and len(path.read_text().split()) >= count)
    return [psutil.Process(int(p)) for p in path.read_text().split()]


def assert_all_gone(procs: list[psutil.Process]) -> None:
    # is_running() compares start times, so a reused pid does not count as a survivor.
    survivors = [p for p in procs if _alive(p)]
    for p in survivors:  # never leave them behind, even when the assertion fails
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    assert survivors == []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_argv_reaches_the_process_verbatim(runner, collector, spec) -> None:
    tricky = ["$HOME", "; rm -rf /", "`id`", "$(echo x)", "a b", "*", "'\"", "\\n", "", "-e"]
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    runner.start(spec("argv", sys.executable, "-c", code, *tricky))
    done = collector.get()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == tricky
    assert done.argv == (sys.executable, "-c", code, *tricky)


def test_env_is_exactly_the_specs_and_nothing_leaks(runner, collector, spec, monkeypatch) -> None:
    monkeypatch.setenv("MPIENGINE_TEST_SECRET", "from-the-parent")
    before = dict(os.environ)
    runner.start(spec("first", "/usr/bin/env", env={"PATH": PATH, "ONLY_FIRST": "1"}))
    first = collector.get()
    runner.start(spec("second", "/usr/bin/env", env={"PATH": PATH, "ONLY_SECOND": "2"}))
    second = collector.get()
    assert sorted(first.stdout.splitlines()) == ["ONLY_FIRST=1", f"PATH={PATH}"]
    assert sorted(second.stdout.splitlines()) == ["ONLY_SECOND=2", f"PATH={PATH}"]
    assert dict(os.environ) == before


def test_cwd_stdin_files_and_descriptors(runner, collector, spec) -> None:
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)  # even an inheritable descriptor must not reach the task
    try:
        code = (
            "import os, sys; print(os.getcwd()); print(repr(sys.stdin.read()));"
            "print(open('input.txt').read()); print(' '.join(sorted(os.listdir('/proc/self/fd'))))"
        )
        task = spec("cwd", sys.executable, "-c", code, files={"input.txt": b"hello"})
        runner.start(task)
        done = collector.get()
    finally:
        os.close(leaked_r)
        os.close(leaked_w)
    cwd, stdin, content, fds = done.stdout.splitlines()[:4]
    assert Path(cwd) == task.sandbox and done.sandbox == str(task.sandbox)
    assert stdin == "''" and content == "hello"
    assert fds.split() == ["0", "1", "2", "3"]  # stdio, and the fd listdir itself opened
    assert done.stdout_path == str(task.sandbox / "stdout")
    assert Path(done.stdout_path).read_text() == done.stdout


def test_tails_are_bounded_and_the_files_complete(tmp_path, spec) -> None:
    collector = Collector()
    runner = TaskRunner(collector, tail_bytes=4096)
    try:
        code = (
            "import sys\n"
            "for i in range(100000):\n"
            "    print('out', i)\n"
            "    print('err', i, file=sys.stderr)\n"
        )
        runner.start(spec("chatty", sys.executable, "-c", code, snippet_lines=10))
        runner.start(spec("chatty-all", sys.executable, "-c", code, snippet_lines=100000))
        done = {c.task_id: c for c in (collector.get(), collector.get())}
    finally:
        runner.close()
    ten = done["chatty"]
    assert ten.stdout.splitlines() == [f"out {i}" for i in range(99990, 100000)]
    assert ten.stderr.splitlines() == [f"err {i}" for i in range(99990, 100000)]
    everything = done["chatty-all"]
    assert 0 < len(everything.stdout.encode()) <= 4096
    assert everything.stdout.splitlines()[-1] == "out 99999"
    assert len(Path(everything.stdout_path).read_text().splitlines()) == 100000


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "needs-sigkill"])
def test_walltime_kills_the_whole_tree(runner, collector, spec, ignore_term: bool) -> None:
    trap = "trap '' TERM; " if ignore_term else ""
    script = (
        f"{trap}echo started; sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; "
        "echo $$ >> pids; wait"
    )
    task = spec("wall", "/bin/bash", "-c", script, walltime=1.5)
    runner.start(task)
    procs = read_pids(task.sandbox / "pids", 3)
    done = collector.get()
    assert done.returncode == 124 and done.timed_out and not done.cancelled
    assert done.stdout == "started\n"
    assert done.ended - (done.started or 0) >= 1.5
    assert_all_gone(procs)


def test_double_forked_daemons_die_with_the_task(runner, collector, spec) -> None:
    # One daemon stays in the session; the other also calls setsid and is found by the
    # MPIENGINE_TASK_ID marker in its environment.
    code = (
        "import os, sys, time\n"
        "for detach in (False, True):\n"
        "    if os.fork() == 0:\n"
        "        if detach: os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            open('pids', 'a').write(f'{os.getpid()}\\n'); time.sleep(100)\n"
        "        os._exit(0)\n"
        "time.sleep(100)\n"
    )
    env = {"PATH": PATH, "MPIENGINE_TASK_ID": "daemons"}
    task = spec("daemons", sys.executable, "-c", code, walltime=2.0, env=env)
    runner.start(task)
    procs = read_pids(task.sandbox / "pids", 2)
    assert len({os.getsid(p.pid) for p in procs}) == 2  # one left the session
    done = collector.get()
    assert done.timed_out
    assert_all_gone(procs)


def test_processes_left_behind_by_a_finished_task_are_killed(runner, collector, spec) -> None:
    script = "sleep 100 & echo $! > pids; until [ -e go ]; do sleep 0.01; done; echo done"
    task = spec("bg", "/bin/bash", "-c", script)
    runner.start(task)
    procs = read_pids(task.sandbox / "pids", 1)
    (task.sandbox / "go").touch()  # only now may the task end, leaving its sleeper behind
    done = collector.get()
    assert done.returncode == 0 and done.stdout == "done\n" and not done.timed_out
    assert_all_gone(procs)


def test_kill_cancels_a_running_task(runner, collector, spec) -> None:
    task = spec("victim", "/bin/bash", "-c", "sleep 100 & echo $! >> pids; echo $$ >> pids; wait")
    runner.start(task)
    procs = read_pids(task.sandbox / "pids", 2)
    assert runner.running() == 1
    assert runner.kill("victim") is True
    done = collector.get()
    assert done.cancelled and not done.timed_out and done.returncode == -15
    assert_all_gone(procs)
    assert runner.kill("victim") is False
    assert runner.kill("never-started") is False
    assert runner.running() == 0


def test_spawn_failures_are_completions_not_exceptions(runner, collector, spec, tmp_path) -> None:
    runner.start(spec("missing-abs", "/nonexistent/program"))
    runner.start(spec("missing-path", "no-such-program-mpiengine"))
    runner.start(LaunchSpec("no-sandbox", ("/bin/true",), ENV, tmp_path / "absent", None))
    runner.start(spec("empty-argv"))
    done = {c.task_id: c for c in (collector.get() for _ in range(4))}
    for task_id in ("missing-abs", "missing-path"):
        assert "No such file" in done[task_id].error
        assert done[task_id].returncode is None and done[task_id].started is None
    assert "absent" in done["no-sandbox"].error
    assert "argv is empty" in done["empty-argv"].error
    runner.start(spec("after", "/bin/true"))  # the runner carries on
    assert collector.get().returncode == 0


def test_two_hundred_concurrent_tasks_complete_exactly_once(runner, collector, spec) -> None:
    ids = [f"t{i:03d}" for i in range(200)]
    for task_id in ids:
        runner.start(spec(task_id, "/bin/sh", "-c", f"echo {task_id}; exit {int(task_id[1:]) % 3}"))
    got = [collector.get() for _ in ids]
    assert sorted(c.task_id for c in got) == ids
    for c in got:
        assert c.stdout == f"{c.task_id}\n" and c.returncode == int(c.task_id[1:]) % 3
    wait_for(lambda: runner.running() == 0)
    time.sleep(0.2)  # nothing is reported twice, even late
    assert collector.queue.empty() and set(collector.count.values()) == {1}


def test_duplicate_ids_and_closed_runner_are_refused(collector, spec) -> None:
    runner = TaskRunner(collector, kill_grace=0.5)
    runner.start(spec("dup", "/bin/sleep", "100"))
    with pytest.raises(ValueError, match="already running"):
        runner.start(
            spec("dup2", "/bin/true").__class__("dup", ("/bin/true",), ENV, Path("/"), None)
        )
    runner.close(kill=True)
    done = collector.get()
    assert done.task_id == "dup" and done.cancelled
    with pytest.raises(RuntimeError, match="closed"):
        runner.start(spec("late", "/bin/true"))
    runner.close()  # idempotent


def test_close_without_kill_waits_for_running_tasks(collector, spec) -> None:
    runner = TaskRunner(collector)
    runner.start(spec("short", "/bin/sleep", "0.3"))
    runner.close(kill=False)
    done = collector.get(timeout=0)
    assert done.returncode == 0 and not done.cancelled


def test_a_failing_callback_does_not_stop_the_runner(spec, caplog) -> None:
    seen: list[str] = []

    def on_complete(done: Completion) -> None:
        seen.append(done.task_id)
        if done.task_id == "boom":
            raise RuntimeError("callback bug")

    runner = TaskRunner(on_complete)
    try:
        runner.start(spec("boom", "/bin/true"))
        wait_for(lambda: seen == ["boom"])
        runner.start(spec("fine", "/bin/true"))
        wait_for(lambda: seen == ["boom", "fine"])
    finally:
        runner.close()
    assert "callback bug" in caplog.text


@pytest.mark.mpi
def _cmdline(process: psutil.Process) -> list[str]:
    """A process's argv; empty for one already gone (a zombie not yet reaped has none)."""
    try:
        return process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


def test_walltime_kills_every_rank_of_mpiexec(runner, collector, spec, mpi: str) -> None:
    # Written then renamed: a reader never sees an empty pid file. The walltime leaves room
    # for four ranks to start on a loaded host before it kills them.
    script = "echo $$ > tmp.$PMI_RANK && mv tmp.$PMI_RANK pid.$PMI_RANK; exec sleep 60"
    task = spec("mpi-wall", mpi, "-n", "4", "/bin/bash", "-c", script, walltime=6.0)
    runner.start(task)
    wait_for(lambda: len(list(task.sandbox.glob("pid.*"))) == 4)
    ranks = [psutil.Process(int(p.read_text())) for p in task.sandbox.glob("pid.*")]
    # The launcher and its hydra proxies too: every descendant of this test process but the
    # runner's watchdog (it lives until the runner is closed).
    live = {p: _cmdline(p) for p in psutil.Process().children(recursive=True)}
    tree = [p for p, cmd in live.items() if cmd and "mpiengine.runner.watchdog" not in cmd]
    assert any("mpiexec" in " ".join(live[p]) for p in tree)
    done = collector.get()
    assert done.returncode == 124 and done.timed_out
    assert_all_gone(ranks + tree)


def test_exactly_once_when_exits_walltimes_and_kills_race(collector, spec) -> None:
    rng = random.Random(7)
    runner = TaskRunner(collector, kill_grace=0.2)
    ids = [f"race{i:02d}" for i in range(60)]
    try:
        for task_id in ids:
            nap = rng.choice(["0", "0.05", "0.1", "0.2"])
            walltime = rng.choice([None, 0.0, 0.05, 0.1, 0.3])
            runner.start(spec(task_id, "/bin/sleep", nap, walltime=walltime))
            if rng.random() < 0.3:
                runner.kill(rng.choice(ids[: ids.index(task_id) + 1]))
        got = [collector.get() for _ in ids]
    finally:
        runner.close(kill=True)
    assert sorted(c.task_id for c in got) == ids
    assert collector.queue.empty() and set(collector.count.values()) == {1}
    for c in got:
        assert not (c.timed_out and c.cancelled)
        assert c.error == ""
        if c.timed_out:
            assert c.returncode == 124
        elif not c.cancelled:
            assert c.returncode == 0


def test_interpreter_exit_without_close_kills_running_trees(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mpiengine.runner.process import LaunchSpec, TaskRunner\n"
        "from mpiengine.runner.sandbox import create_sandbox\n"
        "runner = TaskRunner(lambda c: print('cancelled', c.cancelled, flush=True))\n"
        "sandbox = create_sandbox(Path(sys.argv[1]), 't')\n"
        "argv = ('/bin/bash', '-c', 'sleep 100 & echo $! > pids; wait')\n"
        "runner.start(LaunchSpec('t', argv, {'PATH': '/bin:/usr/bin'}, sandbox, None))\n"
        "while not (sandbox / 'pids').exists(): time.sleep(0.01)\n"
        "print((sandbox / 'pids').read_text().strip(), flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid_line, last = out.stdout.split("\n")[:2]
    assert last == "cancelled True", out.stderr
    wait_for(lambda: _gone(int(pid_line)))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped
    except psutil.NoSuchProcess:
        return True


@pytest.mark.mpi
def test_ranks_of_a_crashed_mpiexec_are_killed(runner, collector, spec, mpi: str) -> None:
    env = {"PATH": PATH, "MPIENGINE_TASK_ID": "mpi-crash"}
    script = "echo $$ > pid.$PMI_RANK; exec sleep 60"
    task = spec("mpi-crash", mpi, "-n", "2", "/bin/bash", "-c", script, env=env)
    runner.start(task)
    wait_for(lambda: len(list(task.sandbox.glob("pid.*"))) == 2)
    ranks = [psutil.Process(int(p.read_text())) for p in task.sandbox.glob("pid.*")]
    (launcher,) = [p for p in psutil.Process().children() if "mpiexec" in " ".join(p.cmdline())]
    tree = [launcher, *launcher.children(recursive=True)]
    launcher.kill()  # hydra's proxies run in sessions of their own; none may outlive this
    done = collector.get()
    assert done.returncode == -9 and not done.timed_out and not done.cancelled
    assert_all_gone(ranks + tree)


def test_a_failed_task_takes_its_setsid_daemon_along(runner, collector, spec) -> None:
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('pids', 'a').write(f'{os.getpid()}\\n'); time.sleep(100)\n"
        "    os._exit(0)\n"
        "while not os.path.exists('go'): time.sleep(0.01)\n"
        "sys.exit(3)\n"
    )
    env = {"PATH": PATH, "MPIENGINE_TASK_ID": "failed-daemon"}
    task = spec("failed-daemon", sys.executable, "-c", code, env=env)
    runner.start(task)
    (daemon,) = read_pids(task.sandbox / "pids", 1)
    (task.sandbox / "go").touch()  # only now may the task fail
    done = collector.get()
    assert done.returncode == 3
    assert_all_gone([daemon])
