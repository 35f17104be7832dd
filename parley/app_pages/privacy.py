"""Every user: who read your data, when and why. Administrators give a reason to open
a conversation; that, their searches that read your conversations, their openings of
your documents' passages and exports of your history are in the audit trail, all
listed here, a page at a time."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label
from parley.chat.oversight.review import Look
from parley.core.counts import count

PER_PAGE = 25

services = state.services()
principal = state.current_principal(services)
if principal is None:
    st.stop()


def sentence(access: Look) -> str:
    """The words for one record (the service gives facts; the page chooses words)."""
    if access.kind == "conversation_opened":
        title = f"“{access.title}”" if access.title is not None else "(since deleted)"
        return f"{access.admin} opened your conversation #{access.conversation_id} {title}"
    if access.kind == "conversations_searched":
        if access.matched is False:
            return f"{access.admin} searched everyone's conversations, yours included (no match)"
        return f"{access.admin} searched everyone's conversations, and some of yours matched"
    if access.kind == "document_chunk_opened":
        return f"{access.admin} opened a passage of your document #{access.document_id}"
    if access.kind == "audit_exported":
        return f"{access.admin} exported your audit history"
    return f"{access.admin}: {access.kind.replace('_', ' ')}"


st.title("Who looked")
st.caption(
    "Administrators can open a conversation only after giving a reason. That, their "
    "searches through conversations, their openings of your documents and exports of "
    "your history are recorded in the audit trail and listed here."
)
page_number = int(st.session_state.get("who-looked-page", 0))
found = services.review.who_looked(principal, page=page_number, per_page=PER_PAGE)
if not found.total:
    st.info("Nobody else has read your conversations or documents.")
for access in found.looks:
    with st.container(border=True):
        st.markdown(plain_label(sentence(access)))
        when = f"{access.at:%Y-%m-%d %H:%M} UTC"
        st.caption(plain_label(f"{when} · reason: {access.reason}" if access.reason else when))
pages = max(1, -(-found.total // PER_PAGE))
if pages > 1:
    st.caption(f"Page {page_number + 1} of {pages} · {count(found.total, 'record')}")
    back, forward = st.columns(2)
    if back.button("Newer", disabled=page_number == 0, key="who-looked-newer"):
        st.session_state["who-looked-page"] = page_number - 1
        st.rerun()
    if forward.button("Older", disabled=page_number + 1 >= pages, key="who-looked-older"):
        st.session_state["who-looked-page"] = page_number + 1
        st.rerun()
