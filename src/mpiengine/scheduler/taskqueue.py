"""The waiting tasks, grouped by shape so that backfill looks at each shape once.

Two tasks of the same :data:`Shape` (nodes, cores and GPUs per node, exclusivity, walltime,
and estimate: their kind, whose estimate they share, or their own) fit exactly the same free
slots, so if the first of them cannot start, neither can the others.
The queue therefore keeps, per shape, a :class:`ShapeClass`: its tasks in order, and what the
scheduler remembers of the shape's failures; and a sorted list of each class's first task (its
*class head*). The first class head is the head of the whole queue; backfill walks the class
heads in order. 100,000 waiting tasks of a few hundred shapes cost a backfill pass a few
hundred steps at most, and it is FIFO among equal shapes by construction.
"""

from __future__ import annotations

import math

from .model import TaskRequest
from .sortedlist import SortedList

__all__ = [
    "Eff",
    "Entry",
    "Shape",
    "ShapeClass",
    "TaskQueue",
    "covered",
    "covers",
    "shape_of",
]

# (nodes, cores per node, gpus per node, walltime or inf, exclusive, kind or own estimate (inf
# for none)): tasks of one kind share the kind's estimate, which changes as it is learned.
Shape = tuple[int, int, int, float, bool, str | float]
# A shape with its estimate as of now (the smaller of estimate and walltime; inf: unknown).
Eff = tuple[int, int, int, float, bool, float]


class ShapeClass:
    """The waiting tasks of one shape, in order, and the failure memos of the shape.

    The memos live here rather than in dicts keyed by shape: a shape is a tuple whose hash is
    recomputed at every lookup, and backfill consults them for every shape it walks.

    Attributes:
        id: its number in the queue (never reused).
        shape: the shape.
        tasks: its waiting tasks' entries, in order.
        failed_at: the scheduler tick at which the shape last failed under ``failed_res``.
        failed_res: the reservation (compared by identity) of that failure.
        failed_free: the tick at which it last failed whatever the reservation (-1: never).
        exclusive: whether the shape is exclusive (0 or 1, an index).
        failed_est: the estimate it had then (a shorter one may fit that reservation).
        exclusive: whether the shape is exclusive (0 or 1, an index).
        size: what backfill compares with the free room first: the nodes if exclusive (wholly
            free nodes in one block), else the cores per node (free cores on one node).
        kind: the kind whose estimate its tasks share, or None.
        fixed: without a kind, their estimate: the smaller of their own and the walltime
            (inf: unknown).
        nc: (nodes, cores per node), to compare with the head's.
    """

    __slots__ = (
        "exclusive",
        "failed_at",
        "failed_est",
        "failed_free",
        "failed_res",
        "id",
        "kind",
        "fixed",
        "nc",
        "shape",
        "size",
        "tasks",
    )

    def __init__(self, shape: Shape) -> None:
        self.id = 0  # set by the queue
        self.shape = shape
        self.exclusive = int(shape[4])
        self.size = shape[0] if shape[4] else shape[1]
        self.tasks: SortedList[Entry] = SortedList()
        self.failed_at = -1
        self.failed_res: object = None
        self.failed_est = math.inf
        self.failed_free = -1
        key = shape[5]
        self.kind = key if isinstance(key, str) else None
        self.fixed = math.inf if isinstance(key, str) else min(key, shape[3])
        self.nc = (shape[0], shape[1])


# (order key, sequence number, task id, class id): (key, seq) is unique, so the rest is never
# compared. The class id rides along so that a scan needs no lookup by shape.
Entry = tuple[float, int, str, int]


def shape_of(req: TaskRequest) -> Shape:
    """What decides where ``req`` fits: its shape."""
    walltime = math.inf if req.walltime is None else req.walltime
    key: str | float
    if req.kind is not None:
        key = req.kind
    else:
        key = math.inf if req.estimate is None else req.estimate
    return (req.num_nodes, req.cores_per_node, req.gpus_per_node, walltime, req.exclusive, key)


def covers(small: Eff, big: Eff) -> bool:
    """Whether ``big`` needs at least what ``small`` needs in every respect: if ``small`` cannot
    start, neither can ``big``.

    Exclusive is harder than shared with the same or fewer cores and GPUs (a wholly free
    node of a block fitting the larger request also fits the smaller), but not than shared
    with more cores (partly used nodes may have them). No walltime (inf) is not simply the
    longest: such a task may still start on a block that ends before ``now + walltime`` of a
    finite one, so only another no-walltime shape covers it. A longer estimate never ends by
    a reservation that a shorter one misses, and an unknown one (inf) never does.
    """
    if small[4] and not big[4]:
        return False
    if big[3] == math.inf and small[3] != math.inf:
        return False
    return (
        small[0] <= big[0]
        and small[1] <= big[1]
        and small[2] <= big[2]
        and small[3] <= big[3]
        and small[5] <= big[5]
    )


