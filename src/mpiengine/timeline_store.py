"""An endpoint's task timeline, kept in its work folder: ``WORKDIR/timeline.jsonl``.

One JSON line per finished task (the fields of :class:`mpiengine_sdk.timeline.TimelineRecord`),
appended when its result is delivered, so ``mpiengine timeline --workdir DIR`` (or
``--endpoint NAME``) can draw a run after the fact, from another process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from mpiengine_sdk.timeline import Timeline, TimelineRecorder, record_from_dict
from mpiengine_sdk.wire import ResultMessage, TaskMessage

__all__ = ["EXCLUDED", "TIMELINE", "TimelineStore", "read_timeline"]

#: The timeline file, in an endpoint's work folder.
TIMELINE = "timeline.jsonl"
#: The endpoint's failed (excluded) nodes, ``{block: {node: why}}``, written at shutdown.
EXCLUDED = "timeline-excluded.json"


class TimelineStore:
    """Notes submits and final results; appends each finished task's record to the file."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / TIMELINE
        self._recorder = TimelineRecorder(max_records=0)  # the file keeps them, not memory
        self._lock = threading.Lock()

    def submitted(self, tasks: Sequence[TaskMessage]) -> None:
        """Note tasks as queued now."""
        for task in tasks:
            self._recorder.submitted(task)

    def finished(self, msg: ResultMessage) -> None:
        """Append the record of a finished task (progress updates are ignored)."""
        if not msg.state.terminal:
            return
        record = self._recorder.finished(msg)
        if record is None:
            return
        line = json.dumps(dataclasses.asdict(record), separators=(",", ":")) + "\n"
        with self._lock:
            try:
                with open(self.path, "a", encoding="utf-8") as out:
                    out.write(line)
            except OSError:
                pass  # the timeline is a record of the run, never a reason to hold a result

    def note_excluded(self, excluded: Mapping[str, Mapping[str, str]]) -> None:
        """Keep the endpoint's failed (excluded) nodes beside the records (replacing any)."""
        doc = {block: dict(nodes) for block, nodes in excluded.items()}
        tmp = self.path.with_name(EXCLUDED + ".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path.with_name(EXCLUDED))
        except OSError:
            pass  # a record of the run, never a reason to fail a shutdown


def read_timeline(workdir: Path) -> Timeline:
    """The records kept in ``workdir`` (oldest submit first; unreadable lines skipped).

    Returns:
        An empty Timeline when there is no file.
    """
    records = []
    try:
        text = (workdir / TIMELINE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Timeline()
    for line in text.splitlines():
        try:
            records.append(record_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    try:
        excluded = json.loads((workdir / EXCLUDED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        excluded = {}
    if not isinstance(excluded, dict):
        excluded = {}
    return Timeline(sorted(records, key=lambda r: r.queued), excluded=excluded)
