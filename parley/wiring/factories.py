"""How each part of `Services` that needs more than a constructor is made from `Settings`:
the database and its audit key ring, sign-in sessions, OIDC, the vector store, the one
embedder per process, the recall and document indexes, and the provider made on its
first call. `parley.wiring.services` puts them together; the cookie routes, the CLI's
`db upgrade` and the benchmarks use some alone.

Heavy modules (the retrieval stack, OIDC's httpx, the model providers) are imported
inside the function that needs them, for the reason `parley.wiring.services` gives.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

from parley.auth.sessions import SessionService, secret_from_file
from parley.core.config import Settings
from parley.core.errors import ConfigurationError
from parley.core.llm import ChatProvider, ChatRequest, StreamEvent
from parley.store.db import Database
from parley.store.keys import AuditKeys
from parley.store.shared import agree_on_secret

if TYPE_CHECKING:
    from parley.auth.oidc import OidcSignIn
    from parley.retrieval.document_index import DocumentIndex
    from parley.retrieval.embeddings import MiniLMEmbedder
    from parley.retrieval.turn_recall import RecallIndex
    from parley.retrieval.vector_store import VectorStore

T = TypeVar("T")


class _Once(Generic[T]):
    """A value made by `build` when first asked for, once, whichever thread asks first."""

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


class _ProviderOnFirstCall:
    """The settings' provider, made when a model is first asked something: Claude's
    module imports the Anthropic SDK, a second of start-up that a command calling no
    model (`parley user list`) never needs. A `ChatProvider` itself."""

    def __init__(self, build: Callable[[], ChatProvider], *, takes_images: bool) -> None:
        self._provider = _Once(build)
        self._takes_images = takes_images  # known from the settings: no SDK to load for it

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

    @property
    def takes_images(self) -> bool:
        return self._takes_images

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        return self._made().stream(request)

    def count_tokens(self, request: ChatRequest) -> int:
        return self._made().count_tokens(request)


def provider_on_first_call(
    settings: Settings, *, on_headers: Callable[[Mapping[str, str]], None]
) -> ChatProvider:
    """Claude's module (and the Anthropic SDK) imported on the first call, not at start.

    `build_services` has already checked that a key can be read.
    """
    from parley.chat.gateway.providers import build_provider

    return _ProviderOnFirstCall(
        lambda: build_provider(settings, on_headers=on_headers),
        takes_images=settings.uses_anthropic,  # Claude reads images; the local model does not
    )


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


def session_secret(settings: Settings) -> str:
    """`PARLEY_SESSION_SECRET` (a setting or a file in the secrets directory), else a
    secret kept in the data dir (made on first start: right for one host only)."""
    if settings.session_secret:
        return settings.session_secret.get_secret_value()
    return secret_from_file(settings.data_dir / "session_secret")


def streamlit_cookie_secret(settings: Settings) -> str:
    """Streamlit's own cookie secret (its XSRF and OIDC cookies), derived from the session
    secret, so processes that share one share the other (and neither is written down)."""
    return hmac.new(
        session_secret(settings).encode(), b"parley-streamlit-cookie-secret", "sha256"
    ).hexdigest()


def build_sessions(settings: Settings, database: Database) -> SessionService:
    """Sign-in sessions, signed with the session secret (`session_secret`)."""
    secret = session_secret(settings)
    previous = [s.get_secret_value() for s in settings.session_previous_secrets]
    agree_on_secret(database, "session secret", secret, previous, setting="PARLEY_SESSION_SECRET")
    return SessionService(
        database,
        secret=secret,
        previous_secrets=previous,
        idle=timedelta(minutes=settings.session_idle_minutes),
        lifetime=timedelta(hours=settings.session_lifetime_hours),
    )


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


def agree_on_audit_key(settings: Settings, database: Database) -> None:
    """Refuse to start when the audit key is not the one the database was set up with."""
    keys = database.audit_keys or audit_keys(settings)
    agree_on_secret(
        database,
        "audit key",
        keys.current.decode("utf-8"),
        [k.decode("utf-8") for k in keys.previous],
        setting="PARLEY_AUDIT_KEY (or PARLEY_AUDIT_KEY_FILE)",
    )


def open_database(settings: Settings) -> Database:
    """The database of these settings, with the audit key ring its records are keyed with."""
    return Database(settings.resolved_database_url, audit_keys=audit_keys(settings))


def build_vector_store(settings: Settings) -> VectorStore:
    """Chroma: a server if `PARLEY_CHROMA_URL`, else files under the data dir."""
    from parley.retrieval.vector_store import VectorStore

    if settings.chroma_url:  # its shape is checked with the settings
        url = urlsplit(settings.chroma_url.get_secret_value())
        if url.hostname is None:  # settings made without their validation
            raise ConfigurationError("PARLEY_CHROMA_URL names no host.")
        port = url.port or (443 if url.scheme == "https" else 8000)
        return VectorStore.http(url.hostname, port, ssl=url.scheme == "https")
    return VectorStore.persistent(settings.data_dir / "chroma")


_EMBEDDERS: dict[tuple[int, Path], MiniLMEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def shared_embedder(settings: Settings) -> MiniLMEmbedder:
    """One MiniLM per process and settings: conversations and documents share it."""
    from parley.retrieval.embeddings import MiniLMEmbedder

    key = (settings.embedding_threads, settings.resolved_models_dir)
    with _EMBEDDERS_LOCK:  # the start-up sweep may ask on the pool while a page asks too
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = MiniLMEmbedder(threads=key[0], cache_dir=key[1])
        return _EMBEDDERS[key]


def build_recall_index(
    settings: Settings, *, alive: Callable[[int], bool] | None = None
) -> RecallIndex:
    """MiniLM embeddings of conversation turns, persisted in Chroma."""
    from parley.retrieval.turn_recall import RecallIndex

    return RecallIndex(
        embedder=shared_embedder(settings), store=build_vector_store(settings), alive=alive
    )


def build_document_index(settings: Settings) -> DocumentIndex:
    from parley.retrieval.document_index import DocumentIndex

    return DocumentIndex(embedder=shared_embedder(settings), store=build_vector_store(settings))
