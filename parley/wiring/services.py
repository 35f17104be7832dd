"""Wiring: build every service from `Settings`, once per process (the page and the CLI alike).

The only place that knows every layer. It hands out one `LimitedProvider` (queue,
buckets, metering) to everything that calls a model, and one `BackgroundWork` pool
to everything that works after a turn; `Services.close` drains that pool.

What a command may well not use is made when first used (`_Once`): the model provider
(Claude's imports the Anthropic SDK) and OIDC sign-in (httpx). The recall index and the
documents' embedder and Chroma were already (see `build_recall_index`, `VectorStore`).
So `parley user list` imports none of them; `python -m parley.bench.cli_start` times it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import select

from parley.auth.accounts import AccountService
from parley.auth.groups import GroupService
from parley.auth.sessions import SessionService, secret_from_file
from parley.auth.throttle import LoginThrottle
from parley.chat.conversation.context import ContextBuilder
from parley.chat.conversation.conversations import (
    ConversationService,
    conversation_exists,
    conversation_owner,
)
from parley.chat.conversation.history import HistoryCache
from parley.chat.conversation.lab import StrategyLab, stored_memory_options
from parley.chat.conversation.model_summaries import ModelSummarizer
from parley.chat.conversation.service import ChatService
from parley.chat.conversation.upkeep import Upkeep
from parley.chat.documents.library import DocumentService
from parley.chat.gateway.admission import (
    ConcurrencyGate,
    DatabaseBucketStore,
    MemoryBucketStore,
    RateLimiter,
)
from parley.chat.gateway.limited_provider import LimitedProvider
from parley.chat.gateway.outbox import MeteringOutbox
from parley.chat.gateway.providers import build_key_source, build_provider
from parley.chat.gateway.usage import UsageService
from parley.chat.oversight.audit_trail import AuditTrail
from parley.chat.oversight.erasure import ErasureService
from parley.chat.oversight.review import ReviewService
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.errors import ConfigurationError
from parley.core.llm import ChatProvider, ChatRequest, StreamEvent
from parley.core.logs import configure_logging
from parley.memory import (
    ExtractiveSummarizer,
    MemoryDeps,
    StrategyRegistry,
    Summarizer,
    SummaryStore,
)
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import MiniLMEmbedder
from parley.retrieval.turn_recall import RecallIndex
from parley.retrieval.vector_store import VectorStore
from parley.store.db import Database
from parley.store.keys import AuditKeys
from parley.store.migrate import is_current
from parley.store.models import Document, DocumentSync, VectorErasure

if TYPE_CHECKING:
    from parley.auth.oidc import OidcSignIn

T = TypeVar("T")


class _Once(Generic[T]):
    """A part made by `build` when first asked for, once, whichever thread asks first.

    What a command that does not use it should not import: the provider (the Anthropic
    SDK) and OIDC sign-in (httpx, and with it rich and pygments)."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._made: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        made = self._made
        if made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._build()
                made = self._made
        return made


