"""Golden launch lines per machine: the exact argv, environment and files of representative
tasks, the endpoint config a site gives, and a block's batch script header.

Each ``tests/golden/sites/NAME.json`` was reviewed against the facility's documented examples
when it was written (Polaris: ``mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth``; Frontier:
``srun -N2 -n16 -c7 --gpus-per-task=1 --gpu-bind=closest``; ...). A site file or launcher
change that alters a line fails here until the file is regenerated and the diff reviewed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mpiengine.site_preview import batch_header, sample_tasks, shown
from mpiengine.sites import Site, available_sites, load_site
from mpiengine_sdk.errors import ConfigError

pytestmark = pytest.mark.sites

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sites"
REGEN = "MPIENGINE_REGEN_GOLDEN=1 pytest tests/sites/test_site_golden.py"
CONFIG_KEYS = (
    "provider", "partition", "queue", "account", "nodes_per_block", "walltime",
    "cores_per_node", "cpu_ids", "gpus_per_node", "gpu_vendor", "gpu_tiles", "launcher",
    "launcher_options", "scheduler_options", "worker_init",
)  # fmt: skip


def _block_overrides(site: Site) -> dict[str, object]:
    queue = site.default_queue
    nodes = 2
    if queue is not None:
        nodes = max(queue.min_nodes or 1, 2)
        if queue.max_nodes is not None:
            nodes = min(nodes, queue.max_nodes)
    return {"account": site.account_example or "ACCOUNT", "nodes_per_block": nodes}


def _render(name: str) -> dict[str, object]:
    site = load_site(name)
    queue = site.default_queue
    out: dict[str, object] = {"queue": queue.name if queue else None}
    try:
        cfg = site.config(**_block_overrides(site))
    except ConfigError as exc:  # LSF and Flux machines: no provider yet
        out["config"] = {"error": str(exc)}
        out["batch_header"] = None
    else:
        doc = cfg.as_dict()
        out["config"] = {k: doc[k] for k in CONFIG_KEYS}
        out["batch_header"] = batch_header(cfg)
    out["tasks"] = {s.name: shown(s.launch(site, queue)) for s in sample_tasks(site, queue)}
    return out


@pytest.mark.parametrize("name", available_sites())
def test_site_matches_its_golden_file(name: str) -> None:
    actual = _render(name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("MPIENGINE_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=2) + "\n")
    assert path.is_file(), f"no golden file {path}; create it with `{REGEN}` and review it"
    expected = json.loads(path.read_text())
    assert actual == expected, (
        f"{name}'s launch lines differ from {path}. If the change is intended, regenerate "
        f"with `{REGEN}` and review the diff against the facility's examples before committing."
    )


def test_no_stale_site_golden_files() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == available_sites()
