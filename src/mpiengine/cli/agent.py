"""``mpiengine agent``: the command a block's batch job runs on its lead node (``python -m
mpiengine agent`` where no ``mpiengine`` script sits beside the interpreter)."""

from __future__ import annotations

from pathlib import Path
from types import FrameType

import click

__all__ = ["agent"]


def _read_token(token: str | None, token_file: Path | None) -> str:
    if token_file is not None:
        text = token_file.read_text().strip()
        if text:
            return text
    if token:
        return token
    raise click.UsageError("give the block's secret with --token or --token-file")


@click.command("agent")
@click.option("--connect", required=True, help="The endpoint's address, tcp://HOST:PORT.")
@click.option("--block-id", required=True, help="The endpoint's id of this block.")
@click.option("--token", default=None, help="The block's secret (visible to ps: prefer a file).")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file holding the block's secret.",
)
@click.option("--heartbeat", type=float, default=2.0, show_default=True, help="Seconds.")
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds without the endpoint before the agent kills its tasks and exits.",
)
@click.option("--max-launches", type=int, default=64, show_default=True)
@click.option("--kill-grace", type=float, default=2.0, show_default=True)
@click.option(
    "--nodes",
    "discovery",
    type=click.Choice(["auto", "slurm", "pbs", "local"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--node-check-interval",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between checks of the block's nodes through Slurm (squeue, sinfo).",
)
@click.option("--log-file", type=click.Path(path_type=Path), default=None)
def agent(
    connect: str,
    block_id: str,
    token: str | None,
    token_file: Path | None,
    heartbeat: float,
    grace: float,
    max_launches: int,
    kill_grace: float,
    discovery: str,
    node_check_interval: float,
    log_file: Path | None,
) -> None:
    """Run a block's agent: connect to the endpoint and run the tasks it sends."""
    import logging
    import signal
    import sys

    from mpiengine.agent.agent import Agent, AgentOptions

    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    logging.basicConfig(
        level=logging.INFO,
        handlers=[handler],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    opts = AgentOptions(
        connect=connect,
        block_id=block_id,
        token=_read_token(token, token_file),
        heartbeat_period=heartbeat,
        grace=grace,
        max_launches=max_launches,
        kill_grace=kill_grace,
        nodes=discovery,
        node_check_interval=node_check_interval,
    )
    runner = Agent(opts)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.stop(f"signal {signal.Signals(signum).name} (job cancelled or out of walltime)")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, on_signal)
    reason = runner.run()
    logging.getLogger(__name__).info("agent exited: %s", reason)
