"""Every user: who opened your conversations, when and why (administrators give a reason
to open one; it is recorded in the audit trail and shown here)."""

from __future__ import annotations

import streamlit as st

from app_pages import state
from app_pages.rendering import plain_label

services = state.services()
principal = state.current_principal(services)
if principal is None:
    st.stop()

st.title("Who looked")
st.caption(
    "Administrators can open a conversation only after giving a reason. Each time, it is "
    "recorded in the audit trail and listed here."
)
accesses = services.review.accesses(principal)
if not accesses:
    st.info("Nobody else has opened your conversations.")
for access in accesses:
    with st.container(border=True):
        if access.conversation_id is None:
            st.markdown(plain_label(f"{access.admin} {access.reason}"))
            st.caption(f"{access.at:%Y-%m-%d %H:%M} UTC")
            continue
        title = f"“{access.title}”" if access.title is not None else "(since deleted)"
        st.markdown(
            plain_label(f"{access.admin} opened conversation #{access.conversation_id} {title}")
        )
        st.caption(plain_label(f"{access.at:%Y-%m-%d %H:%M} UTC · reason: {access.reason}"))
