"""Data out of band with ProxyStore: proxies as arguments and results, real stores.

A Redis server started (and ended, by pid) by these tests, the file connector on a shared
folder, and a 200 MB object through the relay by proxy while the relay's payload limit is 1 MB.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine_sdk import Executor, PayloadTooLarge
from mpiengine_sdk.proxies import proxy_large_results
from tests.conftest import require

MB = 1_000_000


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def require_proxystore() -> None:
    require(
        _has("proxystore") and _has("redis"),
        "proxystore and redis (Python)",
        "pip install -e './sdk[proxystore]'",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    require_proxystore()
    exe = shutil.which("redis-server")
    require(exe is not None, "redis-server", "apt-get install redis-server (ci/redis.sh)")
    assert exe is not None
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def redis_store(port: int):
    from proxystore.connectors.redis import RedisConnector
    from proxystore.store import Store

    return Store(f"redis-{uuid.uuid4().hex[:8]}", RedisConnector("127.0.0.1", port), register=True)


def file_store(folder: Path):
    from proxystore.connectors.file import FileConnector
    from proxystore.store import Store

    return Store(f"file-{uuid.uuid4().hex[:8]}", FileConnector(str(folder)), register=True)


def digest(data) -> tuple[int, str]:
    """Runs on the endpoint: touches the whole argument."""
    return len(data), hashlib.sha256(bytes(data)).hexdigest()


def blob(n: int) -> bytes:
    """Runs on the endpoint: a large result."""
    return bytes(range(256)) * (n // 256)


def is_proxy(value) -> bool:
    from proxystore.proxy import Proxy, is_resolved

    return isinstance(value, Proxy) and not is_resolved(value)


def check_both_ways(ex: Executor, store) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    proxy = store.proxy(data)
    future = ex.submit(digest, proxy)
    assert future.result(timeout=120) == (len(data), hashlib.sha256(data).hexdigest())
    assert future.message is not None
    big = ex.submit(proxy_large_results(blob, store, threshold=100_000), 2 * 1024 * 1024)
    value = big.result(timeout=120)
    assert big.message is not None and len(big.message.value) < 10_000  # a proxy came back
    assert is_proxy(value)
    assert bytes(value) == bytes(range(256)) * (2 * 1024 * 1024 // 256)
    small = ex.submit(proxy_large_results(blob, store, threshold=100_000), 1024).result(120)
    assert type(small) is bytes and len(small) == 1024


def test_file_connector_on_a_shared_folder(tmp_path):
    require_proxystore()
    with Executor(nodes=1, workdir=tmp_path / "ep") as ex:
        check_both_ways(ex, file_store(tmp_path / "store"))


def test_redis_connector(tmp_path, redis_port):
    with Executor(nodes=1, workdir=tmp_path / "ep") as ex:
        check_both_ways(ex, redis_store(redis_port))


def test_proxy_large_results_checks_its_arguments():
    with pytest.raises(TypeError, match="store must be a proxystore.store.Store, not dict"):
        proxy_large_results(blob, {})
    require_proxystore()

    class FakeStore:
        def config(self):
            return {}

    with pytest.raises(TypeError, match=r"threshold must be an int >= 0 \(bytes\), not -1"):
        proxy_large_results(blob, FakeStore(), threshold=-1)


@pytest.mark.relay
@pytest.mark.slow
def test_200_mb_through_a_1_mb_relay_by_proxy(tmp_path, redis_port):
    from tests.integration.test_relay_e2e import require_broker
    from tests.support.relay_harness import RelayHarness

    require_broker()
    with RelayHarness(tmp_path / "relay", relay_options={"max_payload_bytes": MB}) as harness:
        owner = harness.user("proxy")
        endpoint = harness.endpoint("ep", owner, backend_options={"nodes": 1})
        endpoint.start()
        try:
            with Executor(endpoint_id=endpoint.endpoint_id, config=owner.client_config) as ex:
                with pytest.raises(PayloadTooLarge):
                    ex.submit(digest, b"x" * (2 * MB))  # the limit is real
                store = redis_store(redis_port)
                data = bytes(range(256)) * (200 * MB // 256)
                proxy = store.proxy(data)
                got = ex.submit(digest, proxy).result(timeout=300)
                assert got == (len(data), hashlib.sha256(data).hexdigest())
                back = ex.submit(proxy_large_results(blob, store), 200 * MB).result(300)
                assert is_proxy(back)
                assert len(back) == 200 * MB // 256 * 256
        finally:
            endpoint.stop()
