"""The last lines of a (possibly huge) output file, read from its end only."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_TAIL_BYTES", "tail"]

#: Default byte bound of a tail: enough for 1,000 lines of ordinary log output.
DEFAULT_TAIL_BYTES = 64 * 1024


def tail(path: str | os.PathLike[str], lines: int, max_bytes: int = DEFAULT_TAIL_BYTES) -> str:
    """Return the last ``lines`` lines of a file, reading at most ``max_bytes`` from its end.

    Like ``tail -n``: a final newline does not start an extra empty line. When the bound cuts
    into a line, that partial first line is dropped, unless it is the only (very long) line, in
    which case its last ``max_bytes`` bytes are returned. Bytes that are not UTF-8 are replaced
    with U+FFFD.

    Args:
        path: the file.
        lines: how many trailing lines to keep; 0 or less returns "".
        max_bytes: the most bytes read from the end of the file.

    Returns:
        The tail as text; "" when the file is missing or empty.
    """
    if lines <= 0 or max_bytes <= 0:
        return ""
    try:
        # One stat for the common case of a quiet task (stderr, mostly): no open, no close.
        if os.stat(path).st_size == 0:
            return ""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        size = os.fstat(fd).st_size
        if size == 0:  # the common case of a quiet task: no read
            return ""
        start = max(0, size - max_bytes)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    if start > 0:
        first_newline = data.find(b"\n")
        if 0 <= first_newline < len(data) - 1:
            data = data[first_newline + 1 :]
    return _last_lines(data, lines).decode("utf-8", errors="replace")


def _last_lines(data: bytes, lines: int) -> bytes:
    # Search backwards from before a trailing newline, so "a\nb\n" holds two lines, not three.
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    cut = end
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1 :]
