"""The endpoint's outgoing results: stored first, published in batches, then acknowledged.

Terminal results are written to the LocalStore (unsent) as soon as the engine reports them and
published in batch messages with publisher confirms; once the broker confirmed a batch, its
results are marked sent and every task delivery waiting only for them is acknowledged.

RUNNING updates are progress, not results: they are held for ``progress_delay`` seconds and
dropped if the task finishes meanwhile, so a short task costs one message instead of two.
"""

from __future__ import annotations

from collections.abc import Collection

from mpiengine.service.deliveries import Deliveries
from mpiengine.service.store import LocalStore
from mpiengine_sdk.errors import PayloadTooLarge
from mpiengine_sdk.relayclient.protocol import EXCHANGE_IN, KEY_RESULT, encode_frame
from mpiengine_sdk.relayclient.transport import Channel
from mpiengine_sdk.states import TaskState
from mpiengine_sdk.wire import ResultMessage, encode_result, replace

__all__ = ["ResultOutbox"]

_BATCH_RESULTS = 1000
_BATCH_BYTES = 8 * 1024 * 1024
_TAIL = 4096


class ResultOutbox:
    """Results on their way to the relay.

    Args:
        store: where results wait until the broker confirms them.
        deliveries: the task deliveries to acknowledge as results are confirmed.
        endpoint_id: this endpoint (the relay checks the sender owns it).
        max_result_bytes: a larger result becomes a FAILED PayloadTooLarge.
        progress_delay: seconds a RUNNING update is held back.
    """

    def __init__(
        self,
        store: LocalStore,
        deliveries: Deliveries,
        endpoint_id: str,
        max_result_bytes: int,
        progress_delay: float = 0.05,
    ) -> None:
        self.store = store
        self.deliveries = deliveries
        self.header = {"type": "results", "endpoint_id": endpoint_id}
        self.max_result_bytes = max_result_bytes
        self.progress_delay = progress_delay
        self._results: list[tuple[str, bytes]] = []
        self._progress: dict[str, tuple[float, bytes]] = {}

    def encode(self, msg: ResultMessage) -> bytes:
        """The wire line of a result, replaced by a FAILED PayloadTooLarge when too big."""
        line = encode_result(msg)
        if len(line) <= self.max_result_bytes:
            return line
        error = PayloadTooLarge(len(line), self.max_result_bytes)
        smaller = replace(
            msg,
            state=TaskState.FAILED,
            value=b"",
            error_payload=b"",
            stdout=msg.stdout[-_TAIL:],
            stderr=msg.stderr[-_TAIL:],
            error_type="PayloadTooLarge",
            error_message=f"the task's result: {error}",
        )
        return encode_result(smaller)

    def add_results(self, results: list[tuple[str, bytes]]) -> None:
        """Store new terminal results (unsent) and queue them; their progress is dropped."""
        if not results:
            return
        self.store.put(results)
        self._results.extend(results)
        for tid, _ in results:
            self._progress.pop(tid, None)

    def add_progress(self, msg: ResultMessage, now: float) -> None:
        """Queue a RUNNING update, due ``progress_delay`` from ``now``."""
        self._progress[msg.task_id] = (now + self.progress_delay, encode_result(msg))

    def reload(self) -> None:
        """After (re)connecting: queue every result the broker has not confirmed."""
        self._results = self.store.unsent()

    def next_due(self, now: float) -> float | None:
        """Seconds until the next progress update is due (None when there is none)."""
        if not self._progress:
            return None
        return max(0.0, min(due for due, _ in self._progress.values()) - now)

    def publish(self, channel: Channel, running: Collection[str], now: float) -> None:
        """Publish queued results (confirmed, then acknowledged) and due progress updates.

        Raises:
            BackendError: the connection failed; unconfirmed results stay unsent in the store.
        """
        due = [tid for tid, (when, _) in self._progress.items() if when <= now]
        progress = [self._progress.pop(tid)[1] for tid in due if tid in running]
        for tid in due:
            self._progress.pop(tid, None)
        results, self._results = self._results, []
        lines: list[bytes] = list(progress)
        ids: list[str] = []
        size = sum(len(p) for p in progress)
        for i, (tid, line) in enumerate(results):
            lines.append(line)
            ids.append(tid)
            size += len(line)
            if len(lines) >= _BATCH_RESULTS or size >= _BATCH_BYTES or i == len(results) - 1:
                channel.publish(EXCHANGE_IN, KEY_RESULT, encode_frame(self.header, lines))
                self.store.mark_sent(ids)
                for tag in self.deliveries.settle(ids):
                    channel.ack(tag)
                lines, ids, size = [], [], 0
        if lines:  # progress only: no need to persist it
            body = encode_frame(self.header, lines)
            channel.publish(EXCHANGE_IN, KEY_RESULT, body, persistent=False)
