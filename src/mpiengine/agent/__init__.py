"""The block agent (``mpiengine agent``): runs inside each batch job, on its lead node.

- ``agent``: the loop (connect, heartbeat, launch, kill, exit when the endpoint goes away);
- ``nodes``: discovering the block's nodes (Slurm, PBS nodefile, local);
- ``steps``: naming srun steps and cancelling those a killed task leaves behind;
- ``protocol``: the messages between endpoint and agent;
- ``mailbox``: handing bytes to a zmq loop from other threads.

Its click command is ``mpiengine.cli.agent``.
"""

from mpiengine.agent.agent import Agent, AgentOptions

__all__ = ["Agent", "AgentOptions"]
