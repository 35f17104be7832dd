"""Memory strategies by name, through the entry-point group `parley.memory_strategies`.

Built-ins are registered in Parley's own `pyproject.toml` exactly as a third-party
package would register one:

    [project.entry-points."parley.memory_strategies"]
    my_strategy = "my_package.memory:MyStrategy"

The entry point names a factory: anything called with a `MemoryDeps` that
returns a `MemoryStrategy` (a class whose `__init__(self, deps)` does, usually).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from parley.core.config import Settings
from parley.core.errors import ConfigurationError, InvalidInput
from parley.memory.base import MemoryStrategy
from parley.memory.summaries import Summarizer, SummaryStore
from parley.retrieval.turn_recall import RecallIndex

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "parley.memory_strategies"


@dataclass
class MemoryDeps:
    """What a strategy may use. The recall index (embeddings, Chroma) is built on first use."""

    settings: Settings
    summaries: SummaryStore
    summarizer: Summarizer
    recall_factory: Callable[[], RecallIndex]
    _recall: RecallIndex | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def prefetch_question(self, question: str) -> None:
        """Embed a question ahead of its query, if a strategy here already uses recall."""
        with self._lock:
            recall = self._recall
        if recall is not None:
            recall.prefetch(question)

    def close(self) -> None:
        with self._lock:
            recall = self._recall
        if recall is not None:
            recall.close()

    @property
    def recall(self) -> RecallIndex:
        with self._lock:
            if self._recall is None:
                self._recall = self.recall_factory()
            return self._recall


StrategyFactory = Callable[[MemoryDeps], MemoryStrategy]


def available() -> dict[str, StrategyFactory]:
    """Every installed strategy factory by name (built-in and third-party alike)."""
    found: dict[str, StrategyFactory] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception:  # one broken plugin must not take the app down
            log.exception("Memory strategy %r (%s) failed to load", entry.name, entry.value)
    return found


class StrategyRegistry:
    """One instance per strategy name per process; `get` validates the name."""

    def __init__(self, deps: MemoryDeps) -> None:
        self._deps = deps
        self._factories = available()
        self._instances: dict[str, MemoryStrategy] = {}
        self._lock = threading.Lock()
        if deps.settings.memory_strategy not in self._factories:
            raise ConfigurationError(
                f"PARLEY_MEMORY_STRATEGY={deps.settings.memory_strategy!r} is not installed; "
                f"choose one of {', '.join(sorted(self._factories))}."
            )

    @property
    def deps(self) -> MemoryDeps:
        return self._deps

    @property
    def default(self) -> str:
        return self._deps.settings.memory_strategy

    def names(self) -> list[str]:
        return sorted(self._factories)

    def prepare(self, question: str) -> None:
        """A question is on its way: start what can run ahead of `build` (its embedding)."""
        self._deps.prefetch_question(question)

    def forget(self, conversation_id: int) -> None:
        """A conversation was deleted: drop its vectors too (summaries go with the row).

        Raises if the vector store fails, so the caller can keep the erasure pending.
        """
        self._deps.recall.forget(conversation_id)

    def close(self) -> None:
        """Release what the strategies hold (the recall index's question worker)."""
        self._deps.close()

    def resolve(self, name: str | None) -> MemoryStrategy:
        """The strategy a conversation chose, or the default if it is no longer installed
        (logged): a removed plugin must not stop a conversation from going on."""
        if name is not None and name not in self._factories:
            log.warning(
                "Memory strategy %r is not installed; using the default %r.", name, self.default
            )
            name = None
        return self.get(name)

    def get(self, name: str | None = None) -> MemoryStrategy:
        name = name or self.default
        with self._lock:
            strategy = self._instances.get(name)
            if strategy is None:
                factory = self._factories.get(name)
                if factory is None:
                    raise InvalidInput(
                        f"There is no memory strategy named {name!r}; "
                        f"choose one of {', '.join(self.names())}."
                    )
                strategy = factory(self._deps)
                self._instances[name] = strategy
            return strategy
