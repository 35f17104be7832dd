"""Admins: groups of users, which documents are shared with. Taking someone out of a
group hides the documents shared with it from their very next question."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label
from parley.app_pages.words import say
from parley.core.errors import ParleyError

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can see this page.")
    st.stop()

st.title("Groups")
groups = services.groups.list_all(principal)
if groups:
    st.dataframe(
        [{"group": name, "members": ", ".join(members)} for name, members in groups],
        hide_index=True,
        width="stretch",
    )
else:
    st.caption("No groups yet. Documents can be shared with a group once it exists.")

with st.form("new-group", clear_on_submit=True):
    name = st.text_input("New group", max_chars=64, help="Letters, digits, '.', '_' or '-'.")
    if st.form_submit_button("Create group"):
        try:
            services.groups.create(principal, name)
        except ParleyError as exc:
            st.error(say(exc))
        else:
            st.rerun()

if groups:
    st.subheader("Members")
    users = [u.name for u in services.accounts.list_users(principal)]
    left, right = st.columns(2)
    group = left.selectbox("Group", [g for g, _ in groups], key="member-group")
    user = right.selectbox("User", users, key="member-user")
    members = dict(groups).get(group or "", [])
    if group and user:
        inside = user in members
        label = f"Take {user} out of {group}" if inside else f"Add {user} to {group}"
        if st.button(plain_label(label), key="member-toggle"):
            try:
                if inside:
                    services.groups.remove(principal, group, user)
                else:
                    services.groups.assign(principal, group, user)
            except ParleyError as exc:
                st.error(say(exc))
            else:
                st.rerun()
