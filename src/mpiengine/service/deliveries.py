"""Which task deliveries may be acknowledged.

One delivery is one batch of tasks. It is acknowledged when every task in it has a result the
broker has confirmed; a task delivered twice (a redelivery while the first copy still runs)
settles both deliveries with its one result. Pure bookkeeping: no broker, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Deliveries"]


class Deliveries:
    """Delivery tags waiting for task results."""

    def __init__(self) -> None:
        self._waiting: dict[int, set[str]] = {}
        self._by_task: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, tag: int, task_ids: Iterable[str]) -> bool:
        """Record a delivery waiting for ``task_ids``.

        Returns:
            True when it waits for nothing (acknowledge it now).
        """
        ids = set(task_ids)
        if not ids:
            return True
        self._waiting[tag] = ids
        for tid in ids:
            self._by_task.setdefault(tid, set()).add(tag)
        return False

    def settle(self, task_ids: Iterable[str]) -> list[int]:
        """These tasks' results are confirmed.

        Returns:
            The tags that now wait for nothing, in ascending order.
        """
        done: list[int] = []
        for tid in task_ids:
            for tag in self._by_task.pop(tid, ()):
                waiting = self._waiting.get(tag)
                if waiting is None:
                    continue
                waiting.discard(tid)
                if not waiting:
                    del self._waiting[tag]
                    done.append(tag)
        return sorted(done)

    def clear(self) -> None:
        """Forget everything (the channel is gone; the broker requeued every delivery)."""
        self._waiting.clear()
        self._by_task.clear()
