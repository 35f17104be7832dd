"""Memory strategies: how stored history becomes a bounded prompt.

Strategies are found by name through the entry-point group `parley.memory_strategies`
(`memory.registry`); see docs/ARCHITECTURE.md for how to write one.
"""

from memory.base import ContextRequest, ContextWindow, MemoryStrategy, RecalledItem, Turn

__all__ = ["ContextRequest", "ContextWindow", "MemoryStrategy", "RecalledItem", "Turn"]
