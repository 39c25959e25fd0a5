"""The command a block's batch job runs: ``mpiengine agent`` with this endpoint's settings.

The block's secret goes in a file (mode 0600) beside its other files, not on the command
line, where ``ps`` would show it to every user of the node.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from mpiengine.config import BlockConfig

__all__ = ["agent_command", "job_command"]


def agent_command(cfg: BlockConfig) -> str:
    """The shell words that start ``mpiengine agent`` in a job (without its options).

    The config's ``agent_command`` if set; else this installation's ``mpiengine`` script (beside
    this interpreter), else ``python -m mpiengine agent`` with this interpreter.
    """
    if cfg.agent_command:
        return cfg.agent_command
    script = Path(sys.executable).parent / "mpiengine"
    if script.is_file() and os.access(script, os.X_OK):
        return f"{shlex.quote(str(script))} agent"
    return f"{shlex.quote(sys.executable)} -m mpiengine agent"


def job_command(cfg: BlockConfig, address: str, block_id: str, directory: Path) -> str:
    """The full agent command line for one block.

    Args:
        cfg: the endpoint config (heartbeat, grace, launch limit, kill grace).
        address: the endpoint's agent socket, ``tcp://HOST:PORT``.
        block_id: the block's id.
        directory: the block's directory (its ``token`` file, and ``agent.log``).
    """
    opts = [
        f"--connect={address}",
        f"--block-id={block_id}",
        f"--token-file={directory / 'token'}",
        f"--heartbeat={cfg.heartbeat_period}",
        f"--grace={cfg.agent_grace}",
        f"--max-launches={cfg.max_concurrent_launches}",
        f"--kill-grace={cfg.kill_grace}",
        f"--node-check-interval={cfg.node_check_interval}",
        f"--log-file={directory / 'agent.log'}",
    ]
    return f"{agent_command(cfg)} {shlex.join(opts)}"
