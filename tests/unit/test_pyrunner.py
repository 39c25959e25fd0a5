"""pyrunner writes a Python task's outcome; pyoutcome reads it back without unpickling."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dill
import pytest

from mpiengine.runner.pyoutcome import read_python_outcome
from mpiengine.runner.sandbox import create_sandbox

REPO = Path(__file__).resolve().parents[2]
# The task's functions live in this module; the task process imports it like user code.
ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO)}


class CustomError(Exception):
    """A user exception that pickles."""


class UnpicklableError(Exception):
    """A user exception that dill cannot serialise (it holds a generator)."""

    def __init__(self) -> None:
        super().__init__("holds a generator")
        self.gen = (i for i in range(3))


def add(a: int, b: int = 0) -> int:
    print("adding")
    return a + b


def fail(message: str) -> None:
    raise CustomError(message)


def fail_unpicklable() -> None:
    raise UnpicklableError()


def return_generator() -> object:
    return (i for i in range(3))


def rank_sum(comm, scale: int) -> int:
    return comm.allreduce(comm.Get_rank() * scale)


def my_rank(comm) -> int:
    return comm.Get_rank()


def fail_on_rank_two(comm) -> int:
    if comm.Get_rank() == 2:
        raise ValueError("rank two is unhappy")
    return comm.Get_rank()


def fail_on_rank_one_before_allreduce(comm) -> int:
    if comm.Get_rank() == 1:
        raise ValueError("rank one left early")
    return comm.allreduce(1)  # the other ranks wait here for rank 1, which never comes


def run(sandbox: Path, fn, *args, prefix=(), flags=(), **kwargs) -> subprocess.CompletedProcess:
    (sandbox / "task.dill").write_bytes(dill.dumps((fn, args, kwargs)))
    argv = [*prefix, sys.executable, "-m", "mpiengine.runner.pyrunner", *flags, str(sandbox)]
    return subprocess.run(argv, env=ENV, cwd=sandbox, capture_output=True, text=True, timeout=120)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    return create_sandbox(tmp_path, "py")


def files(sandbox: Path) -> list[str]:
    return sorted(p.name for p in sandbox.iterdir())


def test_success_writes_the_value(sandbox: Path) -> None:
    proc = run(sandbox, add, 2, b=3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "adding\n"
    out = read_python_outcome(sandbox)
    assert out.succeeded and dill.loads(out.value) == 5
    assert out.error_type == "" and out.error_payload == b""
    assert files(sandbox) == ["task.dill", "value.dill"]  # no temporary files left


def test_exception_writes_error_json_and_payload(sandbox: Path) -> None:
    proc = run(sandbox, fail, "bad input")
    assert proc.returncode == 1
    out = read_python_outcome(sandbox)
    assert out.value is None
    assert out.error_type == "tests.unit.test_pyrunner.CustomError"
    assert out.error_message == "bad input"
    assert "in fail" in out.error_traceback and "CustomError: bad input" in out.error_traceback
    assert isinstance(dill.loads(out.error_payload), CustomError)
    assert "CustomError: bad input" in proc.stderr
    record = json.loads((sandbox / "error.json").read_text())
    assert set(record) == {"type", "message", "traceback"}


def test_builtin_exception_types_are_bare(sandbox: Path) -> None:
    run(sandbox, int, "not a number")
    out = read_python_outcome(sandbox)
    assert out.error_type == "ValueError" and "not a number" in out.error_message


def test_unpicklable_exception_has_no_payload(sandbox: Path) -> None:
    proc = run(sandbox, fail_unpicklable)
    assert proc.returncode == 1
    out = read_python_outcome(sandbox)
    assert out.error_type == "tests.unit.test_pyrunner.UnpicklableError"
    assert out.error_message == "holds a generator" and out.error_payload == b""
    assert files(sandbox) == ["error.json", "task.dill"]


def test_unserialisable_return_value_is_a_serialization_error(sandbox: Path) -> None:
    proc = run(sandbox, return_generator)
    assert proc.returncode == 1
    out = read_python_outcome(sandbox)
    assert out.value is None and out.error_type == "SerializationError"
    assert "generator" in out.error_message
    assert type(dill.loads(out.error_payload)).__name__ == "SerializationError"


def test_missing_task_file_is_reported(sandbox: Path) -> None:
    argv = [sys.executable, "-m", "mpiengine.runner.pyrunner", str(sandbox)]
    proc = subprocess.run(argv, env=ENV, capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert read_python_outcome(sandbox).error_type == "FileNotFoundError"


def test_outcome_of_a_killed_task_is_empty(sandbox: Path) -> None:
    out = read_python_outcome(sandbox)
    assert out.value is None and out.error_type == "" and not out.succeeded


def test_outcome_of_a_malformed_error_record(sandbox: Path) -> None:
    (sandbox / "error.json").write_text("[1, 2")
    out = read_python_outcome(sandbox)
    assert out.value is None and out.error_type == "" and "malformed" in out.error_message


def test_outcome_never_unpickles(sandbox: Path) -> None:
    # Bytes that would run code if unpickled are passed through untouched.
    evil = f"cos\nsystem\n(S'touch {sandbox}/pwned'\ntR.".encode()
    (sandbox / "value.dill").write_bytes(evil)
    assert read_python_outcome(sandbox).value == evil
    assert not (sandbox / "pwned").exists()


@pytest.mark.mpi
def test_mpi_allreduce_on_four_ranks(sandbox: Path, mpi: str) -> None:
    proc = run(sandbox, rank_sum, 10, prefix=(mpi, "-n", "4"), flags=("--mpi",))
    assert proc.returncode == 0, proc.stderr
    assert dill.loads(read_python_outcome(sandbox).value) == 60  # 10 * (0+1+2+3)
    assert files(sandbox) == ["task.dill", "value.dill"]  # only rank 0 wrote


@pytest.mark.mpi
def test_mpi_return_all(sandbox: Path, mpi: str) -> None:
    proc = run(sandbox, my_rank, prefix=(mpi, "-n", "4"), flags=("--mpi", "--return-all"))
    assert proc.returncode == 0, proc.stderr
    assert dill.loads(read_python_outcome(sandbox).value) == [0, 1, 2, 3]


@pytest.mark.mpi
def test_mpi_failure_names_the_rank(sandbox: Path, mpi: str) -> None:
    proc = run(sandbox, fail_on_rank_two, prefix=(mpi, "-n", "4"), flags=("--mpi",))
    assert proc.returncode != 0
    out = read_python_outcome(sandbox)
    assert out.value is None and out.error_type == "ValueError"
    assert out.error_message == "rank 2 failed; rank 2: rank two is unhappy"
    assert "--- rank 2 ---" in out.error_traceback
    assert json.loads((sandbox / "error.json").read_text())["ranks"] == [2]
    assert isinstance(dill.loads(out.error_payload), ValueError)


@pytest.mark.mpi
def test_a_rank_failing_while_others_wait_in_a_collective_aborts_them(
    sandbox: Path, mpi: str
) -> None:
    flags = ("--mpi", "--abort-after", "1")
    started = time.monotonic()
    proc = run(sandbox, fail_on_rank_one_before_allreduce, prefix=(mpi, "-n", "4"), flags=flags)
    took = time.monotonic() - started
    assert proc.returncode != 0
    assert took < 60, f"the ranks waited {took:.0f} s instead of being aborted"
    out = read_python_outcome(sandbox)
    assert out.value is None and out.error_type == "ValueError"
    assert out.error_message.startswith("rank 1 failed while other ranks were still running")
    assert "rank one left early" in out.error_message
    assert json.loads((sandbox / "error.json").read_text())["ranks"] == [1]
    assert "rank one left early" in proc.stderr  # the traceback reached stderr too
