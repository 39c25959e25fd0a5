"""Blocks: the batch allocations (or this host) whose nodes the scheduler carves up.

Block sources talk to the engine through :class:`~mpiengine.engineport.EnginePort` only; the
engine sees a block through :class:`~mpiengine.engineport.BlockHandle` (re-exported here).
"""

from mpiengine.blocks.local import LocalBlock, LocalSource, virtual_node_names
from mpiengine.engineport import BlockHandle, CompletionSink

__all__ = ["BlockHandle", "CompletionSink", "LocalBlock", "LocalSource", "virtual_node_names"]
