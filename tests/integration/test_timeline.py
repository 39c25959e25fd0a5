"""The timeline: records from a real embedded run, and their CSV, HTML and PNG forms."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mpiengine_sdk import Executor, ResourceSpec, ShellFunction
from mpiengine_sdk.timeline import STATE_COLOURS, Timeline, TimelineRecord, chart
from tests.conftest import require


def run_a_few_tasks(tmp_path) -> tuple[Timeline, list[str]]:
    with Executor(nodes=3, cores_per_node=2, workdir=tmp_path / "ep") as ex:
        one = ex.submit(ShellFunction("sleep 0.3"), task_id="one")
        two = ex.submit(
            ShellFunction("sleep 0.2"),
            task_id="two",
            resource_spec=ResourceSpec(num_nodes=2, ranks_per_node=1),
        )
        bad = ex.submit(ShellFunction("exit 3"), task_id="bad")
        slow = ex.submit(ShellFunction("sleep 30", walltime=0.5), task_id="slow")
        for future in (one, two, bad, slow):
            future.result(timeout=120)
        return ex.timeline(), ["one", "two", "bad", "slow"]


def test_records_say_where_and_when_each_task_ran(tmp_path):
    records, ids = run_a_few_tasks(tmp_path)
    assert sorted(r.task_id for r in records) == sorted(ids)
    by_id = {r.task_id: r for r in records}
    assert len(by_id["two"].nodes) == 2
    assert len(by_id["one"].nodes) == 1
    assert by_id["one"].state == "completed"
    assert by_id["bad"].state == "completed"  # ran to its end, exit code 3
    assert by_id["slow"].state == "timeout"
    for record in records:
        assert record.block
        assert record.started is not None and record.ended is not None
        assert record.queued <= record.started + 1.0  # client and endpoint share a clock here
        assert record.started <= record.ended
        assert record.cores >= 1
    assert by_id["two"].cores == 2


def test_csv_and_html_parse_back_to_the_records(tmp_path):
    records, _ = run_a_few_tasks(tmp_path)
    rows = list(csv.DictReader(io.StringIO(records.to_csv(tmp_path / "run.csv"))))
    assert (tmp_path / "run.csv").read_text() == records.to_csv()
    assert [row["task_id"] for row in rows] == [r.task_id for r in records]
    for row, record in zip(rows, records, strict=True):
        assert row["nodes"].split() == list(record.nodes)
        assert float(row["started"]) == record.started
        assert row["state"] == record.state

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Cells()
    parser.feed(records.to_html(tmp_path / "run.html"))
    assert parser.rows[0][0] == "task_id"
    assert [row[0] for row in parser.rows[1:]] == [r.task_id for r in records]


def test_the_png_has_one_bar_per_task_and_node_in_its_state_colour(tmp_path):
    require(_has_matplotlib(), "matplotlib", "pip install -e './sdk[timeline]'")
    from matplotlib import colors, image

    records, _ = run_a_few_tasks(tmp_path)
    path = records.to_png(tmp_path / "run.png")
    picture = image.imread(path)
    height, width = picture.shape[:2]
    figure, bars = chart(records)
    assert (width, height) == (1000, int(round((1.5 + 0.45 * 3) * 100)))
    expected = [(r.task_id, n) for r in records for n in r.nodes]
    assert [(r.task_id, node) for r, node, _ in bars] == expected  # 5 bars: "two" has 2 nodes
    figure.canvas.draw()
    for record, _node, rect in bars:
        # The bar's centre, in the PNG's pixels (matplotlib's display y grows upwards).
        x, y = rect.get_x() + rect.get_width() / 2, rect.get_y() + rect.get_height() / 2
        px, py = rect.axes.transData.transform((x, y))
        pixel = picture[height - int(round(py)), int(round(px))][:3]
        want = colors.to_rgb(STATE_COLOURS[record.state])
        assert max(abs(a - b) for a, b in zip(pixel, want, strict=True)) < 0.02, record


def test_a_task_that_never_ran_is_a_record_without_a_bar():
    never = TimelineRecord("t", "x", "shell", "", (), 1, 1, 0, 1.0, None, None, "cancelled")
    assert Timeline([never]).to_csv().splitlines()[1] == "t,x,shell,,,1,1,0,1.0,,,cancelled"
    if _has_matplotlib():
        _, bars = chart([never])
        assert bars == []


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:matplotlib")


@pytest.mark.mpi
def test_the_demo_ends_by_writing_its_timeline_and_saying_where(tmp_path, mpi):
    from mpiengine.demo import run_demo

    lines: list[str] = []
    target = tmp_path / "demo.csv"
    rows = run_demo(nodes=4, workdir=tmp_path / "ep", echo=lines.append, picture=target)
    assert lines[-1] == f"timeline of where each task ran: {target.resolve()}"
    written = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(written) == len(rows)
    assert {row["state"] for row in written} == {"completed", "timeout"}


def test_the_demo_refuses_an_unknown_picture_suffix():
    from mpiengine.demo import write_timeline
    from mpiengine_sdk import ConfigError

    with pytest.raises(ConfigError) as info:
        write_timeline(Timeline(), Path("run.gif"))
    assert str(info.value).startswith("picture: 'run.gif' has no known suffix")
    assert ".png, .html or .csv" in str(info.value)


def test_the_endpoint_keeps_its_timeline_and_the_cli_draws_it(tmp_path):
    from click.testing import CliRunner

    from mpiengine.cli import main
    from mpiengine.timeline_store import read_timeline

    records, ids = run_a_few_tasks(tmp_path)
    kept = read_timeline(tmp_path / "ep")
    assert [r.task_id for r in kept] == [r.task_id for r in records]
    for mine, theirs in zip(records, kept, strict=True):
        assert (mine.nodes, mine.block, mine.state) == (theirs.nodes, theirs.block, theirs.state)
        assert (mine.started, mine.ended, mine.cores) == (
            theirs.started,
            theirs.ended,
            theirs.cores,
        )
    out = tmp_path / "run.csv"
    result = CliRunner().invoke(
        main, ["timeline", "--workdir", str(tmp_path / "ep"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output == f"4 tasks; timeline written to {out.resolve()}\n"
    assert [row["task_id"] for row in csv.DictReader(io.StringIO(out.read_text()))] == [
        r.task_id for r in kept
    ]
    if _has_matplotlib():
        png = tmp_path / "run.png"
        CliRunner().invoke(main, ["timeline", "--workdir", str(tmp_path / "ep"), "-o", str(png)])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_timeline_command_says_what_is_missing(tmp_path):
    from click.testing import CliRunner

    from mpiengine.cli import main

    result = CliRunner().invoke(main, ["timeline", "-o", "x.png"])
    assert result.exit_code == 2
    assert "name one of --workdir DIR or --endpoint NAME" in result.output
    result = CliRunner().invoke(main, ["timeline", "--workdir", str(tmp_path), "-o", "x.csv"])
    assert result.exit_code == 1
    assert f"no finished tasks recorded in {tmp_path / 'timeline.jsonl'}" in result.output


def test_excluded_nodes_are_shaded_rows_marked_excluded(tmp_path):
    require(_has_matplotlib(), "matplotlib", "pip install -e './sdk[timeline]'")
    from matplotlib import colors, image

    from mpiengine_sdk.timeline import EXCLUDED_COLOUR

    ran = TimelineRecord("t", "x", "shell", "b1", ("n1",), 1, 1, 0, 0.0, 1.0, 3.0, "completed")
    records = Timeline([ran], excluded={"b1": {"n2": "down"}})
    path = records.to_png(tmp_path / "x.png")
    figure, bars = chart(records, excluded=records.excluded)
    ax = figure.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["b1: n1", "b1: n2 (excluded)"]
    assert len(bars) == 1
    figure.canvas.draw()
    picture = image.imread(path)
    height = picture.shape[0]
    px, py = ax.transData.transform((1.0, 1))  # the middle of the excluded row
    pixel = picture[height - int(round(py)), int(round(px))][:3]
    want = colors.to_rgb(EXCLUDED_COLOUR)
    assert max(abs(a - b) for a, b in zip(pixel, want, strict=True)) < 0.02