@dataclass(frozen=True)
class Services:
    settings: Settings
    # Not a service: pages and commands call services. The database is here to be closed
    # (and for tests and benchmarks that seed it).
    _database: Database = field(repr=False)
    provider: LimitedProvider  # the only provider anything calls
    accounts: AccountService
    sessions: SessionService
    groups: GroupService
    _oidc: _Once[OidcSignIn] = field(repr=False)  # see `oidc`
    documents: DocumentService
    conversations: ConversationService
    usage: UsageService
    limiter: RateLimiter
    gate: ConcurrencyGate
    memory: StrategyRegistry
    chat: ChatService
    lab: StrategyLab
    review: ReviewService
    audit: AuditTrail
    erasure: ErasureService
    upkeep: Upkeep
    background: BackgroundWork
    metering_outbox: MeteringOutbox

    @property
    def oidc(self) -> OidcSignIn:
        """Sign-in through an OpenID provider; made on first use (see `_Once`)."""
        return self._oidc.get()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Let background work finish (at most `timeout`), then release the database."""
        drained = self.background.close(timeout)
        self.memory.close()
        self._database.dispose()
        return drained


def build_services(
    settings: Settings,
    *,
    provider: ChatProvider | None = None,
    background: BackgroundWork | None = None,
    document_index: DocumentIndex | None = None,
    legacy_sweep: bool = True,
) -> Services:
    """Everything the app needs. `provider` overrides the settings' choice (tests, benchmarks);
    `background` the upkeep pool (`BackgroundWork(workers=0)` runs upkeep inline);
    `document_index` the documents' vectors (tests pass one with a light embedder).
    `legacy_sweep=False` (the command line) leaves moving vectors kept the older way to
    the app's start: a command then opens the vector store only for pending work."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings)
    database = open_database(settings)
    if not is_current(database):
        raise ConfigurationError(
            "The database is not at this version's schema (new, or older): "
            "run `parley db upgrade` (make run does it)."
        )
    shared = settings.limiter_store == "database"
    limiter = RateLimiter(
        requests_per_minute=settings.requests_per_minute,
        input_tokens_per_minute=settings.input_tokens_per_minute,
        output_tokens_per_minute=settings.output_tokens_per_minute,
        max_wait_s=settings.anthropic_max_retry_wait_s,
        store=DatabaseBucketStore(database) if shared else MemoryBucketStore(),
        clock=time.time if shared else time.monotonic,  # processes share wall time only
    )
    gate = ConcurrencyGate(settings.max_concurrent_calls, max_waiting=settings.max_queued_calls)
    usage = UsageService(database, settings)
    explicit_provider = provider is not None
    outbox = MeteringOutbox(settings.data_dir / "metering-outbox")
    limited = LimitedProvider(
        provider or _provider_on_first_call(settings, on_headers=limiter.observe_headers),
        gate=gate,
        limiter=limiter,
        meter=usage,
        outbox=outbox,
        count_with_api=settings.anthropic_count_tokens,
    )

    def drain_metering() -> None:
        if outbox.waiting():
            outbox.drain(usage)

    # The embedded 135M model is no use as a summarizer or titler; Claude (or a provider a
    # caller chose on purpose) is.
    capable = explicit_provider or settings.uses_anthropic
    summarizer: Summarizer = (
        ModelSummarizer(
            limited,
            temperature=settings.temperature.summarize,
            owner_of=lambda cid: conversation_owner(database, cid),
        )
        if capable
        else ExtractiveSummarizer()
    )
    memory = StrategyRegistry(
        MemoryDeps(
            summaries=SummaryStore(database),
            summarizer=summarizer,
            recall_factory=lambda: build_recall_index(
                settings, alive=lambda cid: conversation_exists(database, cid)
            ),
        ),
        default=settings.memory_strategy,
        options=settings.memory_options(),
        conversation_options=lambda cid: stored_memory_options(database, cid),
    )
    work = background or BackgroundWork(workers=settings.background_workers)
    context = ContextBuilder(provider=limited, memory=memory, settings=settings, usage=usage)
    history = HistoryCache()
    upkeep = Upkeep(
        history=history,
        database=database,
        memory=memory,
        provider=limited,
        work=work,
        settings=settings,
        model_titles=settings.model_titles and capable,
        drain_metering=drain_metering,
    )

    def defer(task: Callable[[], None], name: str) -> bool:
        return work.submit(task, name=name)

    documents = DocumentService(
        database, document_index or build_document_index(settings), defer=defer
    )
    sessions = build_sessions(settings, database)
    throttle = LoginThrottle(
        database,
        max_failures=settings.login_max_failures,
        lockout=timedelta(minutes=settings.login_lockout_minutes),
        delay_s=settings.login_delay_s,
    )

    def erase_derived(conversation_id: int) -> None:  # cached turns, then vectors
        history.forget(conversation_id)
        memory.forget(conversation_id)

    conversations = ConversationService(
        database, on_delete=erase_derived, forget_cached=history.forget, defer=defer
    )
    # Vectors of conversations and documents erased while the vector store was down, and
    # documents' vectors still in the shared collection of earlier versions: moved now, on
    # the pool (drained by `close`), and only if the database says there are any, so a
    # command with nothing to move opens no vector store and says nothing.
    if outbox.waiting():  # calls metered while the database refused, last time
        work.submit(drain_metering, name="drain the metering outbox")
    if _sweep_due(database, legacy=legacy_sweep):
        work.submit(lambda: _sweep(database, conversations, documents), name="start-up sweep")
    elif database.is_sqlite:  # no query tells whether an erasure left pages in the log
        work.submit(lambda: _reclaim(database), name="start-up checkpoint")
    return Services(
        settings=settings,
        _database=database,
        provider=limited,
        accounts=AccountService(database, throttle=throttle, sessions=sessions),
        sessions=sessions,
        groups=GroupService(database),
        _oidc=_Once(lambda: build_oidc(settings, database)),
        documents=documents,
        conversations=conversations,
        usage=usage,
        limiter=limiter,
        gate=gate,
        memory=memory,
        chat=ChatService(
            database=database,
            provider=limited,
            context=context,
            settings=settings,
            usage=usage,
            upkeep=upkeep,
            history=history,
            documents=documents,
        ),
        lab=StrategyLab(database=database, context=context),
        review=ReviewService(database),
        audit=AuditTrail(database),
        erasure=ErasureService(database, conversations, documents),
        upkeep=upkeep,
        background=work,
        metering_outbox=outbox,
    )


class _ProviderOnFirstCall:
    """The settings' provider, made when a model is first asked something: Claude's
    module imports the Anthropic SDK, a second of start-up that a command calling no
    model (`parley user list`) never needs. A `ChatProvider` itself."""

    def __init__(self, build: Callable[[], ChatProvider]) -> None:
        self._provider = _Once(build)

    def _made(self) -> ChatProvider:
        return self._provider.get()

    @property
    def model(self) -> str:
        return self._made().model

    @property
    def context_window(self) -> int:
        return self._made().context_window

    @property
    def native_citations(self) -> bool:
        return self._made().native_citations

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        return self._made().stream(request)

    def count_tokens(self, request: ChatRequest) -> int:
        return self._made().count_tokens(request)


