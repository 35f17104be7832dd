"""Memory strategies by name, through the entry-point group `parley.memory_strategies`.

Built-ins are registered in Parley's own `pyproject.toml` exactly as a third-party
package would register one:

    [project.entry-points."parley.memory_strategies"]
    my_strategy = "my_package.memory:MyStrategy"

The entry point names a factory: anything called with a `MemoryDeps` that
returns a `MemoryStrategy` (a class whose `__init__(self, deps)` does, usually). A
factory may declare its options as a pydantic model `Options` (`parley.memory.options`):
the registry checks the environment's values when it starts, and each conversation's
own values when that conversation is answered, and hands the strategy its options in
`deps.options`. One instance is made per strategy and set of option values.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel

from parley.core.errors import ConfigurationError, InvalidInput
from parley.memory import options as opts
from parley.memory.base import ContextRequest, ContextWindow, MemoryStrategy, Turn
from parley.memory.summaries import Summarizer, SummaryStorage
from parley.retrieval.turn_recall import RecallIndex

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "parley.memory_strategies"

OptionsT = TypeVar("OptionsT", bound=BaseModel)


class LookUp:
    """`resolve`'s default: read the conversation's options per call."""


LOOK_UP = LookUp()


class _LazyRecall:
    """The recall index, built on first use (embeddings, Chroma) and shared by every
    strategy instance of one registry."""

    def __init__(self, factory: Callable[[], RecallIndex]) -> None:
        self._factory = factory
        self._index: RecallIndex | None = None
        self._lock = threading.Lock()

    def get(self) -> RecallIndex:
        with self._lock:
            if self._index is None:
                self._index = self._factory()
            return self._index

    def built(self) -> RecallIndex | None:
        with self._lock:
            return self._index


class MemoryDeps:
    """What a strategy may use, and nothing more: its own options, the summary store,
    the summarizer, and the recall index (built on first use).

    A strategy is handed no settings, database URL or key: the interface is narrow. (A
    plug-in runs in Parley's process, so this is not a security boundary: what the
    objects below hold privately is reachable by a strategy that goes looking.) The
    app's wiring builds this with the
    database's `SummaryStore`, the model summarizer and a Chroma-backed `RecallIndex`;
    `parley.memory.testing.fake_deps` builds it with none of them, and so can anyone:

        MemoryDeps(summaries=InMemorySummaryStore(), summarizer=ExtractiveSummarizer(),
                   recall_factory=lambda: RecallIndex(embedder=HashingEmbedder(), store=None))
    """

    def __init__(
        self,
        *,
        summaries: SummaryStorage,
        summarizer: Summarizer,
        recall_factory: Callable[[], RecallIndex],
        options: BaseModel | None = None,
    ) -> None:
        self.summaries = summaries
        self.summarizer = summarizer
        self.options: BaseModel = options if options is not None else opts.NoOptions()
        self._recall = _LazyRecall(recall_factory)

    def with_options(self, options: BaseModel) -> MemoryDeps:
        """The same dependencies (one recall index between them) with other options."""
        other = copy.copy(self)
        other.options = options
        return other

    def options_as(self, model: type[OptionsT]) -> OptionsT:
        """The strategy's options as its `model` (checked, if nobody has yet)."""
        if isinstance(self.options, model):
            return self.options
        # An InvalidInput sentence if they do not suit it.
        return opts.validated(None, model, {}, self.options.model_dump(), stored=False)

    @property
    def recall(self) -> RecallIndex:
        return self._recall.get()

    def prefetch_question(self, question: str) -> None:
        """Embed a question ahead of its query, if a strategy here already uses recall."""
        recall = self._recall.built()
        if recall is not None:
            recall.prefetch(question)

    def close(self) -> None:
        recall = self._recall.built()
        if recall is not None:
            recall.close()


StrategyFactory = Callable[[MemoryDeps], MemoryStrategy]


