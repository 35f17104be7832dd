"""The chat page: the user's conversations in the sidebar, the current one replayed and streamed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import Pacer, highlighted, plain_label, safe_markdown
from parley.app_pages.thread_view import render_message, start_pending
from parley.app_pages.words import say
from parley.chat.conversation.conversations import ConversationInfo, Thread
from parley.chat.conversation.listing import date_groups, distinct_labels
from parley.chat.conversation.replies import ReplyStream
from parley.chat.conversation.search import MAX_QUERY_CHARS
from parley.chat.conversation.transfer import MAX_FILE_BYTES
from parley.chat.documents.library import MAX_UPLOAD_MB
from parley.core.domain import Principal
from parley.core.errors import NotFound, ParleyError
from parley.wiring.services import Services

services = state.services()
ui = state.ui_state()
principal = state.current_principal(services)
if principal is None:  # the router shows this page only after login; a session may expire
    st.rerun()
assert principal is not None


LINK = "c"  # the open conversation's id in the URL, so a reload keeps it open
SIDEBAR_PAGE = 50  # conversations listed at first, and added by each "Show more"
MAX_IMPORT_MB = MAX_FILE_BYTES // (1024 * 1024)


def follow_link(svc: Services, who: Principal) -> None:
    """On a fresh page load, open the conversation the URL names (`?c=ID`). Only its
    owner opens it; anyone else reads the same sentence as for one that does not exist."""
    if ui.link_followed:
        return
    ui.link_followed = True
    linked = st.query_params.get(LINK)
    if linked is None or ui.conversation_id is not None:
        return
    try:
        wanted = int(linked)
        if not 0 < wanted < 2**63:  # a database's integer: nothing larger is an id
            raise ValueError(linked)
        ui.conversation_id = svc.conversations.get(who, wanted).id
    except (ValueError, NotFound):
        ui.notice = "That link does not open a conversation of yours."


def keep_link(conversation_id: int | None) -> None:
    """The URL names the conversation shown (a reload comes back to it), or none."""
    if conversation_id is None:
        if LINK in st.query_params:
            del st.query_params[LINK]
    elif st.query_params.get(LINK) != str(conversation_id):
        st.query_params[LINK] = str(conversation_id)


def render_sidebar(svc: Services, who: Principal) -> None:
    with st.sidebar:
        st.caption(f"Logged in as **{plain_label(who.name)}** · answers by `{svc.chat.model}`")
        if st.button("New conversation", icon=":material/add:", width="stretch"):
            open_conversation(None)
        query = st.text_input(
            "Search your conversations",
            key="search",
            max_chars=MAX_QUERY_CHARS,
            placeholder="Search your conversations",
            label_visibility="collapsed",
            icon=":material/search:",
        )
        if query.strip():
            render_search(svc, who, query)
        if ui.conversation_id is None and (labels := document_labels(svc, who)):

            def keep(picked: list[int] | None) -> None:
                ui.new_documents = picked

            pick_documents(labels, ui.new_documents, key="documents-new", on_change=keep)
        render_conversation_list(svc, who)


def render_conversation_list(svc: Services, who: Principal) -> None:
    """Pinned conversations, then the others by day, a page at a time; or the archived."""
    page = svc.conversations.listing(who, limit=ui.sidebar_limit, archived=ui.show_archived)
    shown = [*page.pinned, *page.recent]
    if not shown:
        st.caption("No archived conversations." if ui.show_archived else "No conversations yet.")
    labels = distinct_labels(shown)

    def entry(conversation: ConversationInfo) -> None:
        current = conversation.id == ui.conversation_id
        if st.button(
            plain_label(labels[conversation.id]),
            key=f"conversation-{conversation.id}",
            type="secondary" if current else "tertiary",
            icon=":material/chat_bubble:" if current else None,
            width="stretch",
        ):
            open_conversation(conversation.id)

    if page.pinned:
        st.caption(":material/keep: Pinned")
        for conversation in page.pinned:
            entry(conversation)
    if ui.show_archived:
        groups = [("Archived", page.recent)] if page.recent else []
    else:
        groups = date_groups(page.recent, today=state.utc_today())
    for heading, group in groups:
        st.caption(heading)
        for conversation in group:
            entry(conversation)
    if page.more and st.button("Show more", key="sidebar-more", type="tertiary"):
        ui.sidebar_limit += SIDEBAR_PAGE
        st.rerun()

    def toggle_archived() -> None:
        ui.show_archived = bool(st.session_state["show-archived"])
        ui.sidebar_limit = SIDEBAR_PAGE

    st.toggle(
        "Show archived", value=ui.show_archived, key="show-archived", on_change=toggle_archived
    )
    with st.expander("Import a conversation"):
        upload = st.file_uploader(
            "A conversation exported from Parley as JSON",
            type=["json"],
            max_upload_size=MAX_IMPORT_MB,
            key=f"import-{ui.import_round}",
        )
        if upload is not None and st.button("Import", key="import-button"):
            try:
                made = svc.transfer.import_(who, upload.getvalue())
            except ParleyError as exc:
                st.error(say(exc))
            else:
                ui.import_round += 1  # a fresh uploader: the file is not imported twice
                open_conversation(made.id)


def open_conversation(conversation_id: int | None, found: int | None = None) -> None:
    ui.conversation_id = conversation_id
    ui.found_message_id = found
    ui.confirm_delete = ui.editing = ui.pending = None
    st.rerun()


def render_search(svc: Services, who: Principal, query: str) -> None:
    """The user's own conversations that hold every word: each result opens its
    conversation at the message found."""
    try:
        hits = svc.search.search(who, query)
    except ParleyError as exc:
        st.caption(say(exc))
        return
    if not hits:
        st.caption("Nothing in your conversations matches.")
    for hit in hits:
        where = highlighted(hit.snippet, hit.marks)
        label = f"{plain_label(hit.title)} · {where}" if hit.message_id else where
        key = f"found-{hit.conversation_id}-{hit.message_id or 0}"  # the hit, not its place
        if st.button(label, key=key, type="tertiary", width="stretch"):
            if hit.message_id is not None:  # the branch that holds it (an answer a
                with suppress(ParleyError):  # retry replaced: the branch shown)
                    ui.leaves[hit.conversation_id] = svc.conversations.show_branch(
                        who, hit.conversation_id, hit.message_id
                    )
            open_conversation(hit.conversation_id, hit.message_id)
    st.divider()


def document_labels(svc: Services, who: Principal) -> dict[int, str]:
    return {d.id: f"{d.name} ({d.owner})" for d in svc.documents.list_for(who)}


def pick_documents(
    labels: dict[int, str],
    chosen: list[int] | None,
    *,
    key: str,
    on_change: Callable[[list[int] | None], None],
) -> None:
    """A multiselect of documents; nothing picked means every document (None). Only a
    change the user makes is passed on: a chosen document that is no longer visible
    stays chosen (it may be shared again), rather than the choice widening to all."""
    hidden = [d for d in chosen or [] if d not in labels]

    def changed() -> None:
        picked = list(st.session_state[key])
        on_change([*picked, *hidden] if picked or hidden else None)

    st.multiselect(
        "Documents it draws on",
        list(labels),
        default=[d for d in chosen or [] if d in labels],
        format_func=lambda d: labels.get(d, f"document {d}"),
        placeholder="Every document you may read",
        key=key,
        on_change=changed,
    )


def render_document_choice(svc: Services, who: Principal, conversation_id: int) -> None:
    labels = document_labels(svc, who)
    if not labels:
        return

    def choose(picked: list[int] | None) -> None:
        try:
            svc.conversations.choose_documents(who, conversation_id, picked)
        except ParleyError as exc:
            ui.rejected_reason = say(exc)

    chosen = svc.conversations.documents_of(who, conversation_id)
    pick_documents(labels, chosen, key=f"documents-{conversation_id}", on_change=choose)


def render_conversation_settings(svc: Services, who: Principal, conversation_id: int) -> None:
    with st.sidebar.expander("This conversation"):
        render_document_choice(svc, who, conversation_id)
        info = svc.conversations.get(who, conversation_id)
        title = info.title
        new_title = st.text_input("Title", value=title, max_chars=200, key="rename")
        if st.button("Rename", key="rename-button") and new_title != title:
            try:
                svc.conversations.rename(who, conversation_id, new_title)
            except ParleyError as exc:
                st.error(say(exc))
            else:
                st.rerun()
        if who.is_admin:
            names = svc.lab.strategies
            current = svc.lab.strategy_of(who, conversation_id)
            if current not in names:  # its plugin was uninstalled: the default answers
                st.caption(
                    f":warning: Its strategy {plain_label(repr(current))} is no longer "
                    f"installed; {plain_label(repr(svc.lab.default))} answers instead."
                )
                current = svc.lab.default
            picked = st.selectbox(
                "Memory strategy", names, index=names.index(current), key="memory-strategy"
            )
            if picked != current:
                try:
                    svc.lab.set_conversation_strategy(who, conversation_id, picked)
                except ParleyError as exc:
                    st.error(say(exc))
                else:
                    st.rerun()
        markdown, json_file = st.columns(2)
        markdown.download_button(
            "Markdown",
            data=lambda: svc.transfer.export(who, conversation_id, "markdown"),
            file_name=f"conversation-{conversation_id}.md",
            mime="text/markdown",
            icon=":material/download:",
            on_click="ignore",
            key="export-markdown",
        )
        json_file.download_button(
            "JSON",
            data=lambda: svc.transfer.export(who, conversation_id, "json"),
            file_name=f"conversation-{conversation_id}.json",
            mime="application/json",
            icon=":material/download:",
            on_click="ignore",
            key="export-json",
        )
        pin, archive = st.columns(2)
        if pin.button("Unpin" if info.pinned else "Pin", key="pin-button", icon=":material/keep:"):
            act(lambda: svc.conversations.set_pinned(who, conversation_id, not info.pinned))
        if archive.button(
            "Unarchive" if info.archived else "Archive",
            key="archive-button",
            icon=":material/archive:",
        ):
            act(lambda: svc.conversations.set_archived(who, conversation_id, not info.archived))
        if ui.confirm_delete != conversation_id:
            if st.button("Delete", key="delete-button", icon=":material/delete:"):
                ui.confirm_delete = conversation_id
                st.rerun()
        else:
            st.warning("Delete this conversation and all its messages?")
            left, right = st.columns(2)
            if left.button("Yes, delete", key="delete-confirm", type="primary"):
                try:
                    svc.conversations.delete(who, conversation_id)
                except ParleyError as exc:
                    st.error(say(exc))
                else:
                    ui.conversation_id = None
                    ui.confirm_delete = None
                    st.rerun()
            if right.button("Keep it", key="delete-cancel"):
                ui.confirm_delete = None
                st.rerun()


def act(change: Callable[[], None]) -> None:
    """A button's change, then the page drawn again; a refusal is one sentence."""
    try:
        change()
    except ParleyError as exc:
        ui.notice = say(exc)
    st.rerun()


