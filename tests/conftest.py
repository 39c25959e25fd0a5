"""Shared test helpers: real MPI, real Slurm, real RabbitMQ, or a loud failure under CI."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, what: str, how: str) -> None:
    """Skip locally, but FAIL under CI=true, when a real dependency is missing."""
    if available:
        return
    message = f"{what} is not available; {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def mpich_mpiexec() -> str | None:
    """The PyPI mpich wheel's mpiexec beside this interpreter."""
    path = Path(sys.executable).parent / "mpiexec"
    return str(path) if path.is_file() else None


@pytest.fixture
def mpi() -> str:
    """Path of the mpich wheel's mpiexec; mpi4py importable. Fails under CI when missing."""
    exe = mpich_mpiexec()
    has_mpi4py = importlib.util.find_spec("mpi4py") is not None
    require(
        exe is not None and has_mpi4py,
        "MPI (PyPI mpich wheel + mpi4py)",
        "install it with: pip install -e '.[mpi]'",
    )
    assert exe is not None
    return exe


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[object]:
    """An embedded-endpoint Executor on 4 virtual nodes x 4 cores, sandboxes under tmp_path."""
    from mpiengine_sdk.executor import Executor

    ex = Executor(nodes=4, cores_per_node=4, workdir=tmp_path / "endpoint", kill_grace=0.5)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


#: The PostgreSQL database of the relay's tests (ci/postgres.sh creates it).
POSTGRES_URL = os.environ.get(
    "MPIENGINE_TEST_POSTGRES", "postgresql://mpiengine:mpiengine@127.0.0.1:5432/mpiengine_test"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose tables land in a fresh schema, dropped afterwards. Fails under
    CI when PostgreSQL or psycopg is missing."""
    import uuid
    from urllib.parse import quote

    try:
        import psycopg

        conn = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:  # no psycopg, or no server (psycopg.OperationalError)
        require(False, f"PostgreSQL at {POSTGRES_URL} ({exc})", "run: bash ci/postgres.sh")
        raise
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
