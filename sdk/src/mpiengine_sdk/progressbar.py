"""Progress on long work: a live line of queued / running / done / failed tasks, elapsed time.

The line is drawn by tqdm (a well-kept progress library, not hand-written terminal code) and
only when its stream is a terminal: in a log file or a pipe it stays quiet, so batch scripts and
CI logs are not filled with redraws.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from tqdm import tqdm

__all__ = ["Counts", "count", "progress"]

#: How often the line is redrawn while nothing completes: a task that starts running shows up
#: within this many seconds.
REFRESH_SECONDS = 0.5


@dataclass(frozen=True)
class Counts:
    """How many of a set of futures are in each state.

    Attributes:
        queued: not started yet (as far as the client knows).
        running: started on the endpoint.
        done: finished with a value.
        failed: finished with an exception, or cancelled.
    """

    queued: int
    running: int
    done: int
    failed: int

    def line(self) -> str:
        """``queued 2 running 1 done 5 failed 0``."""
        return f"queued {self.queued} running {self.running} done {self.done} failed {self.failed}"


def count(futures: Iterable[concurrent.futures.Future[Any]]) -> Counts:
    """Count ``futures`` by state."""
    queued = running = done = failed = 0
    for future in futures:
        if not future.done():
            if future.running():
                running += 1
            else:
                queued += 1
        elif future.cancelled() or future.exception(timeout=0) is not None:
            failed += 1
        else:
            done += 1
    return Counts(queued, running, done, failed)


F = TypeVar("F", bound="concurrent.futures.Future[Any]")


def progress(
    futures: Iterable[F],
    *,
    desc: str = "tasks",
    file: IO[str] | None = None,
    enabled: bool | None = None,
) -> Iterator[F]:
    """Yield ``futures`` as they complete (as ``as_completed``), showing a live progress line.

    Args:
        futures: the futures to follow (TaskFutures or any ``concurrent.futures.Future``).
        desc: the line's label.
        file: where the line goes; stderr by default.
        enabled: True draws the line, False never; None (default) draws it only when ``file``
            is a terminal.

    Yields:
        Each future once, as soon as it is done.
    """
    pending = set(futures)
    everything = list(pending)
    stream = file if file is not None else sys.stderr
    if enabled is None:
        enabled = bool(getattr(stream, "isatty", lambda: False)())
    with tqdm(
        total=len(everything),
        desc=desc,
        file=stream,
        disable=not enabled,
        unit="task",
        dynamic_ncols=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} |{bar:20}| {postfix} elapsed {elapsed}",
    ) as bar:
        bar.set_postfix_str(count(everything).line(), refresh=False)
        bar.refresh()
        while pending:
            concurrent.futures.wait(
                pending, timeout=REFRESH_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
            )
            finished = [f for f in pending if f.done()]
            pending.difference_update(finished)
            bar.set_postfix_str(count(everything).line(), refresh=False)
            bar.update(len(finished))
            if not finished:
                bar.refresh()
            yield from finished
