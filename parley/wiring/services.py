"""Wiring: build every service from `Settings`, once per process (the page and the CLI alike).

The only place that knows every layer. It hands out one `LimitedProvider` (queue,
buckets, metering) to everything that calls a model, and one `BackgroundWork` pool
to everything that works after a turn; `Services.close` drains that pool.

Each service is a part of `Services`, made when first asked for (`_Part`), once,
whichever thread asks first. The app asks for all of them at its start
(`build_services(eager=True)`, the default: a wrong setting stops the start, not a
later page); a command asks for what it uses, so `parley user list` imports the
settings, the database and the accounts, and not the conversation's modules, the
memory strategies, NumPy or a model SDK. That is why the services' modules are
imported inside the parts below rather than at the top: to keep a command's start
short (`python -m parley.bench.cli_start` times it), not to dodge a layer.
The model provider (Claude's module imports the Anthropic SDK) is made on its first
call, and the recall index and the documents' embedder and Chroma on first use, even
in the app (see `factories.py`: `provider_on_first_call`, `build_recall_index`;
and `VectorStore`). The factories each part calls live in `factories.py`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from sqlalchemy import select

from parley.auth.sessions import SessionService
from parley.core import tracing
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.errors import ConfigurationError
from parley.core.llm import BatchClient, ChatProvider, GatewayProvider
from parley.core.logs import configure_logging
from parley.store.db import Database
from parley.store.migrate import is_current
from parley.store.models import Document, DocumentSync, VectorErasure
from parley.store.shared import release_lease, try_lease
from parley.wiring.factories import (
    agree_on_audit_key,
    build_document_index,
    build_oidc,
    build_recall_index,
    build_sessions,
    open_database,
    provider_on_first_call,
    session_secret,
)

if TYPE_CHECKING:
    from parley.auth.accounts import AccountService
    from parley.auth.groups import GroupService
    from parley.auth.oidc import OidcSignIn
    from parley.auth.throttle import LoginThrottle
    from parley.chat.batch.service import BatchService
    from parley.chat.conversation.context import ContextBuilder
    from parley.chat.conversation.conversations import ConversationService
    from parley.chat.conversation.drafts import DraftKeeper, DraftSettler
    from parley.chat.conversation.feedback import FeedbackService
    from parley.chat.conversation.history import HistoryCache
    from parley.chat.conversation.lab import StrategyLab
    from parley.chat.conversation.search import ConversationSearch
    from parley.chat.conversation.service import ChatService
    from parley.chat.conversation.transfer import ConversationTransfer
    from parley.chat.conversation.upkeep import Upkeep
    from parley.chat.documents.library import DocumentService
    from parley.chat.gateway.admission import ConcurrencyGate, RateLimiter
    from parley.chat.gateway.limited_provider import LimitedProvider
    from parley.chat.gateway.outbox import MeteringOutbox
    from parley.chat.gateway.pricing import Pricing
    from parley.chat.gateway.quotas import QuotaService
    from parley.chat.gateway.redaction import Redactor
    from parley.chat.gateway.response_cache import ResponseCache
    from parley.chat.gateway.usage import UsageService
    from parley.chat.oversight.audit_trail import AuditTrail
    from parley.chat.oversight.erasure import ErasureService
    from parley.chat.oversight.review import ReviewService
    from parley.memory import StrategyRegistry, Summarizer
    from parley.retrieval.document_index import DocumentIndex
    from parley.retrieval.injection import InjectionDetector

T = TypeVar("T")


log = logging.getLogger(__name__)


class _Part(Generic[T]):
    """A part of `Services`, made by the decorated method when first read, once.

    The made part is kept in the instance's `__dict__` under the part's name, where
    Python finds it before this descriptor: reading a made part costs nothing. Making
    one holds the services' lock (re-entrant: the chat service makes its context, which
    makes the memory strategies), so two threads asking at once make it once."""

    def __init__(self, build: Callable[[Services], T]) -> None:
        self._build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, services: None, owner: type[Services]) -> _Part[T]: ...

    @overload
    def __get__(self, services: Services, owner: type[Services]) -> T: ...

    def __get__(self, services: Services | None, owner: type[Services]) -> _Part[T] | T:
        if services is None:
            return self
        with services._making:
            made = services.__dict__.get(self.name, _NOT_MADE)
            if made is _NOT_MADE:
                made = self._build(services)
                services.__dict__[self.name] = made
        return made  # type: ignore[no-any-return]


_NOT_MADE: Any = object()


class Services:
    """Every service of one process, each made on first use (see the module docstring).

    Pages and commands call services. The database is here to be closed (and for tests
    and benchmarks that seed it), not handed out: no public part is the database."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        provider: ChatProvider | None,
        background: BackgroundWork,
        document_index: DocumentIndex | None,
        batch_client: BatchClient | None = None,
    ) -> None:
        self.settings = settings
        self._database = database
        self.background = background
        self._chosen_provider = provider  # tests and benchmarks choose; else the settings
        self._chosen_document_index = document_index
        self._chosen_batch_client = batch_client
        self._made_batch_client: BatchClient | None = None
        self._making = threading.RLock()

    @classmethod
    def part_names(cls) -> list[str]:
        """The public parts, in the order they are declared."""
        return [
            name
            for name, value in vars(cls).items()
            if isinstance(value, _Part) and not name.startswith("_")
        ]

    def make_all(self) -> None:
        """Make every part now (the app's start): a wrong setting shows at once."""
        for name in self.part_names():
            getattr(self, name)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Let background work finish (at most `timeout`), then release the database."""
        drained = self.background.close(timeout)
        batches = self.__dict__.get("batches")
        if batches is not None:  # a local job stops after its item; the next start resumes it
            batches.close(timeout)
        memory = self.__dict__.get("memory")
        if memory is not None:
            memory.close()
        drafts = self.__dict__.get("drafts")
        if drafts is not None:
            drafts.close()
        tracing.flush()
        self._database.dispose()
        return drained

    # -- accounts and sign-in ---------------------------------------------------------

    @_Part
    def sessions(self) -> SessionService:
        return build_sessions(self.settings, self._database)

    @_Part
    def _throttle(self) -> LoginThrottle:
        from parley.auth.throttle import LoginThrottle

        s = self.settings
        return LoginThrottle(
            self._database,
            max_failures=s.login_max_failures,
            lockout=timedelta(minutes=s.login_lockout_minutes),
            delay_s=s.login_delay_s,
        )

    @_Part
    def accounts(self) -> AccountService:
        from parley.auth.accounts import AccountService

        return AccountService(self._database, throttle=self._throttle, sessions=self.sessions)

    @_Part
    def groups(self) -> GroupService:
        from parley.auth.groups import GroupService

        return GroupService(self._database)

    @_Part
    def _oidc(self) -> OidcSignIn:
        return build_oidc(self.settings, self._database)

    @property
    def oidc(self) -> OidcSignIn:
        """Sign-in through an OpenID provider: made on first use even in the app (which may
        well never use it; httpx, with the rich and pygments it imports)."""
        return self._oidc

    # -- the provider gateway ---------------------------------------------------------

    @_Part
    def limiter(self) -> RateLimiter:
        from parley.chat.gateway.admission import (
            DatabaseBucketStore,
            MemoryBucketStore,
            RateLimiter,
        )

        s = self.settings
        shared = s.limiter_store == "database"
        return RateLimiter(
            requests_per_minute=s.requests_per_minute,
            input_tokens_per_minute=s.input_tokens_per_minute,
            output_tokens_per_minute=s.output_tokens_per_minute,
            max_wait_s=s.anthropic_max_retry_wait_s,
            store=DatabaseBucketStore(self._database) if shared else MemoryBucketStore(),
            clock=time.time if shared else time.monotonic,  # processes share wall time only
        )

    @_Part
    def gate(self) -> ConcurrencyGate:
        from parley.chat.gateway.admission import ConcurrencyGate
        from parley.chat.gateway.shared_slots import SharedSlots

        s = self.settings
        shared = (
            SharedSlots(self._database, s.max_concurrent_calls)
            if s.limiter_store == "database"
            else None
        )
        return ConcurrencyGate(
            s.max_concurrent_calls, max_waiting=s.max_queued_calls, shared=shared
        )

    @_Part
    def _pricing(self) -> Pricing:
        from parley.chat.gateway.pricing import Pricing

        return Pricing(self.settings)

    @_Part
    def usage(self) -> UsageService:
        """The usage ledger: every model call's meter, and the admins' reports."""
        from parley.chat.gateway.usage import UsageService

        return UsageService(self._database, self._pricing)

    @_Part
    def quotas(self) -> QuotaService:
        from parley.chat.gateway.quotas import QuotaService

        return QuotaService(self._database, self.settings)

    @_Part
    def metering_outbox(self) -> MeteringOutbox:
        from parley.chat.gateway.outbox import MeteringOutbox

        return MeteringOutbox(self.settings.data_dir / "metering-outbox")

    @_Part
    def provider(self) -> LimitedProvider:
        """The only provider anything calls."""
        from parley.chat.gateway.limited_provider import LimitedProvider

        return LimitedProvider(
            self._chosen_provider
            or provider_on_first_call(self.settings, on_headers=self.limiter.observe_headers),
            gate=self.gate,
            limiter=self.limiter,
            meter=self.usage,
            outbox=self.metering_outbox,
            count_with_api=self.settings.anthropic_count_tokens,
            price=self._pricing.cost,
        )

    def drain_metering(self) -> None:
        """Calls metered while the database refused, written to the ledger now."""
        outbox = self.metering_outbox
        if outbox.waiting():
            outbox.drain(self.usage)

    # -- the conversation -------------------------------------------------------------

    @property
    def _capable(self) -> bool:
        # The embedded 135M model is no use as a summarizer or titler; Claude (or a
        # provider a caller chose on purpose) is.
        return self._chosen_provider is not None or self.settings.uses_anthropic

    @_Part
    def _summarizer(self) -> Summarizer:
        from parley.chat.conversation.conversations import conversation_owner
        from parley.chat.conversation.model_summaries import ModelSummarizer
        from parley.memory import ExtractiveSummarizer

        if not self._capable:
            return ExtractiveSummarizer()
        database = self._database
        provider: GatewayProvider = self.provider
        if self.settings.pii.enabled:  # a summary's prompt is the history itself
            provider = self._redacting(provider)
        return ModelSummarizer(
            provider,
            temperature=self.settings.temperature.summarize,
            owner_of=lambda cid: conversation_owner(database, cid),
        )

    @_Part
    def memory(self) -> StrategyRegistry:
        from parley.chat.conversation.conversations import conversation_exists
        from parley.chat.conversation.lab import stored_memory_options
        from parley.memory import MemoryDeps, StrategyRegistry, SummaryStore

        settings, database = self.settings, self._database
        return StrategyRegistry(
            MemoryDeps(
                summaries=SummaryStore(database),
                summarizer=self._summarizer,
                recall_factory=lambda: build_recall_index(
                    settings, alive=lambda cid: conversation_exists(database, cid)
                ),
            ),
            default=settings.memory_strategy,
            options=settings.memory_options(),
            conversation_options=lambda cid: stored_memory_options(database, cid),
        )

    @_Part
    def _context(self) -> ContextBuilder:
        from parley.chat.conversation.context import ContextBuilder

        return ContextBuilder(
            provider=self.provider,
            memory=self.memory,
            settings=self.settings,
            pricing=self._pricing,
        )

    @_Part
    def _history(self) -> HistoryCache:
        from parley.chat.conversation.history import HistoryCache

        return HistoryCache()

    @_Part
    def upkeep(self) -> Upkeep:
        from parley.chat.conversation.upkeep import Upkeep

        return Upkeep(
            history=self._history,
            database=self._database,
            memory=self.memory,
            provider=self.gateway,  # titles may come from the response cache
            work=self.background,
            settings=self.settings,
            model_titles=self.settings.model_titles and self._capable,
            drain_metering=self.drain_metering,
        )

    def _defer(self, task: Callable[[], None], name: str) -> bool:
        return self.background.submit(task, name=name)

    def _erase_derived(self, conversation_id: int) -> None:  # cached turns, then vectors
        self._history.forget(conversation_id)
        self.memory.forget(conversation_id)

    @_Part
    def conversations(self) -> ConversationService:
        from parley.chat.conversation.conversations import ConversationService

        return ConversationService(
            self._database,
            on_delete=self._erase_derived,
            forget_cached=self._history.forget,
            defer=self._defer,
            settle=self.draft_settler.settle_quietly,
        )

    @_Part
    def feedback(self) -> FeedbackService:
        """Users' ratings of answers; admins read and export them."""
        from parley.chat.conversation.feedback import FeedbackService

        return FeedbackService(self._database)

    @_Part
    def transfer(self) -> ConversationTransfer:
        """Conversations exported as Markdown or JSON, and Parley's JSON imported."""
        from parley.chat.conversation.transfer import ConversationTransfer

        return ConversationTransfer(self._database)

    @_Part
    def search(self) -> ConversationSearch:
        """Full-text search over each user's own conversations."""
        from parley.chat.conversation.search import ConversationSearch

        return ConversationSearch(self._database)

    @_Part
    def drafts(self) -> DraftKeeper:
        """This process's answers being written, checkpointed while they stream."""
        from parley.chat.conversation.drafts import DraftKeeper

        return DraftKeeper(self._database)

    @_Part
    def draft_settler(self) -> DraftSettler:
        """Keeps the answers of any process that died writing them."""
        from parley.chat.conversation.drafts import DraftSettler

        return DraftSettler(self._database, self.usage)

    @_Part
    def documents(self) -> DocumentService:
        from parley.chat.documents.library import DocumentService

        index = self._chosen_document_index or build_document_index(self.settings)
        return DocumentService(
            self._database,
            index,
            defer=self._defer,
            on_change=self.response_cache.drop_documents,
            detector=self._injection_detector(index),
        )

    def _injection_detector(self, index: DocumentIndex) -> InjectionDetector | None:
        from parley.retrieval.injection import InjectionDetector

        if not self.settings.injection.enabled:
            return None
        return InjectionDetector(index.embedder, threshold=self.settings.injection.threshold)

    @_Part
    def gateway(self) -> GatewayProvider:
        """The limited provider with the response cache in front (for keyed requests),
        PII redaction in front of that when it is on, and the output guard in front of
        all (`parley/chat/gateway/output_guard.py`, `redaction.py`)."""
        from parley.chat.gateway.output_guard import GuardedProvider, GuardSettings, audited
        from parley.chat.gateway.response_cache import CachingProvider

        inner: GatewayProvider = CachingProvider(self.provider, self.response_cache)
        if self.settings.pii.enabled:
            inner = self._redacting(inner)
        chosen = self.settings.output_guard
        if not chosen.enabled:
            return inner
        return GuardedProvider(
            inner,
            secret=session_secret(self.settings),
            settings=GuardSettings(span_chars=chosen.span_chars, allow=tuple(chosen.allow)),
            on_blocked=audited(self._database),
        )

    def _redacting(self, inner: GatewayProvider) -> GatewayProvider:
        from parley.chat.gateway.redaction import RedactingProvider

        return RedactingProvider(inner, self.redactor)

    @_Part
    def redactor(self) -> Redactor:
        """One redactor (and its memo) for the gateway and the summariser."""
        from parley.chat.gateway.redaction import Redactor, redactor_key

        chosen = self.settings.pii
        try:
            return Redactor(
                redactor_key(session_secret(self.settings)),
                phone_region=chosen.phone_region,
                national_ids=chosen.national_ids,
            )
        except ValueError as exc:
            raise ConfigurationError(f"PARLEY_PII__NATIONAL_IDS: {exc}") from exc

    @_Part
    def response_cache(self) -> ResponseCache:
        """Answers served again without a call (`parley.chat.gateway.response_cache`)."""
        from parley.chat.gateway.response_cache import CacheSettings, ResponseCache

        chosen = self.settings.response_cache
        return ResponseCache(
            self._database,
            CacheSettings(ttl_s=chosen.ttl_s, semantic_threshold=chosen.semantic_threshold),
            embed=lambda question: self.documents.embed_query(question),
        )

    @_Part
    def chat(self) -> ChatService:
        from parley.chat.conversation.service import ChatService

        return ChatService(
            database=self._database,
            provider=self.gateway,
            context=self._context,
            settings=self.settings,
            quotas=self.quotas,
            pricing=self._pricing,
            upkeep=self.upkeep,
            history=self._history,
            documents=self.documents,
            drafts=self.drafts,
            settler=self.draft_settler,
        )

    @_Part
    def lab(self) -> StrategyLab:
        from parley.chat.conversation.lab import StrategyLab

        return StrategyLab(database=self._database, context=self._context)

    @_Part
    def batches(self) -> BatchService:
        """Batch jobs (`parley.chat.batch`): the Message Batches API with Claude, the
        local model on the background pool without it."""
        from parley.chat.batch.jobs import job_kinds
        from parley.chat.batch.service import BatchService
        from parley.chat.gateway.redaction import redact_request

        settings = self.settings
        redactor = self.redactor if settings.pii.enabled else None
        return BatchService(
            self._database,
            kinds=job_kinds(
                self._database,
                summary_temperature=settings.temperature.summarize,
                title_temperature=settings.temperature.title,
            ),
            settings=settings.batch,
            usage=self.usage,
            provider=self.provider,
            client=self._batch_client,
            # Local jobs on a worker of their own: the shared pool keeps its workers for
            # the turns' upkeep however long a job runs.
            work=BackgroundWork(workers=0 if self.background.inline else 1, max_pending=64),
            capable=self._capable,
            redact=(
                (lambda request, counted: redact_request(redactor, request, counted=counted))
                if redactor is not None
                else None
            ),
        )

    def _batch_client(self) -> BatchClient | None:
        """Claude's batch path, made when first used (it loads the SDK); None when the
        provider is the local model, or one a test chose (which has no batch path unless
        the test gives one: `batch_client`)."""
        if self._chosen_batch_client is not None:
            return self._chosen_batch_client
        if self._chosen_provider is not None or not self.settings.uses_anthropic:
            return None
        with self._making:
            if self._made_batch_client is None:
                from parley.chat.gateway.providers import build_batch_client

                self._made_batch_client = build_batch_client(self.settings)
            return self._made_batch_client

    # -- oversight --------------------------------------------------------------------

    @_Part
    def review(self) -> ReviewService:
        from parley.chat.oversight.review import ReviewService

        return ReviewService(self._database)

    @_Part
    def audit(self) -> AuditTrail:
        from parley.chat.oversight.audit_trail import AuditTrail

        return AuditTrail(self._database)

    @_Part
    def erasure(self) -> ErasureService:
        from parley.chat.oversight.erasure import ErasureService

        return ErasureService(self._database, self.conversations, self.documents)