def _provider_on_first_call(
    settings: Settings, *, on_headers: Callable[[Mapping[str, str]], None]
) -> ChatProvider:
    if settings.uses_anthropic:
        build_key_source(settings)  # a missing key still stops the start, not the first answer
    return _ProviderOnFirstCall(lambda: build_provider(settings, on_headers=on_headers))


def build_oidc(settings: Settings, database: Database) -> OidcSignIn:
    """OIDC sign-in as the settings map the provider's claims."""
    # Imported here, not at the top: httpx (a tenth of a second, with the rich and pygments
    # it imports) is for sign-in only; `parley user list` never needs it.
    from parley.auth.oidc import ClaimMapping, OidcSignIn

    return OidcSignIn(
        database,
        ClaimMapping(
            name_claim=settings.oidc_name_claim,
            groups_claim=settings.oidc_groups_claim,
            admin_groups=frozenset(settings.oidc_admin_groups),
        ),
        resync_after=timedelta(minutes=settings.oidc_resync_minutes),
    )


def _sweep_due(database: Database, *, legacy: bool = True) -> bool:
    """Whether the start-up sweep has anything to do: outbox rows of erasures and document
    changes the vector store missed, or (`legacy`) any document (its vectors may still be
    in the shared collection of earlier versions)."""
    probes = [select(VectorErasure.conversation_id), select(DocumentSync.document_id)]
    if legacy:
        probes.append(select(Document.id))
    with database.session() as session:
        return any(session.scalar(probe.limit(1)) is not None for probe in probes)


def _sweep(
    database: Database, conversations: ConversationService, documents: DocumentService
) -> None:
    conversations.sweep_erasures()
    documents.sweep_abandoned()  # uploads a process died in the middle of
    documents.sweep_index()
    _reclaim(database)


def _reclaim(database: Database) -> None:
    database.reclaim()  # an erasure's pages a reader kept in the log last time


def build_sessions(settings: Settings, database: Database) -> SessionService:
    """Sign-in sessions, signed with `PARLEY_SESSION_SECRET` or a secret kept in the data dir."""
    secret = (
        settings.session_secret.get_secret_value()
        if settings.session_secret
        else secret_from_file(settings.data_dir / "session_secret")
    )
    return SessionService(
        database,
        secret=secret,
        idle=timedelta(minutes=settings.session_idle_minutes),
        lifetime=timedelta(hours=settings.session_lifetime_hours),
    )


def build_sessions_alone(settings: Settings) -> SessionService:
    """Sessions with their own database handle, for the cookie routes beside the app."""
    return build_sessions(settings, open_database(settings))


def audit_keys(settings: Settings) -> AuditKeys:
    """The audit key ring: `PARLEY_AUDIT_KEY`, else the file `PARLEY_AUDIT_KEY_FILE` (which
    must exist), else `audit.key` in the data dir, made on first start; plus the keys
    it replaced. Never read from, or written to, the database."""
    if settings.audit_key is not None:
        current = settings.audit_key.get_secret_value()
    elif settings.audit_key_file is not None:
        try:
            current = settings.audit_key_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"The audit key file {settings.audit_key_file} cannot be read ({exc.strerror})."
            ) from None
    else:
        current = secret_from_file(settings.data_dir / "audit.key")
    try:
        return AuditKeys.from_secrets(
            current, [k.get_secret_value() for k in settings.audit_previous_keys]
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def open_database(settings: Settings) -> Database:
    """The database of these settings, with the audit key ring its records are keyed with."""
    return Database(settings.resolved_database_url, audit_keys=audit_keys(settings))


def build_vector_store(settings: Settings) -> VectorStore:
    """Chroma: a server if `PARLEY_CHROMA_URL`, else files under the data dir."""
    if settings.chroma_url:
        url = urlsplit(settings.chroma_url.get_secret_value())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigurationError(
                "PARLEY_CHROMA_URL must look like http://host:port or https://host:port."
            )
        try:
            port = url.port or (443 if url.scheme == "https" else 8000)
        except ValueError as exc:
            raise ConfigurationError("PARLEY_CHROMA_URL has a port that is not a number.") from exc
        return VectorStore.http(url.hostname, port, ssl=url.scheme == "https")
    return VectorStore.persistent(settings.data_dir / "chroma")


_EMBEDDERS: dict[tuple[int, Path], MiniLMEmbedder] = {}


def shared_embedder(settings: Settings) -> MiniLMEmbedder:
    """One MiniLM per process and settings: conversations and documents share it."""
    key = (settings.embedding_threads, (settings.data_dir / "models").resolve())
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = MiniLMEmbedder(threads=key[0], cache_dir=key[1])
    return _EMBEDDERS[key]


def build_recall_index(
    settings: Settings, *, alive: Callable[[int], bool] | None = None
) -> RecallIndex:
    """MiniLM embeddings of conversation turns, persisted in Chroma."""
    return RecallIndex(
        embedder=shared_embedder(settings), store=build_vector_store(settings), alive=alive
    )


def build_document_index(settings: Settings) -> DocumentIndex:
    return DocumentIndex(embedder=shared_embedder(settings), store=build_vector_store(settings))
