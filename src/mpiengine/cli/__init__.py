"""The ``mpiengine`` command: a thin click layer over the library, one module per group.

- ``run``: ``mpiengine run`` and ``mpiengine demo`` (the embedded endpoint);
- ``workdir``: ``mpiengine gc`` and ``mpiengine timeline`` (endpoints' work folders);
- ``endpoint``: ``mpiengine endpoint ...`` (endpoint services);
- ``relay``: ``mpiengine relay ...`` (the relay);
- ``sites``: ``mpiengine sites ...`` (named machines; ``--site`` of ``endpoint configure``);
- ``agent``: ``mpiengine agent`` (what a block's batch job runs);
- ``errors``: the one mapping of the project's errors to click's, used by every command;
- ``output``: what several groups print alike.

``python -m mpiengine ARGS`` is ``mpiengine ARGS``, and the only command processes re-exec (the
detached endpoint service and relay, block jobs without the script). Importing this package
imports click and these modules only: each command imports what it needs when it runs.
"""

from __future__ import annotations

import click

from mpiengine.cli import agent, endpoint, relay, run, sites, workdir

__all__ = ["main"]


@click.group()
@click.version_option(package_name="mpiengine")
def main() -> None:
    """Run shell commands, MPI programs and Python functions on HPC allocations."""


for _command in (
    run.run,
    run.demo,
    workdir.gc,
    workdir.timeline,
    agent.agent,
    relay.relay,
    endpoint.endpoint,
    sites.sites,
):
    main.add_command(_command)
