"""Blocks: the batch allocations (or this host) whose nodes the scheduler carves up."""

from mpiengine.blocks.base import BlockHandle, CompletionSink
from mpiengine.blocks.local import LocalBlock, virtual_node_names

__all__ = ["BlockHandle", "CompletionSink", "LocalBlock", "virtual_node_names"]
