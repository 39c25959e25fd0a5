"""Runtime predictions: how long a kind of task runs, learned from completed tasks.

The scheduler backfills by estimates (see ``mpiengine.scheduler.policy``). Users rarely give a
walltime, and when they do it is a guess, often several times too long; so the endpoint learns
from the tasks it ran. The predictor follows Tsafrir, Etsion and Feitelson ("Backfilling using
system-generated predictions rather than user runtime estimates", IEEE TPDS 2007): the
prediction for a task is **the average of the last two runtimes of the same kind of task by
the same user**. Recent history predicts better than long averages (a user's runs change over
a session), and two runs smooth one outlier. Predictions only steer backfill and reservations;
a wrong one is corrected by the scheduler while the task runs, and only the user's walltime
ever kills a task.

A *kind* is the user, the task type, what it runs, and its shape (nodes x ranks per node x
cores and GPUs per rank, exclusive or not), at two levels:

- exact: the very command (argv, or the rendered script) or Python call (function and
  arguments): a task run again, as in a parameter sweep re-run or a workflow's next round;
- general: its name (a shell command's executable or the name given to it, the Python
  function's qualified name): what to expect of a new command of the same program.

A task is predicted from its exact kind when that has history, else from its general kind,
else not at all (the scheduler's cold-start rule applies). Every completed task teaches both.

Predictions are kept in ``<workdir>/predictions.json`` (written atomically, at most every
``save_interval`` seconds and when the endpoint stops), so they survive a restart; at most
``max_kinds`` kinds are kept, the least recently used forgotten first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.wire import TaskKind, TaskMessage

__all__ = ["FORMAT_VERSION", "Kinds", "Predictor", "task_kinds"]

log = logging.getLogger(__name__)

#: The version of the file format; a file of another version is ignored (and replaced).
FORMAT_VERSION = 1
#: Runtimes kept per kind (the prediction is their average).
HISTORY = 2
#: A runtime below this (a clock step, a task that failed at once) is recorded as this.
_MIN_RUNTIME = 1e-3


@dataclass(frozen=True)
class Kinds:
    """The two kinds of one task (see the module docstring)."""

    exact: str
    general: str


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def task_kinds(task: TaskMessage, spec: ResourceSpec) -> Kinds:
    """The exact and general kinds of ``task``.

    Both hold the user, the task type and the shape; the exact kind adds a digest of what
    runs (argv, script, or the pickled call), the general one its name (for an argv command,
    its executable's base name when no other name was given).
    """
    shape = f"{spec.num_nodes}x{spec.ranks_per_node}x{spec.cpus_per_rank}c{spec.gpus_per_rank}g" + (
        "x" if spec.exclusive else ""
    )
    name = task.name
    if task.kind in (TaskKind.SHELL, TaskKind.MPI) and task.argv:
        name = name or os.path.basename(task.argv[0])
        what = "\0".join(task.argv).encode()
    elif task.script is not None:
        what = task.script.encode()
    else:
        what = task.payload
    general = f"{task.user}|{task.kind.value}|{name[:200]}|{shape}"
    return Kinds(exact=f"{general}|{_digest(what)}", general=general)


class Predictor:
    """Learned runtimes by kind, with the prediction rule and the file that keeps them.

    Thread-safe: the endpoint predicts in the submitting thread and learns in its own.

    Args:
        path: the file to load at start and save to; None keeps nothing on disk.
        max_kinds: at most this many kinds are kept (>= 2), least recently used dropped.
        save_interval: ``save_if_due`` writes at most this often (seconds).
    """

    def __init__(
        self, path: Path | None, *, max_kinds: int = 10_000, save_interval: float = 5.0
    ) -> None:
        if max_kinds < 2:
            raise ValueError(f"max_kinds={max_kinds!r}: must be >= 2")
        self.path = path
        self._max = max_kinds
        self._interval = save_interval
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, list[float]] = OrderedDict()
        self._dirty = False
        self._saved_at = -math.inf
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def predict(self, kinds: Kinds) -> tuple[float | None, str]:
        """The predicted runtime of a task of ``kinds`` and the kind it came from.

        Returns:
            (seconds, kind): from the exact kind if it has history, else from the general
            one; (None, the general kind) when neither has any. The kind is the one the
            scheduler should share estimates by.
        """
        with self._lock:
            for kind in (kinds.exact, kinds.general):
                runs = self._runs.get(kind)
                if runs:
                    self._runs.move_to_end(kind)
                    return sum(runs) / len(runs), kind
        return None, kinds.general

    def record(self, kinds: Kinds, runtime: float) -> list[tuple[str, float]]:
        """Learn that a task of ``kinds`` ran ``runtime`` seconds (it ended by itself).

        Returns:
            the new prediction of each of its two kinds: (kind, seconds).
        """
        runtime = max(float(runtime), _MIN_RUNTIME)
        if not math.isfinite(runtime):
            return []
        out = []
        with self._lock:
            for kind in (kinds.exact, kinds.general):
                runs = self._runs.get(kind)
                if runs is None:
                    runs = self._runs[kind] = []
                else:
                    self._runs.move_to_end(kind)
                runs.append(runtime)
                del runs[:-HISTORY]
                out.append((kind, sum(runs) / len(runs)))
            while len(self._runs) > self._max:
                self._runs.popitem(last=False)
            self._dirty = True
        return out

    # -- persistence -----------------------------------------------------------------------

    def save_if_due(self, now: float) -> bool:
        """Save if something was learned and ``save_interval`` has passed since the last save
        (``now``: a monotonic clock). Returns whether it saved."""
        if not self._dirty or now - self._saved_at < self._interval:
            return False
        self._saved_at = now
        return self.save()

    def save(self) -> bool:
        """Write the learned runtimes (atomically: a temporary file renamed over the old).

        Returns:
            whether it wrote (nothing new, or no path: False). A failure to write is logged,
            not raised: predictions are an optimisation, never a reason to stop.
        """
        if self.path is None:
            return False
        with self._lock:
            if not self._dirty:
                return False
            data = {"version": FORMAT_VERSION, "kinds": dict(self._runs)}
            self._dirty = False
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save runtime predictions to %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)
            return False
        return True

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable runtime predictions in %s: %s", path, exc)
            return
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            log.warning("ignoring runtime predictions in %s: not version %d", path, FORMAT_VERSION)
            return
        kinds = data.get("kinds")
        if not isinstance(kinds, dict):
            return
        for kind, runs in list(kinds.items())[-self._max :]:
            good = (
                [
                    float(r)
                    for r in runs
                    if isinstance(r, int | float) and not isinstance(r, bool) and 0 < r < math.inf
                ][-HISTORY:]
                if isinstance(runs, list)
                else []
            )
            if isinstance(kind, str) and good:
                self._runs[kind] = good