def build_services(
    settings: Settings,
    *,
    provider: ChatProvider | None = None,
    background: BackgroundWork | None = None,
    document_index: DocumentIndex | None = None,
    batch_client: BatchClient | None = None,
    legacy_sweep: bool = True,
    eager: bool = True,
) -> Services:
    """Everything the app needs. `provider` overrides the settings' choice (tests, benchmarks);
    `background` the upkeep pool (`BackgroundWork(workers=0)` runs upkeep inline);
    `document_index` the documents' vectors (tests pass one with a light embedder);
    `batch_client` the batch path (tests pass Claude's, on the fake server).
    `legacy_sweep=False` (the command line) leaves moving vectors kept the older way to
    the app's start: a command then opens the vector store only for pending work.
    `eager=False` (the command line) makes each service when first used."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings)
    tracing.configure_from_env()  # spans by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
    database = open_database(settings)
    if not is_current(database):
        raise ConfigurationError(
            "The database is not at this version's schema (new, or older): "
            "run `parley db upgrade` (make run does it)."
        )
    agree_on_audit_key(settings, database)
    if provider is None and settings.uses_anthropic:
        from parley.chat.gateway.providers import build_key_source

        build_key_source(settings)  # a missing key stops the start, not the first answer
    services = Services(
        settings,
        database,
        provider=provider,
        background=background or BackgroundWork(workers=settings.background_workers),
        document_index=document_index,
        batch_client=batch_client,
    )
    if eager:
        services.make_all()
    work = services.background
    # Calls metered while the database refused, last time; vectors of conversations and
    # documents erased while the vector store was down, and documents' vectors still in
    # the shared collection of earlier versions: moved now, on the pool (drained by
    # `close`), and only if there are any, so a command with nothing to move opens no
    # vector store and says nothing.
    if services.metering_outbox.waiting():
        work.submit(services.drain_metering, name="drain the metering outbox")
    if _sweep_due(database, legacy=legacy_sweep):
        work.submit(lambda: _sweep(database, services), name="start-up sweep")
    elif database.is_sqlite:  # no query tells whether an erasure left pages in the log
        work.submit(lambda: _reclaim(database), name="start-up checkpoint")
    if eager:  # the app: answers of processes that died writing them are kept
        from parley.chat.conversation.drafts import SETTLE_EVERY_S

        settler = services.draft_settler
        work.submit(lambda: _settle_drafts(settler), name="settle drafts")
        work.every(SETTLE_EVERY_S, lambda: _settle_drafts(settler), name="settle drafts")
    if eager:  # the app: what the vector store missed is retried while it runs, too
        # The periodic task holds the services weakly: a set dropped unclosed lets its
        # pool go, and the pool's ticker ends (`BackgroundWork.every`).
        held = weakref.ref(services)

        def sweep_if_due() -> None:
            alive = held()
            if alive is not None and _sweep_due(database, legacy=False):
                _sweep(database, alive)

        work.every(settings.sweep_minutes * 60, sweep_if_due, name="sweep")

        def drop_expired_answers() -> None:
            alive = held()
            if alive is not None:
                alive.response_cache.drop_expired()

        work.every(settings.sweep_minutes * 60, drop_expired_answers, name="expire cached answers")

        def poll_batches() -> None:
            alive = held()
            if alive is not None:
                alive.batches.poll()

        work.every(settings.batch.poll_s, poll_batches, name="poll batch jobs")
    return services


def _sweep_due(database: Database, *, legacy: bool = True) -> bool:
    """Whether the start-up sweep has anything to do: outbox rows of erasures and document
    changes the vector store missed, or (`legacy`) any document (its vectors may still be
    in the shared collection of earlier versions)."""
    probes = [select(VectorErasure.conversation_id), select(DocumentSync.document_id)]
    if legacy:
        probes.append(select(Document.id))
    with database.session() as session:
        return any(session.scalar(probe.limit(1)) is not None for probe in probes)


SWEEP_LEASE_S = 1800.0  # longer than a sweep; a process that dies sweeping frees it then


def _sweep(database: Database, services: Services) -> None:
    """The vector outbox and abandoned uploads, by one process at a time (a lease): two
    would do the same vector store work twice, and count each other's attempts."""
    token = try_lease(database, "sweep", SWEEP_LEASE_S)
    if token is None:
        log.info("Another sweep is running; this one leaves the work to it.")
        return
    try:
        services.conversations.sweep_erasures()
        services.documents.sweep_abandoned()  # uploads a process died in the middle of
        services.documents.sweep_index()
    finally:
        release_lease(database, "sweep", token)
    _reclaim(database)


def _settle_drafts(settler: DraftSettler) -> None:
    settler.settle()


def _reclaim(database: Database) -> None:
    database.reclaim()  # an erasure's pages a reader kept in the log last time