@dataclass(frozen=True, slots=True)
class InstalledStrategy:
    """An installed strategy: its factory, and the distribution that registered it."""

    name: str
    factory: StrategyFactory
    package: str | None  # the distribution's name ("parley" for the built-ins)
    version: str | None
    options_model: type[BaseModel]


def installed() -> dict[str, InstalledStrategy]:
    """Every installed strategy by name (built-in and third-party alike)."""
    found: dict[str, InstalledStrategy] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factory = entry.load()
            model = opts.options_model(factory)
        except Exception:  # one broken plugin must not take the app down
            log.exception("Memory strategy %r (%s) failed to load", entry.name, entry.value)
            continue
        dist = entry.dist
        found[entry.name] = InstalledStrategy(
            name=entry.name,
            factory=factory,
            package=dist.name if dist is not None else None,
            version=dist.version if dist is not None else None,
            options_model=model,
        )
    return found


def available() -> dict[str, StrategyFactory]:
    """Every installed strategy factory by name (built-in and third-party alike)."""
    return {name: strategy.factory for name, strategy in installed().items()}


def environment_options(
    strategies: Mapping[str, InstalledStrategy], options: Mapping[str, Mapping[str, object]]
) -> dict[str, BaseModel]:
    """Each strategy's options as the environment sets them (`Settings.memory_options()`),
    checked by its model: a `ConfigurationError` naming the variable when one is wrong,
    or names a strategy that is not installed."""
    for name in options:
        if name not in strategies:
            raise ConfigurationError(
                f"{opts.ENV_PREFIX}{name.upper()}__… sets options of a memory strategy "
                f"{name!r} that is not installed; choose one of {', '.join(sorted(strategies))}."
            )
    return {
        name: opts.from_environment(name, strategy.options_model, options.get(name, {}))
        for name, strategy in strategies.items()
    }


# A conversation's stored options, by strategy name (None: it has none, or is gone).
ConversationOptions = Callable[[int], Mapping[str, Mapping[str, object]] | None]


