"""Where and when each task ran: timeline records, as CSV, HTML or a Gantt chart of nodes.

The records come from the results themselves (nodes, block, start and end) and from what the
client knows at submit (the time it was queued, the cores and GPUs it asked for), so they need
no query to the endpoint. The chart (``to_png``) draws one row per node, grouped by block with
a line between blocks, and one bar per task on each of its nodes, coloured by final state; it
needs matplotlib (``pip install 'mpiengine-sdk[timeline]'``).
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpiengine_sdk.wire import ResultMessage, TaskMessage

__all__ = [
    "EXCLUDED_COLOUR",
    "STATE_COLOURS",
    "Timeline",
    "TimelineRecord",
    "TimelineRecorder",
    "chart",
    "record_from_dict",
]

#: Bar colour of each final state (matplotlib colour names).
STATE_COLOURS = {
    "completed": "tab:green",
    "failed": "tab:red",
    "timeout": "tab:orange",
    "hung": "tab:brown",
    "cancelled": "tab:gray",
    "lost": "tab:purple",
}
_OTHER_COLOUR = "tab:blue"


@dataclass(frozen=True)
class TimelineRecord:
    """One task on the timeline.

    Attributes:
        task_id: the task's id.
        name: its name (the command's first word or the function's name).
        kind: shell, mpi, python or mpi_python.
        block: the block that ran it ("" when it never ran).
        nodes: the nodes of its placement.
        ranks: ranks launched.
        cores: cores it asked for (ranks x cpus_per_rank).
        gpus: GPUs it asked for.
        queued: epoch seconds when it was submitted.
        started: epoch seconds when it started (None: it never ran).
        ended: epoch seconds when it ended.
        state: its final state (completed, failed, timeout, ...).
    """

    task_id: str
    name: str
    kind: str
    block: str
    nodes: tuple[str, ...]
    ranks: int
    cores: int
    gpus: int
    queued: float
    started: float | None
    ended: float | None
    state: str


_COLUMNS = [f.name for f in dataclasses.fields(TimelineRecord)]


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(value)
    return "" if value is None else str(value)


def record_from_dict(data: dict[str, Any]) -> TimelineRecord:
    """A record from its ``dataclasses.asdict`` form (lists for tuples, as JSON has them).

    Raises:
        KeyError, TypeError, ValueError: ``data`` is not such a form.
    """
    return TimelineRecord(
        task_id=str(data["task_id"]),
        name=str(data["name"]),
        kind=str(data["kind"]),
        block=str(data["block"]),
        nodes=tuple(str(n) for n in data["nodes"]),
        ranks=int(data["ranks"]),
        cores=int(data["cores"]),
        gpus=int(data["gpus"]),
        queued=float(data["queued"]),
        started=None if data["started"] is None else float(data["started"]),
        ended=None if data["ended"] is None else float(data["ended"]),
        state=str(data["state"]),
    )


class Timeline(list[TimelineRecord]):
    """A list of TimelineRecord, oldest submit first, that writes itself as CSV, HTML or PNG.

    Args:
        records: the records.
        excluded: block id -> {node: why}: the endpoint's failed (excluded) nodes, drawn as
            shaded rows in the PNG.

    Attributes:
        excluded: as given (empty when unknown).
    """

    def __init__(
        self,
        records: Iterable[TimelineRecord] = (),
        excluded: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(records)
        self.excluded: dict[str, dict[str, str]] = {
            block: dict(nodes) for block, nodes in (excluded or {}).items()
        }

    def to_csv(self, path: str | Path | None = None) -> str:
        """The records as CSV (a header row, then one row per task; nodes space-separated).

        Args:
            path: also write the text there.

        Returns:
            The CSV text.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_COLUMNS)
        for record in self:
            writer.writerow([_cell(getattr(record, c)) for c in _COLUMNS])
        text = out.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_html(self, path: str | Path | None = None) -> str:
        """The records as a standalone HTML page with one table row per task.

        Args:
            path: also write the page there.

        Returns:
            The HTML text.
        """
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
        rows = []
        for record in self:
            colour = STATE_COLOURS.get(record.state, _OTHER_COLOUR).removeprefix("tab:")
            cells = "".join(f"<td>{html.escape(_cell(getattr(record, c)))}</td>" for c in _COLUMNS)
            rows.append(f'<tr style="color:{colour}">{cells}</tr>')
        text = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>mpiengine timeline'
            "</title></head><body>\n<table>\n"
            f"<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n</body></html>\n"
        )
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_png(self, path: str | Path, *, title: str = "mpiengine timeline") -> Path:
        """Draw the Gantt chart of nodes over time into a PNG file.

        Returns:
            The path written.

        Raises:
            ImportError: matplotlib is not installed (the ``timeline`` extra).
        """
        figure, _ = chart(self, title=title, excluded=self.excluded)
        target = Path(path)
        figure.savefig(target, format="png", dpi=100)
        _close(figure)
        return target


#: Fill of an excluded node's row (a failed node no task is placed on any more).
EXCLUDED_COLOUR = "mistyrose"


