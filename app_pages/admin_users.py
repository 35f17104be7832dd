"""Admins: see accounts and add new ones."""

from __future__ import annotations

import streamlit as st

from app_pages import state
from parley.domain import Role
from parley.errors import ParleyError

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can see this page.")
    st.stop()

st.title("Users")
st.dataframe(
    [
        {
            "name": u.name,
            "role": u.role.value,
            "created": u.created_at,
            "last login": u.last_login_at,
        }
        for u in services.accounts.list_users(principal)
    ],
    width="stretch",
    hide_index=True,
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
        st.error(exc.user_message)
    else:
        st.success(f"Added {created.name}.")
