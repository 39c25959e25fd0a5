"""The README's table of named machines is generated from site-configs/, never hand-kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpiengine.sites import Site, available_sites, load_site

pytestmark = pytest.mark.sites

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- machines:start -->", "<!-- machines:end -->"
REGEN = "MPIENGINE_REGEN_README=1 pytest tests/sites/test_readme_machines.py"


def _queues(site: Site) -> str:
    names = []
    for q in site.queues:
        if q.unsupported:
            continue
        mark = "**" if q.default else ""
        names.append(f"{mark}{q.name}{mark}{' (debug)' if q.debug else ''}")
    return ", ".join(names)


def _gpus(site: Site) -> str:
    kinds = sorted(
        {
            (q.node.gpus, q.node.gpu_vendor, q.node.gpu_tiles)
            for q in site.queues
            if not q.unsupported and q.node.gpus
        }  # fmt: skip
    )
    if not kinds:
        return "-"
    return "; ".join(f"{n} {v}" + (f" ({t} tiles)" if t > 1 else "") for n, v, t in kinds)


def table() -> str:
    """The machines table: one row per site file."""
    rows = [
        "| name | machine | facility | batch | launcher | cores/node (usable) | GPUs/node |"
        " queues (**default**) | unsure |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in available_sites():
        s = load_site(name)
        cores = sorted({q.node.usable_cores for q in s.queues if not q.unsupported})
        batch = s.batch if s.provider else f"{s.batch} (launch lines only)"
        rows.append(
            f"| `{name}` | {s.title} | {s.facility.split(' (')[0]} | {batch} |"
            f" {s.launcher_name} | {', '.join(map(str, cores))} | {_gpus(s)} |"
            f" {_queues(s)} | {len(s.unsure)} |"
        )
    return "\n".join(rows)


def test_the_readme_lists_every_machine_from_its_file() -> None:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README needs {START} ... {END}"
    head, rest = text.split(START, 1)
    current, tail = rest.split(END, 1)
    wanted = f"\n{table()}\n"
    if os.environ.get("MPIENGINE_REGEN_README") == "1" and current != wanted:
        README.write_text(head + START + wanted + END + tail, encoding="utf-8")
        current = wanted
    assert current == wanted, f"the README's machine table is stale; regenerate with `{REGEN}`"
