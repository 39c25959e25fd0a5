"""Data out of band on the Slurm backend: ProxyStore proxies and fsspec staging in blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk import Executor, MPIFunction, ResourceSpec
from mpiengine_sdk.proxies import proxy_large_results
from tests.integration.test_proxies import blob, digest, is_proxy, redis_port, redis_store
from tests.integration.test_slurm_blocks import (  # noqa: F401 (conf: the cluster fixture)
    conf,
    config,
    no_jobs_left,
)
from tests.integration.test_staging import ftp

pytestmark = pytest.mark.slurm

__all__ = ["ftp", "redis_port"]  # fixtures used by name


def test_proxies_and_staging_in_a_slurm_block(
    request: pytest.FixtureRequest, tmp_path: Path, redis_port: int, ftp: tuple[str, Path]
) -> None:
    request.getfixturevalue("conf")  # the running cluster, or skip (fail under CI)
    url, served = ftp
    (served / "in.txt").write_text("from ftp\n")
    endpoint = BatchEndpoint(config(nodes_per_block=2), workdir=tmp_path / "ep")
    ex = Executor(backend=endpoint)
    try:
        store = redis_store(redis_port)
        data = bytes(range(256)) * 8192
        got = ex.submit(digest, store.proxy(data)).result(timeout=300)
        assert got == (len(data), hashlib.sha256(data).hexdigest())
        back = ex.submit(proxy_large_results(blob, store, threshold=1000), 65536).result(300)
        assert is_proxy(back) and bytes(back) == bytes(range(256)) * 256
        fn = MPIFunction(
            "cat in.txt > out-$SLURM_PROCID.txt",
            stage_in={"in.txt": f"{url}/in.txt"},
            stage_out={"out-*.txt": f"{url}/slurm-out"},
        )
        spec = ResourceSpec(num_nodes=2, ranks_per_node=1)
        result = ex.submit(fn, resource_spec=spec).result(timeout=300)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        assert no_jobs_left(endpoint), "the endpoint left a batch job behind"
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (served / "slurm-out").iterdir()) == ["out-0.txt", "out-1.txt"]
    assert (served / "slurm-out" / "out-1.txt").read_text() == "from ftp\n"
    assert result.staged_bytes == 9 * 3
