"""One block's slots: free cores and GPUs per node, indexed for fast fitting, and its running tasks.

Nodes are numbered 0..N-1 in the block's node order. Per node the pool keeps the sorted lists of
its free core and GPU ids (a task takes the lowest); nodes with a free core sit in a bucket keyed
by ``(free cores, free gpus)``, and the non-empty keys are kept sorted. A request needing
``(c, g)`` per node therefore scans only keys >= ``(c, g)``: the partly used nodes with the
fewest spare cores first (best fit), wholly free nodes last, which keeps whole nodes for large
tasks. Every choice is deterministic (sets of ints iterate in a fixed order).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from itertools import filterfalse, islice

from .model import BlockInfo, TaskRequest
from .sortedlist import SortedList

__all__ = ["BlockPool", "Running"]

Need = tuple[int, int]


class Running:
    """A running task's holding in one pool: its nodes and, per node, the core and GPU ids,
    and when it is expected to end."""

    __slots__ = (
        "blind",
        "bound",
        "cores",
        "end",
        "estimate",
        "fixes",
        "gpus",
        "kind",
        "ncores",
        "ngpus",
        "nodes",
        "seq",
        "start",
        "task_id",
        "whole",
    )

    def __init__(
        self,
        task_id: str,
        nodes: tuple[int, ...],
        cores: tuple[tuple[int, ...], ...],
        gpus: tuple[tuple[int, ...], ...],
        need: Need,
        whole: bool,
        end: float,
        seq: int,
    ) -> None:
        self.task_id = task_id
        self.nodes = nodes
        self.cores = cores
        self.gpus = gpus
        self.ncores, self.ngpus = need
        self.whole = whole  # took every core of each node: nodes were wholly free
        # Estimated end: start + estimate (the smaller of prediction and walltime), else the
        # block's end, or inf; blind when nobody knows its runtime (no walltime, no estimate)
        # and the end is only that bound.
        self.end = end
        self.seq = seq
        self.blind = False
        # Set by Estimates.started: start time, estimate (inf: none), kill time (inf: none),
        # corrections so far, kind.
        self.start = 0.0
        self.estimate = math.inf
        self.bound = math.inf
        self.fixes = 0
        self.kind: str | None = None


class BlockPool:
    """The free slots and running tasks of one block."""

    def __init__(self, info: BlockInfo, tick: int) -> None:
        self.info = info
        self.dirty = tick  # the scheduler's tick when slots were last freed here
        count = len(info.nodes)
        self.size = count
        self.cpn = cpn = info.cores_per_node
        self.gpn = gpn = info.gpus_per_node
        self.full_key: Need = (cpn, gpn)
        # Free core and GPU ids per node, sorted. A wholly free node may share one list with
        # others (these are never changed in place); a partly used node owns its. A node held
        # whole by one task keeps the (full) lists it had when it was free: nothing reads them
        # until that task ends and the node is free again (only nodes in a bucket are taken,
        # and only the nodes of partly-held tasks are projected), which saves a loop over the
        # nodes of every large task at start and at end.
        self._all_c = list(range(cpn))
        self._all_g = list(range(gpn))
        self.cores = [self._all_c] * count
        self.gpus = [self._all_g] * count
        self.buckets: dict[Need, set[int]] = {self.full_key: set(range(count))}
        self.keys: list[Need] = [self.full_key]
        self.free_cores = cpn * count
        self.excluded: set[int] = set()  # failed nodes: never offered again
        self.usable = count  # nodes not excluded
        self.tasks: dict[str, Running] = {}
        self.ends: SortedList[tuple[float, int, str]] = SortedList()  # (end, seq, task id)
        self._ids = [tuple(range(k)) for k in range(max(cpn, gpn) + 1)]

    # -- questions -------------------------------------------------------------------------

    def need(self, req: TaskRequest) -> Need | None:
        """Cores and GPUs ``req`` takes per node here; None if this block can never hold it."""
        c, g = req.cores_per_node, req.gpus_per_node
        if req.num_nodes > self.usable or c > self.cpn or g > self.gpn:
            return None
        return self.full_key if req.exclusive else (c, g)

    def time_ok(self, start: float, walltime: float | None) -> bool:
        """Whether a task starting at ``start`` ends within the block's walltime."""
        end = self.info.end_time
        if end is None:
            return True
        return start < end if walltime is None else start + walltime <= end

    def free_nodes(self) -> int:
        """Nodes wholly free now."""
        return len(self.buckets.get(self.full_key, ()))

    def collect(
        self, n: int, need: Need, exclude: frozenset[int] | None
    ) -> tuple[list[int], int, bool]:
        """Up to ``n`` nodes that fit ``need`` now, best fit first, skipping ``exclude``.

        Returns:
            the nodes (fewer than ``n`` when they do not fit), how many of them are wholly
            free, and (meaningful only when fewer than ``n``) whether a fitting node was
            skipped because it is in ``exclude``.
        """
        c, g = need
        out: list[int] = []
        whole = 0
        skipped = False
        keys = self.keys
        for k in range(bisect_left(keys, need), len(keys)):
            key = keys[k]
            if key[1] < g:
                continue
            bucket = self.buckets[key]
            before = len(out)
            if exclude is None:
                out.extend(islice(bucket, n - before))
            else:
                # In bucket order, skipping excluded nodes (at C speed: the reserved nodes
                # of a waiting head pile up in the free buckets).
                out.extend(islice(filterfalse(exclude.__contains__, bucket), n - before))
                if len(out) < n and not skipped:  # the whole bucket was looked at
                    skipped = not exclude.isdisjoint(bucket)
            if key == self.full_key:
                whole = len(out) - before
            if len(out) >= n:
                break
        return out, whole, skipped

    # -- changes ---------------------------------------------------------------------------

    def _move(self, i: int, old: Need, new: Need) -> None:
        # A node with no free core can hold nothing (every task takes >= 1 core): no bucket.
        if old[0]:
            bucket = self.buckets[old]
            bucket.discard(i)
            if not bucket:
                del self.buckets[old]
                del self.keys[bisect_left(self.keys, old)]
        if new[0]:
            found = self.buckets.get(new)
            if found is None:
                self.buckets[new] = {i}
                insort(self.keys, new)
            else:
                found.add(i)

    def take(
        self, task_id: str, nodes: list[int], need: Need, end: float, seq: int
    ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        """Give ``nodes`` (which fit ``need``) to a task estimated to end at ``end``.

        Returns:
            per node, the core ids and the GPU ids taken (the lowest free ones).
        """
        c, g = need
        if c == self.cpn:
            return self._take_whole(task_id, nodes, g, end, seq)
        cids, gids = [], []
        for i in nodes:
            free_c, free_g = self.cores[i], self.gpus[i]
            oc, og = len(free_c), len(free_g)
            cids.append(tuple(free_c[:c]))
            gids.append(tuple(free_g[:g]))
            if oc == self.cpn:  # the list may be shared: replace, do not change it
                self.cores[i] = free_c[c:]
                self.gpus[i] = free_g[g:]
            else:
                del free_c[:c]
                del free_g[:g]
            self._move(i, (oc, og), (oc - c, og - g))
        cores, gpus = tuple(cids), tuple(gids)
        self._add(Running(task_id, tuple(nodes), cores, gpus, need, False, end, seq))
        return cores, gpus

    def _take_whole(
        self, task_id: str, nodes: list[int], g: int, end: float, seq: int
    ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        # Every core of wholly free nodes: batch the bucket update (large tasks, 64+ nodes).
        # Their free lists are left as they are (see __init__).
        full = self.buckets[self.full_key]
        full.difference_update(nodes)
        if not full:
            del self.buckets[self.full_key]
            self.keys.pop()  # the full key is the largest
        count = len(nodes)
        cores = (self._ids[self.cpn],) * count
        gpus = (self._ids[g],) * count
        self._add(Running(task_id, tuple(nodes), cores, gpus, (self.cpn, g), True, end, seq))
        return cores, gpus

    def _add(self, run: Running) -> None:
        self.tasks[run.task_id] = run
        self.ends.add((run.end, run.seq, run.task_id))
        self.free_cores -= run.ncores * len(run.nodes)

    def give(self, task_id: str, tick: int) -> None:
        """Free the slots of a running task (at the scheduler's ``tick``).

        Raises:
            KeyError: the task is not running here.
        """
        run = self.tasks.pop(task_id)
        self.dirty = tick
        self.ends.remove((run.end, run.seq, task_id))
        c, g = run.ncores, run.ngpus
        excluded = self.excluded
        back = run.nodes
        if excluded and not excluded.isdisjoint(back):  # slots on failed nodes stay out
            back = tuple(i for i in back if i not in excluded)
        self.free_cores += c * len(back)
        if run.whole:  # the nodes' free lists are still the full ones (see __init__)
            if not back:
                return
            full = self.buckets.get(self.full_key)
            if full is None:
                self.buckets[self.full_key] = set(back)
                self.keys.append(self.full_key)
            else:
                full.update(back)
            return
        for i, ci, gi in zip(run.nodes, run.cores, run.gpus, strict=True):
            free_c, free_g = self.cores[i], self.gpus[i]
            oc, og = len(free_c), len(free_g)
            free_c.extend(ci)
            free_c.sort()
            if gi:
                free_g.extend(gi)
                free_g.sort()
            if not excluded or i not in excluded:
                self._move(i, (oc, og), (oc + c, og + g))

    def exclude(self, i: int) -> list[str]:
        """Never offer node ``i`` again (it failed); its running tasks keep their slots.

        Returns:
            the ids of the tasks running on it, in start order (kill them; their slots on
            the other nodes come back as usual when they are given back).
        """
        if i in self.excluded:
            return []
        self.excluded.add(i)
        self.usable -= 1
        # Only a node in a bucket has free slots (a node held whole keeps stale full lists).
        key = (len(self.cores[i]), len(self.gpus[i]))
        bucket = self.buckets.get(key)
        if bucket is not None and i in bucket:
            self._move(i, key, (0, 0))
            self.free_cores -= key[0]
        return [run.task_id for run in self.tasks.values() if i in run.nodes]

    # -- reservations ----------------------------------------------------------------------

    def reestimate(self, run: Running, end: float) -> None:
        """Move a running task's estimated end (it outlived its estimate, or one was learned)."""
        self.ends.remove((run.end, run.seq, run.task_id))
        run.end = end
        self.ends.add((end, run.seq, run.task_id))

    def earliest(
        self, n: int, need: Need, now: float, walltime: float | None, limit: float
    ) -> tuple[float, list[int], bool, bool] | None:
        """When ``n`` nodes fitting ``need`` are first free, from running tasks' estimated ends.

        Walks running tasks in end order, adding back their slots, until ``n`` nodes fit. The
        result is exact for the estimates (a node fits iff its own free cores and GPUs do).
        The nodes are those that come to fit by then, completed with nodes that fit now: so
        the fewest of the nodes free now are reserved, and the others may take tasks that run
        past the reservation (reserving the free nodes first leaves them idle for long: 1.09
        x the area bound on the packing benchmark, against 1.05).

        Args:
            n: nodes wanted.
            need: cores and GPUs per node.
            now: the current time.
            walltime: the task's walltime (the block must outlast start + walltime).
            limit: give up beyond this time (a better block was already found).

        Returns:
            (time, n nodes, sure, blind): sure when the time rests on walltimes alone (the
            tasks it waits for are killed by then), not on predictions; blind, with time
            ``math.inf``, when tasks of unknown
            runtime (no walltime, no estimate: they end by their block's end at best) must
            end first; the nodes are then the fitting ones and then the lowest-numbered
            others, a stable choice. None when this block cannot start the task within its
            walltime or by ``limit``.
        """
        chosen, _, _ = self.collect(n, need, None)
        if len(chosen) >= n:
            return (now, chosen, True, False) if self.time_ok(now, walltime) else None
        seen = set(chosen)
        free = len(chosen)
        proj: dict[int, tuple[int, int]] = {}
        sure = True
        # The latest start within the block's walltime (time_ok, inlined: ends only grow).
        latest = math.inf if self.info.end_time is None else self.info.end_time
        if walltime is not None:
            latest -= walltime
        tasks, excluded = self.tasks, self.excluded
        for end, _seq, task_id in self.ends:
            if end > limit:
                break
            run = tasks[task_id]
            if run.blind:  # unknown runtimes from here on (they sort last: at the bound)
                break
            if end > latest or (walltime is None and end == latest):
                return None
            if sure and end < run.bound:
                sure = False
            if run.whole:  # wholly held nodes come back wholly free
                back = [i for i in run.nodes if i not in excluded] if excluded else run.nodes
                chosen.extend(back)
                seen.update(back)
            else:
                self._project(run, need, proj, seen, chosen)
            if len(chosen) >= n:
                # Reserve the nodes that come free by then first, and of the free ones only
                # what is missing: the free nodes left out may run tasks that end after it.
                return end, (chosen[free:] + chosen[:free])[:n], sure, False
        if limit < math.inf:
            return None
        for i in range(self.size):
            if len(chosen) >= n:
                break
            if i not in seen and i not in self.excluded:
                chosen.append(i)
        return math.inf, chosen, False, True

    def _project(
        self,
        run: Running,
        need: Need,
        proj: dict[int, tuple[int, int]],
        seen: set[int],
        chosen: list[int],
    ) -> None:
        """Add back ``run``'s slots to the projected free counts ``proj``; append to
        ``chosen`` (and ``seen``) the nodes that come to fit ``need``."""
        c, g = need
        for i in run.nodes:
            pc, pg = proj.get(i) or (len(self.cores[i]), len(self.gpus[i]))
            pc += run.ncores
            pg += run.ngpus
            proj[i] = (pc, pg)
            if pc >= c and pg >= g and i not in seen and i not in self.excluded:
                seen.add(i)
                chosen.append(i)