def chart(
    records: Iterable[TimelineRecord],
    *,
    title: str = "mpiengine timeline",
    excluded: Mapping[str, Mapping[str, str]] | None = None,
) -> Any:
    """The Gantt chart as a matplotlib figure, and its bars.

    Args:
        records: the tasks.
        title: the chart's title.
        excluded: block id -> {node: why}: failed nodes, drawn as shaded rows marked
            "excluded" (a row even when no task ran there).

    Returns:
        ``(figure, bars)``: ``bars`` is a list of ``(record, node, rectangle)``, one per task per
        node, in record order.

    Raises:
        ImportError: matplotlib is not installed (the ``timeline`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed or wanted
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError(
            "drawing the timeline needs matplotlib: pip install 'mpiengine-sdk[timeline]' "
            "(to_csv and to_html need nothing)"
        ) from exc
    ran = [r for r in records if r.started is not None and r.ended is not None and r.nodes]
    excluded = excluded or {}
    shut = {(block, node) for block, nodes in excluded.items() for node in nodes}
    rows: list[tuple[str, str]] = sorted({(r.block, n) for r in ran for n in r.nodes} | shut)
    index = {row: i for i, row in enumerate(rows)}
    origin = min((r.started for r in ran if r.started is not None), default=0.0)
    figure = Figure(figsize=(10, 1.5 + 0.45 * max(len(rows), 1)))
    ax = figure.add_subplot()
    for row in shut:
        ax.axhspan(index[row] - 0.5, index[row] + 0.5, color=EXCLUDED_COLOUR, zorder=0)
    bars = []
    for record in ran:
        assert record.started is not None and record.ended is not None
        start = record.started - origin
        width = max(record.ended - record.started, 1e-3)
        colour = STATE_COLOURS.get(record.state, _OTHER_COLOUR)
        for node in record.nodes:
            y = index[(record.block, node)]
            (rect,) = ax.barh(
                y, width, left=start, height=0.8, color=colour, edgecolor="black", linewidth=0.5
            )
            rect.set_gid(record.task_id)
            bars.append((record, node, rect))
    for i in range(1, len(rows)):  # block boundaries: a line between two blocks' rows
        if rows[i][0] != rows[i - 1][0]:
            ax.axhline(i - 0.5, color="black", linewidth=1.5)
    labels = [
        f"{block or '-'}: {node}" + (" (excluded)" if (block, node) in shut else "")
        for block, node in rows
    ]
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first task started")
    ax.set_title(title)
    states = sorted({r.state for r in ran})
    handles = [Patch(color=STATE_COLOURS.get(s, _OTHER_COLOUR), label=s) for s in states]
    if shut:
        handles.append(Patch(color=EXCLUDED_COLOUR, label="excluded node"))
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),  # outside the axes: a legend never hides a bar
        fontsize="small",
    )
    figure.tight_layout()
    return figure, bars


def _close(figure: Any) -> None:
    figure.clear()


class TimelineRecorder:
    """Collects records for an Executor: the submit side, then the result side of each task.

    Only what a record needs is kept between submit and result (never the task's payload), and
    at most ``max_records`` finished records, the oldest dropped first (0: none are kept, the
    caller stores what ``finished`` returns).

    Args:
        max_records: how many finished records ``timeline()`` can return.
    """

    def __init__(self, max_records: int = 100_000) -> None:
        self._lock = threading.Lock()
        # task id -> (name, kind, ranks, cpus per rank, gpus per rank, queued at)
        self._submitted: dict[str, tuple[str, str, int, int, int, float]] = {}
        self._records: dict[str, TimelineRecord] = {}
        self._max_records = max_records

    def submitted(self, task: TaskMessage) -> None:
        """Note a task sent to the endpoint, and when."""
        spec = task.spec
        entry = (
            task.name,
            task.kind.value,
            int(spec.get("num_ranks") or 1),
            int(spec.get("cpus_per_rank") or 1),
            int(spec.get("gpus_per_rank") or 0),
            time.time(),
        )
        with self._lock:
            self._submitted[task.task_id] = entry

    def finished(self, msg: ResultMessage) -> TimelineRecord | None:
        """Turn a task's final result into its record.

        Returns:
            The record; None for a result of a task this recorder did not see submitted.
        """
        with self._lock:
            entry = self._submitted.pop(msg.task_id, None)
            if entry is None:
                return None
            name, kind, ranks, cpus, gpus, queued = entry
            record = TimelineRecord(
                task_id=msg.task_id,
                name=name,
                kind=kind,
                block=msg.block_id,
                nodes=tuple(msg.nodes),
                ranks=msg.num_ranks or ranks,
                cores=ranks * cpus,
                gpus=ranks * gpus,
                queued=queued,
                started=msg.started,
                ended=msg.ended,
                state=str(msg.state.value),
            )
            if self._max_records > 0:
                self._records[msg.task_id] = record
                while len(self._records) > self._max_records:
                    del self._records[next(iter(self._records))]  # the oldest result
            return record

    def timeline(self) -> Timeline:
        """The records of every finished task, oldest submit first."""
        with self._lock:
            return Timeline(sorted(self._records.values(), key=lambda r: r.queued))
