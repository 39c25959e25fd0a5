"""``python -m mpiengine.agent``: the same as ``mpiengine agent``."""

from mpiengine.agent.cli import agent

if __name__ == "__main__":
    agent()