def stream_reply(
    reply: ReplyStream, question: str | None = None, files: list[str] | None = None
) -> None:
    """Stream the answer. A click on Stop (or anywhere else) ends this run at its next
    drawing (at most a tenth of a second after a word arrives) and starts the next run
    at once; `close()` below stops the answer: the provider's stream is closed and the
    text so far kept as stopped, which the next run waits for (`wait_for_answer`)."""
    stored = ui.answer_stored = threading.Event()
    ui.conversation_id = reply.conversation_id  # the next run opens it, however this ends
    try:  # from the first drawing on: a click may end the run at any `st` call
        if question is not None:
            with st.chat_message("user"):
                st.markdown(safe_markdown(question))
                for name in files or ():
                    st.caption(":material/attach_file: " + plain_label(name))
        with st.chat_message("assistant"):
            st.button("Stop", icon=":material/stop_circle:", key="stop-answer", type="tertiary")
            queue_note = st.empty()

            def show_position(position: int) -> None:
                queue_note.caption(
                    f":hourglass: Many people are asking right now: you are number {position} "
                    "in the queue."
                )

            reply.on_queue = show_position
            shown = st.empty()
            text = ""
            pacer = Pacer()
            for chunk in reply:  # the whole text so far is made safe each time:
                text += chunk  # an image split across chunks is still caught
                if pacer.due():
                    shown.markdown(safe_markdown(text) + " ▌")
            shown.markdown(safe_markdown(text))
            queue_note.empty()
    finally:
        # Stores the partial answer if the page stopped early (Stop, or any click), or
        # frees the quota of an answer that never began (stopped before its first chunk).
        try:
            reply.close()
        finally:
            # This browser shows the answer's branch next (or its question's, unsaved).
            stored_id = reply.result.message_id if reply.result else None
            ui.leaves[reply.conversation_id] = stored_id or reply.user_message_id
            stored.set()
    st.rerun()


