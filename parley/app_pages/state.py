"""The one typed place for what the UI keeps: shared services and this browser's session.

Services come from `st.cache_resource` (one set per process and settings) and
hold no per-user state; per-user state lives in `UiState` in `st.session_state`.
"""

from __future__ import annotations

import atexit
import gc
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import streamlit as st
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.runtime.scriptrunner import get_script_run_ctx

from parley.auth import COOKIE_NAME
from parley.core.config import Settings, get_settings
from parley.core.domain import Principal
from parley.wiring.services import Services, build_services

_STATE_KEY = "parley_ui"


@dataclass(frozen=True)
class Login:
    session_id: int  # the server-side session (`parley/auth/sessions.py`)
    principal: Principal


@dataclass(frozen=True)
class PendingTurn:
    """An edit (`question_id` and its new `text`) or an "Answer again" (`answer_id`)
    clicked on one run and started at the top of the next, in `conversation_id`."""

    conversation_id: int
    question_id: int | None = None
    answer_id: int | None = None
    text: str | None = None


@dataclass
class UiState:
    login: Login | None = None
    conversation_id: int | None = None
    notice: str | None = None  # one sentence shown once on the next run (e.g. "session expired")
    rejected_text: str | None = None  # a message that was not sent, kept so nothing is lost
    rejected_reason: str | None = None
    confirm_delete: int | None = None
    redirect_to: str | None = None  # where the browser goes on the next run (cookie routes)
    oidc_refused: str | None = None  # why the provider's user may not sign in (not retried)
    new_documents: list[int] | None = None  # what a new conversation draws on (None: all)
    link_followed: bool = False  # the URL's `?c=ID` was read (once per browser session)
    found_message_id: int | None = None  # the message a search result opened at
    sidebar_limit: int = 50  # conversations the sidebar lists ("Show more" adds a page)
    show_archived: bool = False  # the sidebar lists the archived conversations instead
    import_round: int = 0  # a new uploader after each import
    editing: int | None = None  # the question shown in an edit box
    # The newest message of the branch this browser shows, by conversation (another tab
    # may show another branch; the conversation's own is the default).
    leaves: dict[int, int] = field(default_factory=dict)
    pending: PendingTurn | None = None  # an edit or "Answer again" to start on this run
    # Set once the answer streamed by this browser's last run is stored. A click while it
    # streams stops that run and starts the next at once (Streamlit's fast reruns), in
    # another thread: the next run waits for the stopped answer before it reads.
    answer_stored: threading.Event | None = None


def utc_today() -> date:
    """Days are UTC days everywhere in Parley (quotas, the ledger, the admins' filters)."""
    return datetime.now(UTC).date()


def ui_state() -> UiState:
    state = st.session_state.get(_STATE_KEY)
    if not isinstance(state, UiState):
        state = UiState()
        st.session_state[_STATE_KEY] = state
    return state


def services() -> Services:
    """This process's services for the current settings (a settings change builds new ones)."""
    settings = get_settings()
    return _build(settings.fingerprint(), settings)


@st.cache_resource(show_spinner=False)
def _build(fingerprint: str, _settings: Settings) -> Services:  # noqa: ARG001 - the cache key
    # Streamlit hashes `fingerprint` only; `_settings` (leading underscore) is passed through.
    built = build_services(_settings)
    # What start-up made lives as long as the process: moved out of the collector's
    # reach, so a full collection no longer walks the libraries' objects every time.
    if not _OPEN:  # once: a later settings change must not freeze the old services too
        gc.freeze()
    _OPEN.append(built)  # closed by the server's shutdown (`close_all`), or at exit
    atexit.register(built.close)
    return built


_OPEN: list[Services] = []


def close_all(timeout: float = 30.0) -> None:
    """Let every service set this process built finish its background work, then close
    it: the server calls this when it shuts down, before Python's own exit refuses new
    work (an `atexit` hook alone runs too late for the pool)."""
    while _OPEN:
        _OPEN.pop().close(timeout)


