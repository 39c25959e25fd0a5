"""The provider seam: blocks come from Parsl's providers, never from home-made batch scripts.

:class:`BlockProvider` is the one interface the block manager uses (submit, status, cancel); its
only production implementation, :class:`ParslProvider`, drives a Parsl ``SlurmProvider``,
``PBSProProvider`` or ``LocalProvider`` built by :func:`make_provider` from the endpoint config.
Parsl runs scheduler commands (sbatch, squeue, scancel, qsub ...) through the provider's
``execute_wait`` method; :func:`make_provider` routes that method through a
:data:`CommandRunner`, so unit tests drive the real Parsl provider code with a fake batch system,
and so a failing command (``squeue`` unreachable), which Parsl only logs, is seen and reported.
All calls block for up to ``cmd_timeout`` seconds: call them off the engine thread.

Blocks are submitted to survive the failure of a node other than their lead node (see
:func:`survive_node_failure`): the endpoint then excludes the node and goes on with the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mpiengine.config import BlockConfig
from mpiengine_sdk.errors import BackendError

__all__ = [
    "BlockProvider",
    "CommandRunner",
    "JobView",
    "ParslProvider",
    "ProviderFailure",
    "make_provider",
    "survive_node_failure",
]

log = logging.getLogger(__name__)

#: Runs one shell command line with a timeout (seconds); returns (returncode, stdout, stderr).
CommandRunner = Callable[[str, int | None], tuple[int, str, str]]

#: Parsl JobState names that end a job for good.
TERMINAL = frozenset({"CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "MISSING", "SCALED_IN"})


class ProviderFailure(BackendError):
    """A batch system command failed (sbatch refused, squeue unreachable, ...).

    Attributes:
        operation: ``"submit"``, ``"status"`` or ``"cancel"``.
        command: the failing command line, when known.
        returncode: its exit status, when known.
        stderr: the tail of its stderr.
    """

    def __init__(
        self, operation: str, message: str, command: str = "", returncode: int | None = None,
        stderr: str = "",
    ) -> None:  # fmt: skip
        self._remember(operation, message, command, returncode, stderr)
        self.operation = operation
        self.command = command
        self.returncode = returncode
        self.stderr = stderr[-2000:]
        detail = f" (exit {returncode}: {self.stderr.strip()[-300:]})" if command else ""
        super().__init__(f"provider {operation} failed: {message}{detail}")


@dataclass(frozen=True)
class JobView:
    """A job's state as the provider saw it.

    Attributes:
        state: a Parsl JobState name (PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, TIMEOUT...).
        message: the provider's note, if any.
        stdout_path: the job's stdout file, when known.
        stderr_path: the job's stderr file, when known.
    """

    state: str
    message: str = ""
    stdout_path: str = ""
    stderr_path: str = ""

    @property
    def terminal(self) -> bool:
        """The job has ended."""
        return self.state in TERMINAL


class BlockProvider(Protocol):
    """Obtains and releases blocks (batch jobs). Calls may block; never on the engine thread."""

    @property
    def label(self) -> str:
        """The batch system's name (slurm, pbspro, local)."""

    def submit(self, command: str, script_dir: Path, job_name: str) -> str:
        """Submit a job running ``command`` on its lead node; its script goes to ``script_dir``.

        Returns:
            the job id.

        Raises:
            ProviderFailure: the batch system refused or did not answer.
        """

    def status(self, job_ids: Sequence[str]) -> dict[str, JobView]:
        """The state of each job.

        Raises:
            ProviderFailure: the status command failed (nothing is known).
        """

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel jobs (best effort).

        Raises:
            ProviderFailure: the cancel command failed.
        """


class ParslProvider:
    """A :class:`BlockProvider` over one Parsl ExecutionProvider instance."""

    def __init__(self, provider: Any, failures: _FailureLog) -> None:
        self._provider = provider
        self._failures = failures
        self._lock = threading.Lock()  # Parsl providers are not thread-safe

    @property
    def label(self) -> str:
        return str(self._provider.label)

    @property
    def parsl(self) -> Any:
        """The wrapped Parsl provider."""
        return self._provider

    def submit(self, command: str, script_dir: Path, job_name: str) -> str:
        script_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._failures.clear()
            self._provider.script_dir = str(script_dir)
            try:
                job_id = self._provider.submit(command, 1, job_name)
            except Exception as exc:
                raise self._failures.error("submit", exc) from exc
        if not job_id:
            raise self._failures.error("submit", "the provider returned no job id")
        return str(job_id)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobView]:
        if not job_ids:
            return {}
        with self._lock:
            self._failures.clear()
            try:
                statuses = self._provider.status(list(job_ids))
            except Exception as exc:
                raise self._failures.error("status", exc) from exc
            if self._failures.last is not None:  # Parsl logs a failing squeue and moves on
                raise self._failures.error("status", "the status command failed")
        return {
            job_id: JobView(
                state=st.state.name,
                message=st.message or "",
                stdout_path=st.stdout_path or "",
                stderr_path=st.stderr_path or "",
            )
            for job_id, st in zip(job_ids, statuses, strict=True)
        }

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        with self._lock:
            self._failures.clear()
            try:
                self._provider.cancel(list(job_ids))
            except Exception as exc:
                raise self._failures.error("cancel", exc) from exc
            if self._failures.last is not None:
                raise self._failures.error("cancel", "the cancel command failed")


class _FailureLog:
    """Wraps the CommandRunner; remembers the last failing command for the error report."""

    def __init__(self, runner: CommandRunner) -> None:
        self._runner = runner
        self.last: tuple[str, int, str] | None = None

    def clear(self) -> None:
        self.last = None

    def run(self, cmd: str, timeout: int | None) -> tuple[int, str, str]:
        try:
            code, out, err = self._runner(cmd, timeout)
        except Exception as exc:  # a timeout or a missing command
            self.last = (cmd, -1, f"{type(exc).__name__}: {exc}")
            raise
        # ``sacct -X`` failing is how Parsl learns that accounting is off: not an error.
        if code != 0 and not cmd.startswith("sacct"):
            self.last = (cmd, code, err)
            log.warning("batch command failed (exit %s): %s: %s", code, cmd, err.strip()[-300:])
        return code, out, err

    def error(self, operation: str, cause: object) -> ProviderFailure:
        if self.last is None:
            return ProviderFailure(operation, str(cause))
        cmd, code, err = self.last
        return ProviderFailure(operation, str(cause), cmd, code, err)


def _parsl_runner(cmd: str, timeout: int | None) -> tuple[int, str, str]:
    from parsl.utils import execute_wait

    result: tuple[int, str, str] = execute_wait(cmd, timeout)
    return result


def _seamed(cls: type[Any], failures: _FailureLog) -> type[Any]:
    """A subclass of a Parsl provider class whose commands go through ``failures.run``."""

    def execute_wait(self: Any, cmd: str, timeout: int | None = None) -> tuple[int, str, str]:
        return failures.run(cmd, self.cmd_timeout if timeout is None else timeout)

    return type(f"Seamed{cls.__name__}", (cls,), {"execute_wait": execute_wait})


def _lead_node_launcher(base: type[Any]) -> Any:
    """Parsl's SimpleLauncher without its multi-node warning: the agent runs once, on the
    lead node, and starts every rank itself."""

    def call(self: Any, command: str, *sizes: Any) -> str:
        return command

    return type("LeadNodeLauncher", (base,), {"__call__": call})(debug=False)


#: The job directive that keeps a job running when one of its nodes fails, per batch system.
#: Slurm ends such a job unless it was submitted with --no-kill; it then takes the node out of
#: the job and kills only the steps on it (measured on 22.05). PBS Pro 18.2+ / OpenPBS keeps
#: the job when a sister node fails with tolerate_node_failures=all (OpenPBS design PP-928);
#: not verified here (no PBS cluster), a Cray primary MoM ignores it, and a server older than
#: 18.2 refuses the attribute (write ``#PBS -W tolerate_node_failures=none`` in
#: scheduler_options there to leave it out). Either way the lead node's failure ends the job.
_NO_KILL = {
    "slurm": ("no-kill", "#SBATCH --no-kill"),
    "pbspro": ("tolerate_node_failures", "#PBS -W tolerate_node_failures=all"),
}


def survive_node_failure(cfg: BlockConfig) -> str:
    """The config's scheduler options with the directive that keeps a block's job running
    when one of its nodes fails (first), unless the options already say something about it."""
    known = _NO_KILL.get(cfg.provider)
    if known is None or known[0] in cfg.scheduler_options:
        return cfg.scheduler_options
    return "\n".join(line for line in (known[1], cfg.scheduler_options) if line)


def _block_options(cfg: BlockConfig) -> dict[str, Any]:
    # The endpoint scales; Parsl's own block counters stay idle (it only submits when asked).
    return {"init_blocks": 0, "min_blocks": 0, "max_blocks": cfg.max_blocks}


def make_provider(
    cfg: BlockConfig, runner: CommandRunner | None = None, worker_init: str = ""
) -> ParslProvider:
    """Build the Parsl provider the config names.

    Args:
        cfg: the endpoint config (provider, nodes_per_block, walltime, partition, ...).
        runner: runs the provider's batch commands (default: Parsl's own ``execute_wait``).
        worker_init: shell lines run in the job before the agent (the config's follow them).

    Returns:
        The provider, ready for :meth:`ParslProvider.submit`.

    Raises:
        ConfigError: parsl is not installed.
    """
    from mpiengine_sdk.errors import ConfigError

    try:
        from parsl.launchers.base import Launcher
    except ImportError as exc:
        raise ConfigError(
            "provider",
            "blocks from a batch system need parsl",
            "pip install 'mpiengine[providers]'",
        ) from exc
    failures = _FailureLog(runner or _parsl_runner)
    init = "\n".join(line for line in (worker_init, cfg.worker_init) if line)
    common = _block_options(cfg) | {"worker_init": init, "launcher": _lead_node_launcher(Launcher)}
    if cfg.provider == "slurm":
        from parsl.providers import SlurmProvider

        provider = _seamed(SlurmProvider, failures)(
            partition=cfg.partition,
            account=cfg.account,
            nodes_per_block=cfg.nodes_per_block,
            walltime=cfg.walltime,
            scheduler_options=survive_node_failure(cfg),
            cmd_timeout=cfg.cmd_timeout,
            **common,
        )
    elif cfg.provider == "pbspro":
        from parsl.providers import PBSProProvider

        provider = _seamed(PBSProProvider, failures)(
            queue=cfg.queue,
            account=cfg.account,
            nodes_per_block=cfg.nodes_per_block,
            cpus_per_node=cfg.cores,
            walltime=cfg.walltime,
            scheduler_options=survive_node_failure(cfg),
            cmd_timeout=cfg.cmd_timeout,
            **common,
        )
    else:
        from parsl.providers import LocalProvider

        # LocalProvider runs its commands through parsl.utils.execute_wait directly.
        local: Any = LocalProvider  # untyped in Parsl
        provider = local(nodes_per_block=1, cmd_timeout=cfg.cmd_timeout, **common)
    return ParslProvider(provider, failures)