def covered(failed: list[Eff], eff: Eff) -> bool:
    """Whether any of ``failed`` is covered by ``eff`` (:func:`covers`, inlined: hot)."""
    n, c, g, walltime, exclusive, estimate = eff
    for small in failed:
        if small[4] and not exclusive:
            continue
        if walltime == math.inf and small[3] != math.inf:
            continue
        if (
            small[0] <= n
            and small[1] <= c
            and small[2] <= g
            and small[3] <= walltime
            and small[5] <= estimate
        ):
            return True
    return False


class TaskQueue:
    """Waiting tasks in order of their :data:`Entry` (key, sequence, id, class id), by shape.

    Attributes (read by the scheduler, changed only through the methods):
        requests: task id -> request of each waiting task.
        entries: task id -> its entry.
        classes: class id -> the :class:`ShapeClass` of each shape with a waiting task.

    Entries hold a class id rather than the class, and requests and entries are kept apart
    rather than paired: so the 100,000 entries of a full queue hold no reference to a
    container and the garbage collector untracks them, instead of walking 200,000 more
    objects in each full collection.
    """

    __slots__ = (
        "_by_shape",
        "_heads",
        "_next_id",
        "_node_counts",
        "classes",
        "entries",
        "requests",
        "waiting_nodes",
    )

    def __init__(self) -> None:
        self.requests: dict[str, TaskRequest] = {}
        self.entries: dict[str, Entry] = {}
        self.classes: dict[int, ShapeClass] = {}
        self._by_shape: dict[Shape, ShapeClass] = {}  # the same classes by shape
        self._next_id = 0
        self._heads: SortedList[Entry] = SortedList()  # the first entry of each class
        self._node_counts: dict[int, int] = {}  # num_nodes of waiting tasks -> how many
        self.waiting_nodes = 0  # sum of num_nodes of waiting tasks

    def __len__(self) -> int:
        return len(self.requests)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self.requests

    def request(self, task_id: str) -> TaskRequest:
        """The request of a waiting task (KeyError if not waiting)."""
        return self.requests[task_id]

    def largest_nodes(self) -> int:
        """The most nodes one waiting task needs (0 if none waits)."""
        return max(self._node_counts, default=0)

    def add(self, key: float, seq: int, req: TaskRequest) -> None:
        """Queue ``req`` (not yet waiting) at order ``(key, seq)``; ``seq`` is unique."""
        shape = shape_of(req)
        cls = self._by_shape.get(shape)
        if cls is None:
            self._next_id += 1
            cls = self._by_shape[shape] = self.classes[self._next_id] = ShapeClass(shape)
            cls.id = self._next_id
        entry = (key, seq, req.task_id, cls.id)
        self.requests[req.task_id] = req
        self.entries[req.task_id] = entry
        counts = self._node_counts
        counts[req.num_nodes] = counts.get(req.num_nodes, 0) + 1
        self.waiting_nodes += req.num_nodes
        tasks = cls.tasks
        if not tasks:
            tasks.add(entry)
            self._heads.add(entry)
            return
        head = tasks.first()
        tasks.add(entry)
        if entry < head:
            self._heads.remove(head)
            self._heads.add(entry)

    def remove(self, task_id: str) -> TaskRequest:
        """Take a task out of the queue.

        Raises:
            KeyError: it is not waiting.
        """
        req = self.requests.pop(task_id)
        entry = self.entries.pop(task_id)
        self.waiting_nodes -= req.num_nodes
        counts = self._node_counts
        left = counts[req.num_nodes] - 1
        if left:
            counts[req.num_nodes] = left
        else:
            del counts[req.num_nodes]
        cls = self.classes[entry[3]]
        tasks = cls.tasks
        if tasks.first() is not entry:
            tasks.remove(entry)
            return req
        # The class head (always so when a task starts): no search in its class.
        tasks.pop_first()
        heads = self._heads
        heads.remove(entry)
        successor = tasks.peek()
        if successor is not None:
            heads.add(successor)
        else:
            del self._by_shape[cls.shape]
            del self.classes[cls.id]
        return req

    def first(self) -> Entry | None:
        """The entry of the queue's head task, or None if nothing waits."""
        return self._heads.peek()

    def class_heads(self, count: int) -> list[Entry]:
        """The first ``count`` class heads in order (the queue's head first)."""
        return self._heads.head(count)