def wait_for_answer(seconds: float = 10.0) -> None:
    """Before reading the conversation: the answer a click just stopped is stored by the
    run it stopped, in another thread; wait for it (storing takes milliseconds; a database
    that fails is retried for about a second)."""
    if ui.answer_stored is not None:
        ui.answer_stored.wait(seconds)
        ui.answer_stored = None


wait_for_answer()
follow_link(services, principal)
render_sidebar(services, principal)


def render_thread(
    svc: Services, who: Principal, conversation_id: int | None, pending: ReplyStream | None
) -> Thread:
    """The conversation's header and the branch this browser shows (its own: another tab
    may show another branch); an edit or "Answer again" started on this run streams
    below it."""
    thread = Thread([], {})
    if conversation_id is not None:
        leaf = pending.user_message_id if pending else ui.leaves.get(conversation_id)
        try:
            thread = svc.conversations.thread(who, conversation_id, leaf=leaf)
        except NotFound:
            ui.conversation_id = conversation_id = None
        else:
            if thread.messages:
                ui.leaves[conversation_id] = thread.messages[-1].id
    keep_link(conversation_id)
    if notice := ui.notice:
        ui.notice = None
        st.info(notice)
    if conversation_id is None:
        st.subheader("New conversation")
        st.caption(f"Answers come from `{svc.chat.model}`.")
        return thread
    render_conversation_settings(svc, who, conversation_id)
    st.subheader(plain_label(svc.conversations.get(who, conversation_id).title))
    for access in svc.review.looks(who, conversation_id=conversation_id):
        st.info(
            plain_label(
                f"{access.admin} opened this conversation on {access.at:%Y-%m-%d %H:%M} "
                f"UTC. Reason: {access.reason}"
            ),
            icon=":material/visibility:",
        )
    feedback = svc.feedback.of_conversation(who, conversation_id) if thread.messages else {}
    for message in thread.messages:
        render_message(
            svc,
            who,
            message,
            conversation_id=conversation_id,
            given=feedback.get(message.id),
            branching=thread.branching.get(message.id),
            actions=pending is None,
        )
    return thread