def current_principal(svc: Services) -> Principal | None:
    """The signed-in user, or None.

    Each run asks the server-side session whether it still holds (logout elsewhere,
    idle or lifetime expiry, a disabled account, a new password end it). A fresh
    page load (a reload, a new tab) resumes the session its cookie names.
    """
    state = ui_state()
    if state.login is not None:
        principal = svc.sessions.check(state.login.session_id)
        if principal is None or principal.user_id != state.login.principal.user_id:
            log_out(notice="Your session has ended. Please log in again.")
            return None
        state.login = Login(state.login.session_id, principal)
        return principal
    cookie = st.context.cookies.get(COOKIE_NAME)
    resumed = svc.sessions.resume(cookie)
    if resumed is None:
        if cookie and signed_in_with_oidc():
            # A Parley session that ended (idle, lifetime, revoked) must not be replaced
            # by the provider's sign-in still in Streamlit's cookie: both go.
            state.redirect_to = "/session/end?then=oidc"
        return None
    principal = resumed.principal
    if svc.oidc.needs_resync(principal.user_id):
        # Resumed long after the provider last confirmed their groups: ask it again.
        refreshed = svc.oidc.resync_from_provider(
            principal.user_id, access_token=_access_token(), metadata_urls=_metadata_urls()
        )
        if refreshed is None:
            svc.sessions.end(resumed.session_id)
            log_out(notice="Please sign in again, so your groups can be checked.")
            ui_state().redirect_to = "/session/end?then=oidc"
            return None
        principal = refreshed
    state.login = Login(resumed.session_id, principal)
    return principal


def _access_token() -> str | None:
    """The provider's access token of this browser's sign-in, when `expose_tokens`
    includes "access" in `.streamlit/secrets.toml` (needed to re-read groups)."""
    try:
        token = st.user.tokens.get("access")
    except Exception:
        return None
    return token if isinstance(token, str) and token else None


def _metadata_urls() -> list[str]:
    """The `server_metadata_url` of the provider section this browser signed in with."""
    found = signed_in_metadata_url()
    return [found] if found else []


def signed_in_metadata_url() -> str:
    """The `server_metadata_url` of the `[auth]` section (or `[auth.NAME]`) Streamlit
    signed this browser in with ("" if none): the claims must be that issuer's own."""
    try:
        auth = st.secrets.get("auth")
        provider = st.user.to_dict().get("provider")
    except Exception:
        return ""
    if not isinstance(auth, Mapping):
        return ""
    section = auth if provider in (None, "default") else auth.get(str(provider))
    url = section.get("server_metadata_url") if isinstance(section, Mapping) else None
    return url if isinstance(url, str) else ""


def log_in(svc: Services, principal: Principal) -> None:
    """Start a server-side session and send the browser to collect its cookie."""
    session_id, ticket = svc.sessions.start(principal)
    state = ui_state()
    state.login = Login(session_id, principal)
    state.conversation_id = None
    state.notice = None
    state.redirect_to = f"/session/start?ticket={ticket}"


def log_out(svc: Services | None = None, *, notice: str | None = None) -> None:
    """End this browser's session (server-side too) and clear its cookie."""
    state = ui_state()
    clear_cookie = svc is not None and state.login is not None
    if svc is not None and state.login is not None:
        svc.sessions.end(state.login.session_id)
    # Signed in through OIDC: Streamlit's identity cookie goes too, or the next run
    # would sign the user straight back in.
    oidc = signed_in_with_oidc()
    redirect_to = "/session/end?then=oidc" if oidc else "/session/end" if clear_cookie else None
    st.session_state[_STATE_KEY] = UiState(notice=notice, redirect_to=redirect_to)


def oidc_providers() -> list[str | None]:
    """The OIDC providers `.streamlit/secrets.toml` configures for `st.login`: None for
    the default one ([auth] with its own client_id), else each [auth.NAME]."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets file, or one that does not parse: no OIDC
        return []
    if not isinstance(auth, Mapping):
        return []
    providers: list[str | None] = [None] if "client_id" in auth else []
    providers += sorted(k for k, v in auth.items() if isinstance(v, Mapping))
    return providers


def signed_in_with_oidc() -> bool:
    try:
        return bool(oidc_providers()) and bool(st.user.is_logged_in)
    except Exception:
        return False


def follow_redirect() -> None:
    """Send the browser where `log_in` or `log_out` asked, at the top of a fresh run.

    (A redirect queued in the run that then calls `st.rerun()` can be dropped with that
    run's messages.) In a browser the page stops here, showing a line while it goes;
    without one (AppTest), the run goes on.
    """
    state = ui_state()
    url, state.redirect_to = state.redirect_to, None
    if url is None:
        return
    redirect(url)
    if st.context.headers.get("host"):
        st.caption("One moment…")
        st.stop()


def redirect(url: str) -> None:
    """Send the browser to `url` (a full page load), as `st.login` does for OIDC.

    Uses Streamlit's own redirect message; outside a browser session (AppTest) it is
    a no-op.
    """
    ctx = get_script_run_ctx()
    if ctx is None:
        return
    message = ForwardMsg()
    message.auth_redirect.url = url
    ctx.enqueue(message)
