"""Per-user rate limits: a token bucket of tasks per principal."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float


class RateLimiter:
    """Grants at most ``rate`` tasks per second per user, in bursts of up to ``burst``.

    Args:
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def grant(
        self, user: str, count: int, rate: float | None, burst: float | None
    ) -> tuple[int, float]:
        """Take up to ``count`` tokens from ``user``'s bucket.

        The tasks of a batch are granted one by one, so a batch is cut where the bucket runs
        dry (how the client happened to batch its submits does not matter).

        Returns:
            (tasks granted, seconds until the next token when not all were granted).
        """
        if rate is None or count <= 0:
            return count, 0.0
        size = burst if burst is not None else max(rate, 1.0)
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None or bucket.rate != rate or bucket.burst != size:
            bucket = self._buckets[user] = _Bucket(rate, size, size, now)
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.stamp) * bucket.rate)
        bucket.stamp = now
        granted = min(count, int(bucket.tokens))
        bucket.tokens -= granted
        if granted == count:
            return granted, 0.0
        return granted, round(max(1.0 - bucket.tokens, 0.0) / bucket.rate, 3) or 0.001