conversation_id = ui.conversation_id
pending = start_pending(services, principal, conversation_id) if conversation_id else None
try:  # a click while the page is drawn ends this run: the answer started must not leak
    thread = render_thread(services, principal, conversation_id, pending)
    conversation_id = ui.conversation_id
except BaseException:
    if pending is not None:
        pending.close()  # stored as stopped before it began; its quota freed
    raise
if pending is not None:
    stream_reply(pending)
messages = thread.messages
shown_leaf = messages[-1].id if messages else None

if conversation_id is not None and services.chat.needs_retry(
    principal, conversation_id, leaf=shown_leaf
):
    last = messages[-1] if messages else None
    reason = last.error if last and last.error else "This message has no answer yet."
    st.error(plain_label(reason))
    if st.button("Retry", icon=":material/refresh:", type="primary"):
        try:
            retried = services.chat.retry(principal, conversation_id, leaf=shown_leaf)
        except ParleyError as exc:
            st.error(say(exc))
        else:
            stream_reply(retried)

if ui.rejected_reason:
    st.error(ui.rejected_reason)
    if ui.rejected_text:
        st.text_area("Your message was not sent; here it is to copy:", ui.rejected_text, height=120)
    if st.button("Dismiss"):
        ui.rejected_text = ui.rejected_reason = None
        st.rerun()

estimate = services.chat.estimate_next(principal, conversation_id)
if estimate.input_cost_usd or estimate.max_output_cost_usd:
    st.caption(
        f"Next message: about {estimate.input_tokens:,} tokens of context "
        f"(≈ ${estimate.input_cost_usd:.4f}) plus your text; "
        f"the answer at most ≈ ${estimate.max_output_cost_usd:.4f}."
    )
prompt = st.chat_input(
    "Message Parley",
    accept_file="multiple",
    file_type=services.chat.file_types(),
    max_upload_size=MAX_UPLOAD_MB,  # the box says Parley's own limit
)
if prompt is not None:
    files = [(f.name, f.getvalue()) for f in prompt.files]
    try:
        if files:
            st.toast(plain_label(f"Reading {', '.join(name for name, _ in files)}…"))
        reply = services.chat.send(
            principal,
            conversation_id,
            prompt.text,
            documents=ui.new_documents if conversation_id is None else None,
            after=messages[-1].id if messages else None,  # the branch shown
            files=files,
        )
    except ParleyError as exc:
        ui.rejected_text = prompt.text if prompt.text.strip() else None
        ui.rejected_reason = say(exc)
        st.rerun()
    else:
        ui.rejected_text = ui.rejected_reason = None
        stream_reply(reply, question=prompt.text, files=[name for name, _ in files])
