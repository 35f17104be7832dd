"""Admins: see accounts, add new ones, disable or enable them, unlock them after failed
sign-ins, set their passwords."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label
from parley.app_pages.words import say
from parley.core.counts import count
from parley.core.domain import Role
from parley.core.errors import ParleyError

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can see this page.")
    st.stop()

FLASH = "users-page-done"  # what the last action did, shown once after the page redraws


def done(sentence: str) -> None:
    """Say `sentence` on the redrawn page: the table and the choices then include the
    change (a user just added is listed; a sentence shown before `st.rerun` is lost)."""
    st.session_state[FLASH] = sentence
    st.rerun()


def when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "never"


st.title("Users")
if sentence := st.session_state.pop(FLASH, None):
    st.success(sentence)
users = services.accounts.list_users(principal)
locks = services.accounts.locked_until(principal)
st.dataframe(
    [
        {
            "name": u.name,
            "role": u.role.value,
            "state": "disabled"
            if u.disabled
            else f"locked until {locks[u.name]:%H:%M} UTC"
            if u.name in locks
            else "active",
            "created": when(u.created_at),
            "last sign-in": when(u.last_login_at),
        }
        for u in users
    ],
    width="stretch",
    hide_index=True,
)

st.subheader("Manage a user")
chosen = st.selectbox("User", [u.name for u in users], key="manage-user")
target = next((u for u in users if u.name == chosen), None)
if target is not None:
    toggle = "Enable" if target.disabled else "Disable"
    shown = plain_label(target.name)  # in labels and sentences, which are Markdown
    if st.button(f"{toggle} {shown}", key="toggle-user"):
        try:
            services.accounts.set_disabled(principal, target.name, disabled=not target.disabled)
        except ParleyError as exc:
            st.error(say(exc))
        else:
            done(
                f"Disabled {shown}; their sessions have ended."
                if not target.disabled
                else f"Enabled {shown}."
            )
    if target.name in locks and st.button(f"Unlock {shown}", key="unlock-user"):
        try:
            services.accounts.unlock(principal, target.name)
        except ParleyError as exc:
            st.error(say(exc))
        else:
            done(f"Unlocked {shown}: their failed sign-ins are forgotten.")
    with st.form("set_password", clear_on_submit=True):
        new_password = st.text_input(
            f"New password for {shown}", type="password", help="At least 8 characters."
        )
        if st.form_submit_button("Set password"):
            try:
                services.accounts.set_password(principal, target.name, new_password)
            except ParleyError as exc:
                st.error(say(exc))
            else:
                done(f"New password set for {shown}; their sessions have ended.")

    with st.expander(f"Erase {shown}"):
        st.caption(
            "Removes the account, its conversations (messages, summaries, memory), its "
            "documents and sessions, leaving no byte of their text. The audit trail keeps "
            "a tombstone, and the usage ledger its costs."
        )
        confirm = st.text_input("Type the user name to confirm", key="erase-confirm")
        if st.button("Erase for good", key="erase-user", disabled=confirm != target.name):
            try:
                counts = services.erasure.erase_user(principal, target.name)
            except ParleyError as exc:
                st.error(say(exc))
            else:
                done(
                    f"Erased {shown}: {count(counts['conversations'], 'conversation')}, "
                    f"{count(counts['documents'], 'document')}."
                )

st.subheader("Add a user")
with st.form("add_user", clear_on_submit=True):
    name = st.text_input("User name", max_chars=64)
    password = st.text_input("Initial password", type="password", help="At least 8 characters.")
    admin = st.checkbox("Administrator")
    submitted = st.form_submit_button("Add user")
if submitted:
    try:
        created = services.accounts.create_user(
            principal, name=name, password=password, role=Role.ADMIN if admin else Role.USER
        )
    except ParleyError as exc:
        st.error(say(exc))
    else:
        done(f"Added {plain_label(created.name)}.")
