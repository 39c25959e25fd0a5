"""The task runner: sandboxes, process trees, walltimes and output tails on the launch node.

It runs in-process for the embedded endpoint, and inside the block agent on a batch job's lead
node. Modules, one concept each:

- ``sandbox``: one fresh directory per launch (the task's, then ``attempt-N``);
- ``launch``: ``LaunchSpec`` (what to start) and ``Completion`` (how it ended);
- ``process``: ``TaskRunner``, the event-driven runner thread;
- ``spawn``: starting one task process (direct fork/exec, Popen fallback) and reaping it;
- ``proctree``: finding and killing a task's whole process tree;
- ``watchdog``: the process that kills a runner's trees when the runner's owner dies;
- ``tails``: the bounded last lines of an output file;
- ``pyrunner``: the entry point of Python tasks (``python -m mpiengine.runner.pyrunner``);
- ``pyoutcome``: reading a Python task's result files without unpickling them.

The runner against raw fork/exec is measured by ``benchmarks/bench_core.py --only dispatch``.

Exports load lazily: every Python task runs ``python -m mpiengine.runner.pyrunner``, which
imports this package first and must not pay for psutil and the runner thread's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpiengine.runner.launch import (
        HUNG_RETURNCODE,
        TASK_MARKER_ENV,
        TIMEOUT_RETURNCODE,
        Completion,
        LaunchSpec,
    )
    from mpiengine.runner.process import TaskRunner
    from mpiengine.runner.proctree import KilledProcess, TreeKill, find_tree, kill_tree
    from mpiengine.runner.pyoutcome import PythonOutcome, read_python_outcome
    from mpiengine.runner.sandbox import (
        SandboxRoot,
        create_sandbox,
        remove_sandbox,
        task_dir,
        write_files,
    )
    from mpiengine.runner.tails import tail

__all__ = [
    "Completion",
    "HUNG_RETURNCODE",
    "KilledProcess",
    "LaunchSpec",
    "PythonOutcome",
    "SandboxRoot",
    "TASK_MARKER_ENV",
    "TIMEOUT_RETURNCODE",
    "TaskRunner",
    "TreeKill",
    "create_sandbox",
    "find_tree",
    "kill_tree",
    "read_python_outcome",
    "remove_sandbox",
    "tail",
    "task_dir",
    "write_files",
]

_WHERE = {
    "HUNG_RETURNCODE": "launch",
    "TASK_MARKER_ENV": "launch",
    "TIMEOUT_RETURNCODE": "launch",
    "Completion": "launch",
    "KilledProcess": "proctree",
    "LaunchSpec": "launch",
    "PythonOutcome": "pyoutcome",
    "SandboxRoot": "sandbox",
    "TaskRunner": "process",
    "TreeKill": "proctree",
    "create_sandbox": "sandbox",
    "find_tree": "proctree",
    "kill_tree": "proctree",
    "read_python_outcome": "pyoutcome",
    "remove_sandbox": "sandbox",
    "tail": "tails",
    "task_dir": "sandbox",
    "write_files": "sandbox",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"mpiengine.runner.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mpiengine.runner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
