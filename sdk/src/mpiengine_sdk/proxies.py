"""Data out of band: large values travel through a ProxyStore store, not through messages.

The relay caps payloads (as Globus Compute caps its at 10 MB), so a large argument or result
should not ride in the task or result message. ProxyStore (PyPI ``proxystore``) proxies do this
with no change to the function:

- an argument: pass ``store.proxy(value)`` instead of ``value``; only the small proxy is
  serialised into the task, and the endpoint resolves it from the store the first time the
  function touches it (the store must be reachable from the endpoint: a shared directory for
  the file connector, a Redis server for the Redis connector, ...);
- a result: wrap the function with :func:`proxy_large_results`; on the endpoint, a return value
  whose pickle is larger than the threshold is put into the store and a proxy comes back
  instead, which resolves on first use in the client.

Install with ``pip install 'mpiengine-sdk[proxystore]'`` (the Redis connector also needs
``redis``).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

__all__ = ["ProxyLargeResults", "proxy_large_results"]


class ProxyLargeResults:
    """A picklable wrapper: ``fn``'s value, or a proxy of it when it is larger than a threshold.

    Attributes:
        fn: the wrapped function.
        store_config: the ProxyStore store's config (how the endpoint reaches the store).
        threshold: the largest pickled size (bytes) returned inline.
    """

    def __init__(self, fn: Callable[..., Any], store_config: Any, threshold: int) -> None:
        self.fn = fn
        self.store_config = store_config
        self.threshold = threshold
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn``; put a large value into the store and return its proxy."""
        value = self.fn(*args, **kwargs)
        try:
            size = len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # not picklable here: let the task's own serialiser report it
            return value
        if size <= self.threshold:
            return value
        from proxystore.store import get_or_create_store

        store = get_or_create_store(self.store_config)
        return store.proxy(value)


def proxy_large_results(
    fn: Callable[..., Any], store: Any, *, threshold: int = 1_000_000
) -> ProxyLargeResults:
    """Wrap ``fn`` so that a result larger than ``threshold`` bytes comes back as a proxy.

    Args:
        fn: the function to run on the endpoint.
        store: a ``proxystore.store.Store`` reachable from both the endpoint and the client.
        threshold: results whose pickle is larger than this many bytes go through the store.

    Returns:
        A callable to submit in place of ``fn``.

    Raises:
        TypeError: ``store`` has no ``config()`` (not a ProxyStore store) or ``threshold`` is
            not an int >= 0.
    """
    config = getattr(store, "config", None)
    if not callable(config):
        raise TypeError(f"store must be a proxystore.store.Store, not {type(store).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise TypeError(f"threshold must be an int >= 0 (bytes), not {threshold!r}")
    return ProxyLargeResults(fn, config(), threshold)
