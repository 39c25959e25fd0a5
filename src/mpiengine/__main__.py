"""``python -m mpiengine ARGS``: the same as ``mpiengine ARGS``, and what processes re-exec."""

from mpiengine.cli import main

if __name__ == "__main__":
    main()
