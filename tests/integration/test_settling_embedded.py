"""A done-callback that waits on another future stalls neither the engine nor other tasks
(embedded endpoint, real tasks). Each step waits on an event; the timeouts only bound a hang."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

from mpiengine_sdk import Executor, ShellFunction


def test_a_callback_waiting_on_another_future_does_not_stall_other_tasks(
    executor: Executor, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    held = executor.submit(
        ShellFunction(["sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.02; done', "sh", str(gate)])
    )
    waiting, returned = threading.Event(), threading.Event()
    seen: list[int] = []

    def wait_for_held(_: object) -> None:
        waiting.set()
        seen.append(held.result(120).returncode)  # blocks until the gate opens
        returned.set()

    first = executor.submit(ShellFunction(["true"]))
    first.add_done_callback(wait_for_held)
    assert waiting.wait(60)

    # While that callback blocks, other tasks run, resolve and run their own callbacks.
    called = threading.Semaphore(0)
    others = [executor.submit(ShellFunction(["echo", str(i)])) for i in range(8)]
    for future in others:
        future.add_done_callback(lambda _: called.release())
    done, _ = concurrent.futures.wait(others, timeout=60)
    assert len(done) == len(others)
    assert [f.result().stdout for f in others] == [f"{i}\n" for i in range(8)]
    assert all(called.acquire(timeout=60) for _ in others)
    assert not returned.is_set() and not held.done()

    gate.touch()
    assert returned.wait(60)
    assert seen == [0]
