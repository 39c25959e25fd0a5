"""tail(): the last N lines, bounded in bytes, read from the end of the file only."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mpiengine.runner.tails import tail


def _reference(data: bytes, lines: int) -> str:
    parts = data.split(b"\n")
    if data.endswith(b"\n"):
        parts = parts[:-1]
        kept = b"\n".join(parts[-lines:]) + b"\n"
    else:
        kept = b"\n".join(parts[-lines:])
    return kept.decode("utf-8", errors="replace") if parts or data else ""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\xff", "é".encode()]), max_size=60),
    st.integers(1, 8),
)
def test_matches_tail_n_when_the_file_fits(
    tmp_path_factory, pieces: list[bytes], lines: int
) -> None:
    path = tmp_path_factory.mktemp("t") / "out"
    data = b"".join(pieces)
    path.write_bytes(data)
    assert tail(path, lines) == _reference(data, lines)


def test_bounded_in_bytes_and_drops_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"".join(b"line %06d\n" % i for i in range(100_000)))
    text = tail(path, 100_000, max_bytes=1000)
    assert len(text.encode()) <= 1000
    assert text.endswith("line 099999\n")
    assert text.startswith("line ")  # the partial first line was dropped
    assert tail(path, 3) == "line 099997\nline 099998\nline 099999\n"


def test_one_huge_line_keeps_its_end(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"x" * 10_000 + b"END")
    assert tail(path, 5, max_bytes=100) == "x" * 97 + "END"


def test_reads_only_the_end_of_a_huge_sparse_file(tmp_path: Path) -> None:
    # 64 GiB of holes: reading it whole would exhaust memory; the tail reads 64 KiB.
    path = tmp_path / "huge"
    with open(path, "wb") as fh:
        fh.truncate(64 * 2**30)
        fh.seek(0, os.SEEK_END)
        fh.write(b"\nlast line\n")
    assert tail(path, 1) == "last line\n"


def test_missing_empty_and_zero_lines(tmp_path: Path) -> None:
    assert tail(tmp_path / "missing", 10) == ""
    (tmp_path / "empty").write_bytes(b"")
    assert tail(tmp_path / "empty", 10) == ""
    (tmp_path / "some").write_bytes(b"a\nb\n")
    assert tail(tmp_path / "some", 0) == ""
    assert tail(tmp_path / "some", 10) == "a\nb\n"


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"ok\n\xff\xfe bad\n")
    assert tail(tmp_path / "bin", 1) == "\ufffd\ufffd bad\n"
