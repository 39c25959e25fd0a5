"""A sorted list of short sorted chunks: for queues and end times of 100,000 entries.

A heap cannot list its first k entries without popping them, and one sorted Python list costs
O(n) per insert or delete (a memmove of the whole tail: 100,000 queued tasks, or the end times
of 20,000 running tasks). Chunks of at most ``2 * _LOAD`` entries give O(log n + _LOAD) insert
and delete and in-order reads.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from itertools import chain
from typing import Any, Generic, TypeVar

__all__ = ["SortedList"]

# Entries are tuples whose leading fields are unique, so the rest is never compared.
T = TypeVar("T", bound=tuple[Any, ...])

_LOAD = 512


class SortedList(Generic[T]):
    """A sorted multiset of tuples."""

    __slots__ = ("_chunks", "_maxes", "_len")

    def __init__(self) -> None:
        self._chunks: list[list[T]] = []
        self._maxes: list[T] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        return chain.from_iterable(self._chunks)

    def add(self, entry: T) -> None:
        """Insert ``entry`` in order."""
        self._len += 1
        if not self._chunks:
            self._chunks.append([entry])
            self._maxes.append(entry)
            return
        k = bisect_left(self._maxes, entry)
        if k == len(self._maxes):
            k -= 1
            self._chunks[k].append(entry)
            self._maxes[k] = entry
        else:
            insort(self._chunks[k], entry)
        chunk = self._chunks[k]
        if len(chunk) > 2 * _LOAD:
            self._chunks[k : k + 1] = [chunk[:_LOAD], chunk[_LOAD:]]
            self._maxes[k : k + 1] = [chunk[_LOAD - 1], chunk[-1]]

    def remove(self, entry: T) -> None:
        """Delete ``entry``.

        Raises:
            KeyError: it is not in the list.
        """
        k = bisect_left(self._maxes, entry)
        if k < len(self._chunks):
            chunk = self._chunks[k]
            i = bisect_left(chunk, entry)
            if i < len(chunk) and chunk[i] == entry:
                del chunk[i]
                self._len -= 1
                if not chunk:
                    del self._chunks[k]
                    del self._maxes[k]
                elif i == len(chunk):
                    self._maxes[k] = chunk[-1]
                return
        raise KeyError(entry)

    def pop_first(self) -> T:
        """Delete and return the first entry (no search: the common removal).

        Raises:
            IndexError: the list is empty.
        """
        chunk = self._chunks[0]
        entry = chunk.pop(0)
        self._len -= 1
        if not chunk:
            del self._chunks[0]
            del self._maxes[0]
        return entry

    def peek(self) -> T | None:
        """The first entry, or None if the list is empty (one call instead of two)."""
        chunks = self._chunks
        return chunks[0][0] if chunks else None

    def first(self) -> T:
        """The first entry.

        Raises:
            IndexError: the list is empty.
        """
        return self._chunks[0][0]

    def after(self, entry: T) -> T | None:
        """The first entry greater than ``entry`` (which need not be in the list), or None."""
        k = bisect_left(self._maxes, entry)
        while k < len(self._chunks):
            chunk = self._chunks[k]
            i = bisect_left(chunk, entry)
            if i < len(chunk) and chunk[i] == entry:
                i += 1
            if i < len(chunk):
                return chunk[i]
            k += 1
        return None

    def head(self, count: int) -> list[T]:
        """The first ``count`` entries (fewer if the list is shorter), in order."""
        out: list[T] = []
        for chunk in self._chunks:
            out.extend(chunk[: count - len(out)])
            if len(out) >= count:
                break
        return out
