"""First run: no user exists yet, so the first person creates the admin account."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.words import say
from parley.core.errors import ParleyError

services = state.services()

st.title("Welcome to Parley")
st.write("Create the first account. It will be the administrator; you can add more users later.")

with st.form("first_run"):
    name = st.text_input("User name", max_chars=64)
    password = st.text_input("Password", type="password", help="At least 8 characters.")
    confirm = st.text_input("Password again", type="password")
    submitted = st.form_submit_button("Create admin account", type="primary")

if submitted:
    if password != confirm:
        st.error("The two passwords differ.")
    else:
        try:
            principal = services.accounts.create_first_admin(name=name, password=password)
        except ParleyError as exc:
            st.error(say(exc))
        else:
            state.log_in(services, principal)
            st.rerun()
