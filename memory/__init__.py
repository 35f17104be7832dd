"""Memory strategies: how stored history becomes a bounded prompt."""

from memory.base import ContextWindow, MemoryStrategy, Turn
from memory.token_window import TokenWindow

__all__ = ["ContextWindow", "MemoryStrategy", "TokenWindow", "Turn"]
