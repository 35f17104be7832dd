"""The only page a visitor who is not logged in can see."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.words import say
from parley.auth.passwords import MAX_PASSWORD_LENGTH
from parley.core.errors import ParleyError

services = state.services()
ui = state.ui_state()

st.title("Parley")
if ui.notice:
    st.info(ui.notice)
if ui.oidc_refused:
    st.error(ui.oidc_refused)
    if st.button("Sign out of the provider"):
        ui.oidc_refused = None
        st.logout()

for provider in state.oidc_providers():
    label = "Sign in with single sign-on" if provider is None else f"Sign in with {provider}"
    if st.button(label, type="primary", key=f"oidc-{provider or 'default'}"):
        st.login() if provider is None else st.login(provider)

with st.form("login"):
    name = st.text_input("User name", max_chars=64)
    password = st.text_input("Password", type="password", max_chars=MAX_PASSWORD_LENGTH)
    submitted = st.form_submit_button("Log in", type="primary")

if submitted:
    try:
        principal = services.accounts.authenticate(
            name=name, password=password, client=st.context.ip_address or "local"
        )
        state.log_in(services, principal)
    except ParleyError as exc:
        st.error(say(exc))
    else:
        st.rerun()
