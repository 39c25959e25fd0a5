"""``python -m mpiengine.agent ARGS``: runs ``python -m mpiengine agent ARGS``, for block jobs
submitted before their job command became that. The command line sits above the agent, so this
runs the top-level entry point rather than importing it."""

import runpy
import sys

if __name__ == "__main__":
    sys.argv[1:1] = ["agent"]
    runpy.run_module("mpiengine", run_name="__main__", alter_sys=True)
