"""Which nodes a block has, from inside its batch job.

- Slurm: ``scontrol show hostnames $SLURM_JOB_NODELIST`` (one name a line), lead node first.
- PBS: ``$PBS_NODEFILE`` lists a node once per core (or per rank): de-duplicated, order kept.
- Local: this host's name.

The cores of the lead node come from ``SLURM_CPUS_ON_NODE`` or ``os.cpu_count()``; the endpoint
uses its configured ``cores_per_node`` and only logs a mismatch.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from mpiengine_sdk.errors import BackendError

__all__ = ["detect_scheduler", "discover_nodes", "local_cpus", "read_nodefile"]

#: Runs an argv, returns stdout (raises on failure). The seam for tests.
Run = Callable[[list[str]], str]


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def detect_scheduler(env: Mapping[str, str]) -> str:
    """``slurm``, ``pbs`` or ``local``, from the job's environment."""
    if env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"):
        return "slurm"
    if env.get("PBS_NODEFILE"):
        return "pbs"
    return "local"


def read_nodefile(path: Path) -> tuple[str, ...]:
    """The distinct node names of a PBS nodefile, in first-seen order."""
    seen: dict[str, None] = {}
    for line in path.read_text().splitlines():
        name = line.strip()
        if name:
            seen.setdefault(name, None)
    return tuple(seen)


def discover_nodes(
    env: Mapping[str, str] | None = None, kind: str = "auto", run: Run = _run
) -> tuple[str, ...]:
    """The block's node names, lead node first.

    Args:
        env: the job's environment (default: this process's).
        kind: ``auto`` (from ``env``), ``slurm``, ``pbs`` or ``local``.
        run: runs ``scontrol``.

    Raises:
        BackendError: the batch system's node list cannot be read.
    """
    env = os.environ if env is None else env
    kind = detect_scheduler(env) if kind == "auto" else kind
    try:
        if kind == "slurm":
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
            out = run(["scontrol", "show", "hostnames", nodelist])
            nodes = tuple(dict.fromkeys(n.strip() for n in out.splitlines() if n.strip()))
        elif kind == "pbs":
            nodes = read_nodefile(Path(env["PBS_NODEFILE"]))
        else:
            nodes = (socket.gethostname(),)
    except (OSError, KeyError, subprocess.SubprocessError) as exc:
        raise BackendError(f"cannot discover the block's nodes ({kind}): {exc}") from exc
    if not nodes:
        raise BackendError(f"the block's node list is empty ({kind})")
    lead = env.get("SLURMD_NODENAME")
    if lead in nodes:  # the agent runs on the lead node: put it first
        nodes = (lead, *(n for n in nodes if n != lead))
    return nodes


def local_cpus(env: Mapping[str, str] | None = None) -> int:
    """Cores on this node as the batch system grants them."""
    env = os.environ if env is None else env
    raw = env.get("SLURM_CPUS_ON_NODE", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return os.cpu_count() or 1