class StrategyRegistry:
    """One instance per strategy name and option values per process; `get` validates the name.

    `options` are the environment's values per strategy (`Settings.memory_options()`),
    checked here, at start-up. `conversation_options` reads a conversation's own values
    (the wiring asks the database); `resolve` hands out strategies that apply them.
    """

    def __init__(
        self,
        deps: MemoryDeps,
        *,
        default: str,
        options: Mapping[str, Mapping[str, object]] | None = None,
        conversation_options: ConversationOptions | None = None,
    ) -> None:
        self._deps = deps
        self._installed = installed()
        self._default = default
        self._conversation_options = conversation_options
        self._instances: dict[tuple[str, str], MemoryStrategy] = {}
        self._lock = threading.Lock()
        if default not in self._installed:
            raise ConfigurationError(
                f"PARLEY_MEMORY_STRATEGY={default!r} is not installed; "
                f"choose one of {', '.join(self.names())}."
            )
        self._env_values = {name: dict(values) for name, values in (options or {}).items()}
        self._env_options = environment_options(self._installed, self._env_values)

    @property
    def deps(self) -> MemoryDeps:
        return self._deps

    @property
    def default(self) -> str:
        return self._default

    def names(self) -> list[str]:
        return sorted(self._installed)

    def strategies(self) -> list[InstalledStrategy]:
        """Every installed strategy, by name."""
        return [self._installed[name] for name in self.names()]

    def _strategy(self, name: str) -> InstalledStrategy:
        strategy = self._installed.get(name)
        if strategy is None:
            raise InvalidInput(
                f"There is no memory strategy named {name!r}; "
                f"choose one of {', '.join(self.names())}."
            )
        return strategy

    def options_model(self, name: str) -> type[BaseModel]:
        """The model `name` declares its options with (`NoOptions` when it declares none)."""
        return self._strategy(name).options_model

    def options(self, name: str) -> BaseModel:
        """`name`'s options as the environment sets them (defaults for the rest)."""
        self._strategy(name)
        return self._env_options[name]

    def check_options(self, name: str, overrides: Mapping[str, object]) -> dict[str, object]:
        """`overrides` for one conversation, checked by `name`'s model over the
        environment's values: the overrides as JSON values, or an `InvalidInput` sentence."""
        strategy = self._strategy(name)
        checked = opts.validated(
            name, strategy.options_model, self._env_values.get(name, {}), overrides, stored=False
        )
        dumped = opts.as_json(checked)
        return {key: dumped[key] for key in overrides}

    def conversation_overrides(self, conversation_id: int, name: str) -> dict[str, object]:
        """What a conversation stored for `name` (not checked; {} for none)."""
        if self._conversation_options is None or not conversation_id:
            return {}
        stored = self._conversation_options(conversation_id) or {}
        return dict(stored.get(name) or {})

    def options_for(self, name: str, conversation_id: int) -> BaseModel:
        """`name`'s options for one conversation: its own over the environment's.

        Raises `InvalidInput` when what the conversation stored no longer suits the
        strategy (a plug-in changed its options); the stored values are left as they are.
        """
        return self._with_overrides(name, self.conversation_overrides(conversation_id, name))

    def _with_overrides(self, name: str, overrides: Mapping[str, object]) -> BaseModel:
        if not overrides:
            return self._env_options[name]
        return opts.validated(
            name,
            self._strategy(name).options_model,
            self._env_values.get(name, {}),
            overrides,
            stored=True,
        )

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

    def resolve(
        self, name: str | None, stored: Mapping[str, Any] | None | LookUp = LOOK_UP
    ) -> MemoryStrategy:
        """The strategy a conversation chose, or the default if it is no longer installed
        (logged): a removed plugin must not stop a conversation from going on. Each call of
        its `build` and `observe` uses that conversation's own options — `stored` (what the
        conversation row holds, by strategy) when the caller has read them already, else
        looked up per call."""
        if name is not None and name not in self._installed:
            log.warning(
                "Memory strategy %r is not installed; using the default %r.", name, self.default
            )
            name = None
        chosen = name or self.default
        if not isinstance(stored, LookUp):
            return self._instance(
                chosen, self._with_overrides(chosen, (stored or {}).get(chosen) or {})
            )
        if self._conversation_options is None:
            return self.get(chosen)
        return _PerConversation(self, chosen)

    def for_conversation(self, name: str, conversation_id: int) -> MemoryStrategy:
        """`name`'s instance with `conversation_id`'s options."""
        return self._instance(name, self.options_for(name, conversation_id))

    def get(self, name: str | None = None) -> MemoryStrategy:
        """`name`'s instance with the environment's options (None: the default strategy)."""
        name = name or self.default
        return self._instance(name, self.options(name))

    def _instance(self, name: str, options: BaseModel) -> MemoryStrategy:
        # Keyed by the option values: a handful of sets at most (admins choose them), and an
        # instance may hold state (a fold's lock), so none is dropped while the process lives.
        key = (name, opts.options_key(options))
        with self._lock:
            strategy = self._instances.get(key)
            if strategy is None:
                factory = self._strategy(name).factory
                strategy = factory(self._deps.with_options(options))
                self._instances[key] = strategy
            return strategy


class _PerConversation:
    """`name`'s strategy, with each conversation's own options looked up per call."""

    def __init__(self, registry: StrategyRegistry, name: str) -> None:
        self._registry = registry
        self.name = name

    def observe(self, conversation_id: int, turns: Sequence[Turn]) -> None:
        self._registry.for_conversation(self.name, conversation_id).observe(conversation_id, turns)

    def build(self, request: ContextRequest) -> ContextWindow:
        strategy = self._registry.for_conversation(self.name, request.conversation_id)
        return strategy.build(request)


__all__ = [
    "ENTRY_POINT_GROUP",
    "ConversationOptions",
    "InstalledStrategy",
    "MemoryDeps",
    "StrategyFactory",
    "StrategyRegistry",
    "available",
    "environment_options",
    "installed",
]
