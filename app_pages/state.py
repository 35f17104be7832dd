"""The one typed place for what the UI keeps: shared services and this browser's session.

Services come from `st.cache_resource` (one set per process and settings) and
hold no per-user state; per-user state lives in `UiState` in `st.session_state`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import streamlit as st

from auth.session import LoginSession
from parley.config import Settings, get_settings
from parley.domain import Principal
from wiring.services import Services, build_services

_STATE_KEY = "parley_ui"


@dataclass
class UiState:
    login: LoginSession | None = None
    conversation_id: int | None = None
    notice: str | None = None  # one sentence shown once on the next run (e.g. "session expired")
    rejected_text: str | None = None  # a message that was not sent, kept so nothing is lost
    rejected_reason: str | None = None
    confirm_delete: int | None = None


def ui_state() -> UiState:
    state = st.session_state.get(_STATE_KEY)
    if not isinstance(state, UiState):
        state = UiState()
        st.session_state[_STATE_KEY] = state
    return state


def _fingerprint(settings: Settings) -> str:
    dumped = settings.model_dump(mode="json")
    key = settings.anthropic_api_key
    dumped["anthropic_api_key"] = (
        hashlib.sha256(key.get_secret_value().encode()).hexdigest() if key else None
    )
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


def services() -> Services:
    """This process's services for the current settings (a settings change builds new ones)."""
    settings = get_settings()
    return _build(_fingerprint(settings), settings)


@st.cache_resource(show_spinner=False)
def _build(fingerprint: str, _settings: Settings) -> Services:  # noqa: ARG001 - the cache key
    # Streamlit hashes `fingerprint` only; `_settings` (leading underscore) is passed through.
    built = build_services(_settings)
    atexit.register(built.close)  # release the database and the question worker at exit
    return built


def current_principal(svc: Services) -> Principal | None:
    """The logged-in user, or None. Ends the login after `session_idle_minutes` of quiet."""
    state = ui_state()
    login = state.login
    if login is None:
        return None
    now = datetime.now(UTC)
    idle = timedelta(minutes=svc.settings.session_idle_minutes)
    principal = svc.accounts.refresh(login.principal)
    if login.is_expired(now=now, idle=idle) or principal is None:
        log_out(notice="Your session expired after a quiet spell. Please log in again.")
        return None
    state.login = LoginSession(principal=principal, last_active=now)
    return principal


def log_in(principal: Principal) -> None:
    state = ui_state()
    state.login = LoginSession(principal=principal, last_active=datetime.now(UTC))
    state.conversation_id = None
    state.notice = None


def log_out(*, notice: str | None = None) -> None:
    st.session_state[_STATE_KEY] = UiState(notice=notice)
