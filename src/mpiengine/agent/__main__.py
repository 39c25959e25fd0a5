"""``python -m mpiengine.agent``: ``python -m mpiengine agent``, for block jobs submitted before
their job command became that."""

from mpiengine.cli.agent import agent

if __name__ == "__main__":
    agent()
