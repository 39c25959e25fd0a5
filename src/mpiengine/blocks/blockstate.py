"""A batch block's record in the block manager: its state, job, token and files."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BlockRecord", "BlockState"]


class BlockState(enum.Enum):
    """Where a batch block is in its life."""

    #: the submit call is queued or running; no job id yet.
    SUBMITTING = "submitting"
    #: the job is queued or starting; its agent has not said hello yet.
    PENDING = "pending"
    #: its agent said hello; the engine schedules tasks on it.
    CONNECTED = "connected"
    #: fewer than half its nodes are usable: nothing new starts on it, a replacement is
    #: requested, and it is released once its running tasks end.
    RETIRING = "retiring"
    #: the endpoint is cancelling its job (idle, lost agent, or shutdown).
    RELEASING = "releasing"
    #: the job ended; nothing more is expected of it.
    GONE = "gone"

    @property
    def has_job(self) -> bool:
        """A job exists whose state is worth polling."""
        return self not in (BlockState.SUBMITTING, BlockState.GONE)

    @property
    def attached(self) -> bool:
        """Its agent is connected and the engine holds the block."""
        return self in (BlockState.CONNECTED, BlockState.RETIRING)


@dataclass
class BlockRecord:
    """One block as the manager tracks it (mutated under the manager's lock only).

    Attributes:
        block_id: the endpoint's id (also the agent's zmq identity and directory name).
        token: the secret its agent must present.
        directory: where its token, submit script, job output and agent log are kept.
        created: when it was requested (engine clock).
        state: its life stage.
        job_id: the batch job id, once submitted.
        job_state: the provider's last word on the job (PENDING, RUNNING, ...).
        nodes: its nodes, once its agent said hello.
        end_time: when no task may run on it any more (engine clock); None for no limit.
        last_seen: the last message from its agent (engine clock).
        running_since: when the provider first saw the job running (engine clock).
        idle_since: since when it has run no task (engine clock); None while busy.
        excluded: its failed nodes, with why (no task is placed on them any more).
    """

    block_id: str
    token: str = dataclasses.field(repr=False)
    directory: Path
    created: float
    state: BlockState = BlockState.SUBMITTING
    job_id: str = ""
    job_state: str = ""
    nodes: tuple[str, ...] = ()
    end_time: float | None = None
    last_seen: float = 0.0
    running_since: float | None = None
    idle_since: float | None = None
    excluded: dict[str, str] = dataclasses.field(default_factory=dict)

    def copy(self) -> BlockRecord:
        """A detached copy (for status snapshots)."""
        return dataclasses.replace(self, excluded=dict(self.excluded))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types, without the token."""
        out = dataclasses.asdict(self)
        del out["token"]
        out["state"] = self.state.value
        out["directory"] = str(self.directory)
        out["nodes"] = list(self.nodes)
        return out
