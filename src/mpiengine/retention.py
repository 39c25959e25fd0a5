"""Sandbox retention: which task sandboxes to delete, and deleting them.

An endpoint writes one line per delivered result into ``WORKDIR/delivered.tsv`` (task id,
epoch seconds, whether it succeeded). Only sandboxes named there may ever be deleted: a sandbox
without a line belongs to a task that is queued, running, or whose result never left, and is
never touched. The rules, applied by :func:`plan` on an injectable clock:

- age: a delivered task's sandbox goes ``max_age`` seconds after its delivery;
- size: while all sandboxes together take more than ``max_bytes``, delivered ones go, oldest
  delivery first (undelivered ones count towards the total but are never chosen).

Deletion is of whole task folders only: a direct child of ``WORKDIR/tasks`` whose name is a
valid task id, never a symlink, removed with ``shutil.rmtree``.

An endpoint applies the policy through ``EndpointRetention``. The embedded endpoint keeps
nothing by default: at shutdown it removes
the sandboxes of delivered tasks that succeeded, and its run folder when nothing is left;
failed tasks' sandboxes stay for post-mortems; a ``workdir`` given or ``keep_sandboxes=True``
keeps everything.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mpiengine.taskid import validate_task_id
from mpiengine_sdk.errors import ConfigError, InvalidTaskId
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage

__all__ = [
    "LEDGER",
    "Delivery",
    "EndpointRetention",
    "GcReport",
    "Sandbox",
    "collect",
    "plan",
    "read_ledger",
    "record_delivery",
    "remove_empty_run",
    "scan",
    "succeeded",
]

#: The ledger of delivered results, in an endpoint's work folder.
LEDGER = "delivered.tsv"


@dataclass(frozen=True)
class Delivery:
    """A result that left the endpoint.

    Attributes:
        task_id: the task.
        at: epoch seconds of delivery.
        ok: the task succeeded (COMPLETED with returncode 0 and no error).
    """

    task_id: str
    at: float
    ok: bool


@dataclass(frozen=True)
class Sandbox:
    """One task's sandbox folder.

    Attributes:
        path: ``WORKDIR/tasks/<task_id>``.
        task_id: its task.
        size: bytes of the files under it.
        delivered: its delivery, None when its result has not left (maybe running).
    """

    path: Path
    task_id: str
    size: int
    delivered: Delivery | None


@dataclass(frozen=True)
class GcReport:
    """What a collection removed (or would remove, in a dry run).

    Attributes:
        removed: the sandboxes removed, oldest delivery first.
        kept: how many sandboxes stay.
        freed: bytes freed.
    """

    removed: tuple[Sandbox, ...]
    kept: int
    freed: int

    def summary(self, *, dry_run: bool = False) -> str:
        """``removed 3 sandboxes, freed 1.2 MB; 2 kept`` (``would remove ... would free``)."""
        remove, free = ("would remove", "would free") if dry_run else ("removed", "freed")
        return (
            f"{remove} {len(self.removed)} sandboxes, {free} {_human(self.freed)}; {self.kept} kept"
        )


def succeeded(msg: ResultMessage) -> bool:
    """Whether a final result is a success (its sandbox is not needed for a post-mortem)."""
    return msg.state is TaskState.COMPLETED and msg.returncode in (0, None) and not msg.error_type


def record_delivery(workdir: Path, msg: ResultMessage, *, now: float | None = None) -> None:
    """Append ``msg``'s delivery to ``workdir``'s ledger (one short line, one write)."""
    at = time.time() if now is None else now
    line = f"{msg.task_id}\t{at:.3f}\t{1 if succeeded(msg) else 0}\n"
    with open(workdir / LEDGER, "a", encoding="utf-8") as ledger:
        ledger.write(line)


def read_ledger(workdir: Path) -> dict[str, Delivery]:
    """The deliveries recorded in ``workdir`` (the last line per task wins; bad lines are
    skipped)."""
    out: dict[str, Delivery] = {}
    try:
        text = (workdir / LEDGER).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        try:
            out[parts[0]] = Delivery(parts[0], float(parts[1]), parts[2] == "1")
        except ValueError:
            continue
    return out


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def scan(workdir: Path) -> list[Sandbox]:
    """Every task sandbox under ``workdir/tasks`` (symlinks and foreign names are skipped)."""
    deliveries = read_ledger(workdir)
    root = workdir / "tasks"
    out: list[Sandbox] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            validate_task_id(entry.name)
        except InvalidTaskId:
            continue
        path = Path(entry.path)
        out.append(Sandbox(path, entry.name, _size(path), deliveries.get(entry.name)))
    return out


def plan(
    sandboxes: Iterable[Sandbox], *, now: float, max_age: float | None, max_bytes: int | None
) -> list[Sandbox]:
    """The sandboxes to remove under the age and size rules (see the module docstring).

    Args:
        sandboxes: every sandbox of the endpoint.
        now: the current time (epoch seconds).
        max_age: seconds after delivery; None: no age rule.
        max_bytes: the total to stay under; None: no size rule.

    Returns:
        The sandboxes to remove, oldest delivery first; never an undelivered one.
    """
    everything = list(sandboxes)
    delivered = sorted(
        (s for s in everything if s.delivered is not None),
        key=lambda s: (s.delivered.at if s.delivered else 0.0, s.task_id),
    )
    chosen: dict[str, Sandbox] = {}
    if max_age is not None:
        for s in delivered:
            if s.delivered is not None and now - s.delivered.at >= max_age:
                chosen[s.task_id] = s
    if max_bytes is not None:
        total = sum(s.size for s in everything) - sum(s.size for s in chosen.values())
        for s in delivered:
            if total <= max_bytes:
                break
            if s.task_id not in chosen:
                chosen[s.task_id] = s
                total -= s.size
    return [s for s in delivered if s.task_id in chosen]


def _remove(sandbox: Sandbox, root: Path) -> None:
    # Whole task folders only, checked again right before: a direct child of tasks/, no symlink.
    path = sandbox.path
    if path.parent != root or path.is_symlink() or not path.is_dir():
        return
    shutil.rmtree(path, ignore_errors=True)


def collect(
    workdir: Path,
    *,
    max_age: float | None,
    max_bytes: int | None,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
) -> GcReport:
    """Remove the sandboxes of ``workdir`` that the rules choose.

    Raises:
        ConfigError: ``workdir`` is not an endpoint work folder (no ``tasks/`` in it), or a
            limit is negative.
    """
    if max_age is not None and max_age < 0:
        raise ConfigError("max_age", f"must be >= 0 seconds, got {max_age!r}")
    if max_bytes is not None and max_bytes < 0:
        raise ConfigError("max_bytes", f"must be >= 0 bytes, got {max_bytes!r}")
    if not (workdir / "tasks").is_dir():
        raise ConfigError("workdir", f"{workdir} has no tasks/ folder", "an endpoint's work folder")
    sandboxes = scan(workdir)
    doomed = plan(sandboxes, now=clock(), max_age=max_age, max_bytes=max_bytes)
    if not dry_run:
        for sandbox in doomed:
            _remove(sandbox, workdir / "tasks")
    return GcReport(tuple(doomed), len(sandboxes) - len(doomed), sum(s.size for s in doomed))


def remove_empty_run(
    folder: Path, *, max_age: float, clock: Callable[[], float] = time.time
) -> bool:
    """Remove an embedded run folder with no sandbox left, once its ledger (or, without one,
    the folder) has not changed for ``max_age`` seconds: a live endpoint writes its ledger at
    every result.

    Returns:
        Whether the folder was removed.
    """
    if scan(folder):
        return False
    marker = folder / LEDGER if (folder / LEDGER).exists() else folder
    try:
        idle = clock() - marker.stat().st_mtime
    except FileNotFoundError:
        return False
    if idle < max_age:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


class EndpointRetention:
    """An endpoint's policy: note each delivery; at shutdown, unless asked to keep them, remove
    the sandboxes of tasks that succeeded, and the run folder if nothing is left (the embedded
    endpoint in a fresh folder; a batch endpoint always keeps them).

    With ``max_age`` or ``max_bytes`` (an endpoint service's ``sandbox_max_age`` and
    ``sandbox_max_bytes`` engine options) it also applies :func:`collect` while it runs, at
    most once per ``interval`` seconds, on its own thread.

    Args:
        workdir: the endpoint's work folder.
        keep: keep every sandbox at shutdown (a workdir was given, or ``keep_sandboxes=True``).
        owned: the folder was made for this run (it may be removed whole when empty).
        max_age: seconds after delivery before a sandbox goes; None: no age rule.
        max_bytes: the total to keep sandboxes under; None: no size rule.
        interval: the least time between two collections.
        clock: the time source (tests pass a fake one).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        keep: bool,
        owned: bool,
        max_age: float | None = None,
        max_bytes: int | None = None,
        interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for key, value in (("sandbox_max_age", max_age), ("sandbox_max_bytes", max_bytes)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ConfigError(key, f"must be a number >= 0 or None, got {value!r}")
        self.workdir = workdir
        self.keep = keep
        self.owned = owned
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.interval = interval
        self._clock = clock
        self._last_collect = clock()
        self._collecting: threading.Thread | None = None
        self._lock = threading.Lock()

    def delivered(self, msg: ResultMessage) -> None:
        """Note a final result (ignored for progress updates); maybe start a collection."""
        if not msg.state.terminal:
            return
        with self._lock:
            try:
                record_delivery(self.workdir, msg, now=self._clock())
            except OSError:
                pass  # retention is best effort; a result is never held up by it
            if self.max_age is None and self.max_bytes is None:
                return
            now = self._clock()
            busy = self._collecting is not None and self._collecting.is_alive()
            if busy or now - self._last_collect < self.interval:
                return
            self._last_collect = now
            self._collecting = threading.Thread(
                target=self.collect_now, name="sandbox-retention", daemon=True
            )
            self._collecting.start()

    def collect_now(self) -> GcReport | None:
        """Apply the age and size rules once (None when neither is set or there is no
        ``tasks/`` folder yet)."""
        if self.max_age is None and self.max_bytes is None:
            return None
        if not (self.workdir / "tasks").is_dir():
            return None
        return collect(
            self.workdir, max_age=self.max_age, max_bytes=self.max_bytes, clock=self._clock
        )

    def wait(self) -> None:
        """Wait for a collection under way (shutdown and tests)."""
        thread = self._collecting
        if thread is not None:
            thread.join()

    def finish(self) -> GcReport | None:
        """Apply the policy at shutdown; None when sandboxes are kept."""
        self.wait()
        if self.keep or not (self.workdir / "tasks").is_dir():
            return None
        sandboxes = scan(self.workdir)
        doomed = [s for s in sandboxes if s.delivered is not None and s.delivered.ok]
        for sandbox in doomed:
            _remove(sandbox, self.workdir / "tasks")
        report = GcReport(tuple(doomed), len(sandboxes) - len(doomed), sum(s.size for s in doomed))
        if self.owned and report.kept == 0:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return report


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
