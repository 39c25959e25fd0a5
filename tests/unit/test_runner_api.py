"""mpiengine.runner exports exactly its sorted ``__all__``, lazily, each name documented."""

from __future__ import annotations

import subprocess
import sys

import mpiengine.runner as runner


def test_all_is_sorted_resolves_and_is_documented() -> None:
    assert runner.__all__ == sorted(runner.__all__)
    for name in runner.__all__:
        value = getattr(runner, name)
        assert value is not None
        if callable(value):
            assert value.__doc__, f"mpiengine.runner.{name} has no docstring"
    assert set(runner.__all__) <= set(dir(runner))


def test_the_python_task_entry_point_imports_no_runner_machinery() -> None:
    # Every Python task starts with this import; psutil and the runner thread are not its cost.
    code = (
        "import sys, mpiengine.runner.pyrunner; "
        "print(sorted(m for m in sys.modules if m.startswith(('psutil', 'mpiengine'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['mpiengine', 'mpiengine.runner', 'mpiengine.runner.pyrunner']"
