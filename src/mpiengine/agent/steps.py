"""Slurm job steps of a task: name them, and cancel what outlives a killed task.

Killing ``srun`` (SIGTERM) makes it tear its step down, but if srun itself dies first (SIGKILL
after the grace period, or a wedged srun), the step's remote ranks may keep running on the
nodes that the endpoint is about to hand to another task. So the agent names each srun step
after its task (``--job-name=mpiengine.<task id>``, which srun honours inside an allocation,
unlike ``SLURM_JOB_NAME``), and after a walltime or cancel kill it cancels any step of that name
still listed by ``squeue --steps`` (``scancel <jobid>.<stepid>``) and waits for it to go.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from mpiengine.agent.slurmcmd import Run, run_command
from mpiengine.runner.launch import LaunchSpec

__all__ = ["SrunSteps", "step_name"]

log = logging.getLogger(__name__)


def step_name(task_id: str) -> str:
    """The srun step name of a task."""
    return f"mpiengine.{task_id}"


class SrunSteps:
    """Names and cleans up the srun steps of one batch job.

    Args:
        job_id: the block's Slurm job id (None outside Slurm: everything is a no-op).
        run: runs squeue/scancel.
    """

    def __init__(self, job_id: str | None, run: Run = run_command) -> None:
        self.job_id = job_id
        self._run = run

    def tag(self, spec: LaunchSpec) -> LaunchSpec:
        """The spec with ``--job-name`` added when its argv starts with srun."""
        if not self.job_id or not spec.argv or os.path.basename(spec.argv[0]) != "srun":
            return spec
        argv = (spec.argv[0], f"--job-name={step_name(spec.task_id)}", *spec.argv[1:])
        return dataclasses.replace(spec, argv=argv)

    def leftover(self, task_id: str) -> list[str]:
        """Step ids (``jobid.stepid``) of this task that Slurm still lists."""
        if not self.job_id:
            return []
        code, out = self._run(
            ["squeue", "--noheader", "--steps", f"--jobs={self.job_id}", "--format=%i %j"], 10.0
        )
        if code != 0:
            return []
        name = step_name(task_id)
        return [f[0] for f in (line.split() for line in out.splitlines()) if f[1:] == [name]]

    def cancel(self, task_id: str, wait: float = 10.0) -> list[str]:
        """Cancel this task's remaining steps and wait (up to ``wait`` s) until they are gone.

        Returns:
            the step ids that had to be cancelled.
        """
        steps = self.leftover(task_id)
        if not steps:
            return []
        log.warning("task %s left steps %s running: scancel", task_id, steps)
        self._run(["scancel", *steps], 10.0)
        deadline = time.monotonic() + wait
        while self.leftover(task_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        return steps
