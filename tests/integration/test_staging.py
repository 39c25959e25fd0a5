"""File staging through fsspec URLs: local files and a real FTP server the tests start."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpiengine_sdk import (
    Executor,
    MPIFunction,
    ResourceSpec,
    ShellFunction,
    SpecError,
    StagingError,
)
from tests.conftest import require


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def require_fsspec() -> None:
    require(_has("fsspec"), "fsspec", "pip install -e '.[test]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FTP_SERVER = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
auth = DummyAuthorizer()
auth.add_user("stage", "secret", sys.argv[2], perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPServer(("127.0.0.1", int(sys.argv[1])), FTPHandler).serve_forever()
"""


@pytest.fixture(scope="module")
def ftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of an FTP server started here and ended by pid."""
    require_fsspec()
    require(_has("pyftpdlib"), "pyftpdlib", "pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("ftp")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", FTP_SERVER, str(port), str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"ftp://stage:secret@127.0.0.1:{port}", root
    finally:
        proc.terminate()
        proc.wait(30)


def test_local_files_in_and_out_with_bytes_and_seconds(tmp_path):
    require_fsspec()
    source = tmp_path / "source.txt"
    source.write_text("hello staging\n")
    outbox = tmp_path / "outbox"
    fn = ShellFunction(
        "tr a-z A-Z < in/data.txt > result.txt; echo side > side.log",
        stage_in={"in/data.txt": f"file://{source}"},
        stage_out={"*.txt": f"file://{outbox}", "*.log": f"file://{outbox}/logs"},
    )
    with Executor(nodes=1, workdir=tmp_path / "ep") as ex:
        result = ex.submit(fn).result(timeout=120)
    assert result.returncode == 0, result.stderr
    assert (outbox / "result.txt").read_text() == "HELLO STAGING\n"
    assert (outbox / "logs" / "side.log").read_text() == "side\n"
    staged_in = result.staging["in"]
    assert [(f["path"], f["bytes"]) for f in staged_in] == [("in/data.txt", 14)]
    assert sorted((f["path"], f["bytes"]) for f in result.staging["out"]) == [
        ("result.txt", 14),
        ("side.log", 5),
    ]
    assert result.staging["error"] == ""
    assert result.staged_bytes == 14 + 14 + 5
    assert all(f["seconds"] >= 0 for f in [*staged_in, *result.staging["out"]])


def test_ftp_in_and_out_for_an_mpi_task(tmp_path, ftp, mpi):
    url, served = ftp
    (served / "input.bin").write_bytes(bytes(range(256)) * 4096)
    fn = MPIFunction(
        [sys.executable, "-c", "import os; n = os.path.getsize('input.bin'); "
         "open(f'out-{os.environ[\"PMI_RANK\"]}.txt', 'w').write(str(n))"],
        stage_in={"input.bin": f"{url}/input.bin"},
        stage_out={"out-*.txt": f"{url}/results"},
    )  # fmt: skip
    with Executor(nodes=2, workdir=tmp_path / "ep") as ex:
        spec = ResourceSpec(num_nodes=2, ranks_per_node=1)
        result = ex.submit(fn, resource_spec=spec).result(timeout=120)
    assert result.returncode == 0, result.stderr
    assert (served / "results" / "out-0.txt").read_text() == str(256 * 4096)
    assert (served / "results" / "out-1.txt").read_text() == str(256 * 4096)
    assert result.staging["in"][0]["bytes"] == 256 * 4096  # staged once, not per rank
    assert result.staging["in"][0]["url"] == url.replace(":secret@", ":***@") + "/input.bin"
    assert len(result.staging["in"]) == 1


def test_a_missing_input_fails_naming_it_and_the_command_never_runs(tmp_path, ftp):
    url, _ = ftp
    marker = tmp_path / "ran"
    fn = ShellFunction(f"touch {marker}", stage_in={"data.bin": f"{url}/no-such-file.bin"})
    with Executor(nodes=1, workdir=tmp_path / "ep") as ex:
        future = ex.submit(fn)
        with pytest.raises(StagingError) as info:
            future.result(timeout=120)
    shown = url.replace(":secret@", ":***@")  # the password never shows
    assert str(info.value).startswith(
        f"stage_in of {shown}/no-such-file.bin to data.bin failed: error_perm: 550 No such file"
    )
    assert "secret" not in str(info.value)
    assert not marker.exists()
    assert future.message is not None and future.message.staging["in"] == []


def test_an_output_glob_that_matches_nothing_fails_naming_it(tmp_path):
    require_fsspec()
    fn = ShellFunction("true", stage_out={"*.h5": f"file://{tmp_path}/out"})
    with Executor(nodes=1, workdir=tmp_path / "ep") as ex:
        with pytest.raises(StagingError) as info:
            ex.submit(fn).result(timeout=120)
    assert str(info.value).startswith("stage_out: no file in the sandbox matches '*.h5'")


def test_bad_staging_entries_are_refused_at_construction():
    with pytest.raises(SpecError) as info:
        ShellFunction("true", stage_in={"../x": "file:///tmp/x"})
    assert "'../x' is not a relative path in the sandbox" in str(info.value)
    assert info.value.field == "stage_in"
    with pytest.raises(SpecError, match=r"'/tmp/x' is not a URL such as ftp://host/file"):
        ShellFunction("true", stage_out={"*.txt": "/tmp/x"})
    with pytest.raises(SpecError, match=r"stage_in=\['a'\] is invalid: a mapping"):
        ShellFunction("true", stage_in=["a"])  # type: ignore[arg-type]
