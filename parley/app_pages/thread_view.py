"""A conversation's messages on the chat page: each message with its sources, usage and
actions (feedback, copy, edit, answer again) and the "2 / 3" steps between branches."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label, safe_markdown
from parley.app_pages.words import say
from parley.chat.conversation.branches import Branching
from parley.chat.conversation.conversations import ChatMessage
from parley.chat.conversation.feedback import MAX_COMMENT_CHARS, RATED, GivenFeedback
from parley.chat.conversation.replies import ReplyStream
from parley.core.counts import count
from parley.core.domain import MessageRole, MessageStatus, Principal, Rating
from parley.core.errors import ParleyError
from parley.core.records import CitedPassage
from parley.wiring.services import Services


def usage_line(message: ChatMessage) -> str:
    """`312 in · 85 out · 1,024 cached · $0.0021 · model` for an answer."""
    if message.cached:  # no call was made for it: its tokens would be zeros
        model = f" · {plain_label(message.model)}" if message.model else ""
        return f":material/bolt: the same question's answer, again: no call, no cost{model}"
    parts = []
    if message.input_tokens is not None:
        parts.append(f"{message.input_tokens:,} in")
    if message.output_tokens is not None:
        parts.append(f"{message.output_tokens:,} out")
    if message.cache_read_input_tokens:
        parts.append(f"{message.cache_read_input_tokens:,} from cache")
    if message.cache_creation_input_tokens:
        parts.append(f"{message.cache_creation_input_tokens:,} cached")
    if message.cost_usd:  # the local model is free: no "$0.0000"
        parts.append(f"${message.cost_usd:.4f}")
    if message.model:  # as the API named it: stored text, shown as such
        parts.append(plain_label(message.model))
    return " · ".join(parts)


def with_markers(text: str, citations: tuple[CitedPassage, ...]) -> str:
    """The answer with a [n] marker where each native citation stands (the local
    model's answers carry their own markers already)."""
    places: set[tuple[int, int]] = set()
    for citation in citations:
        if not citation.marker:  # a [n] the model wrote is in the text already
            places.add((min(citation.offset, len(text)), citation.n))
    for offset, n in sorted(places, reverse=True):
        text = f"{text[:offset]} [{n}]{text[offset:]}"
    return text


def render_citations(svc: Services, who: Principal, message: ChatMessage) -> None:
    """One expander per cited passage: its document's name, and the chunk itself."""
    seen: dict[int, CitedPassage] = {}
    chunks: dict[int, set[int]] = {}
    for citation in message.citations:  # every chunk cited of each passage
        seen.setdefault(citation.n, citation)
        chunks.setdefault(citation.n, set()).update(citation.chunks)
    for n, citation in sorted(seen.items()):
        render_passage(
            svc,
            who,
            f"[{n}] {citation.name}",
            citation.page,
            citation.document_id,
            chunks[n],
            suspect=citation.suspect,
        )


def render_sources(svc: Services, who: Principal, message: ChatMessage) -> None:
    """The passages an answer read when it cites none of them: the same expanders, under
    a line that says so (the model wrote no [n], so nothing says which one it used)."""
    st.caption(f"It cited none of the {count(len(message.sources), 'passage')} it read:")
    for source in message.sources:
        render_passage(
            svc,
            who,
            f"{source.n}. {source.name or 'a document'}",
            source.page,
            source.document_id,
            set(source.chunks),
            suspect=source.suspect,
        )


RECALL_NOTE = (
    "An earlier message this answer recalled reads like instructions to the model; it "
    "was quoted as data and marked so. Read the answer with that in mind."
)
SUSPECT_NOTE = (
    "This passage holds text written as instructions to the model ({why}). It was "
    "quoted as data and marked so; read the answer with that in mind."
)


def render_passage(
    svc: Services,
    who: Principal,
    label: str,
    page: int | None,
    document_id: int,
    chunks: set[int],
    *,
    suspect: str | None = None,
) -> None:
    """An expander with a passage's chunks, opened through the document service (a
    document no longer shared with the user shows a sentence instead). A passage the
    injection detector flagged says so, on its label and inside."""
    shown_page = f", page {page}" if page else ""
    flag = " · ⚠ suspect instructions" if suspect else ""
    icon = ":material/warning:" if suspect else ":material/link:"
    with st.expander(plain_label(f"{label}{shown_page}{flag}"), icon=icon):
        if suspect:
            st.warning(SUSPECT_NOTE.format(why=suspect))
        for index in sorted(chunks):
            try:
                chunk = svc.documents.open_chunk(who, document_id, index)
            except ParleyError:
                st.caption("This document is no longer there for you to read.")
                break
            where = f" · section {chunk.heading}" if chunk.heading else ""
            st.caption(plain_label(f"{chunk.name}, passage {index + 1}{where}"))
            st.text(chunk.text)


def render_answer_actions(
    svc: Services,
    who: Principal,
    conversation_id: int,
    message: ChatMessage,
    given: GivenFeedback | None,
    branching: Branching | None,
) -> None:
    """Under an answer: the steps between its siblings, "Answer again", and under a
    finished one thumbs up or down (with an optional comment) and Copy."""
    steps, rate, comment, copy, again = st.columns([3, 2, 2, 2, 3], vertical_alignment="center")
    with steps:
        render_branching(svc, who, conversation_id, message, branching)
    again.button(
        "Answer again",
        key=f"regenerate-{message.id}",
        icon=":material/refresh:",
        type="tertiary",
        help="A new answer to the same question; this one is kept (step back with ‹).",
        on_click=ask_again,
        args=(conversation_id, message.id),
    )
    if message.status not in RATED:
        return
    ui = state.ui_state()
    key = f"feedback-{message.id}"

    def rated() -> None:
        picked = st.session_state[key]
        rating = None if picked is None else (Rating.UP if picked == 1 else Rating.DOWN)
        try:
            svc.feedback.give(who, message.id, rating, given.comment if given and rating else None)
        except ParleyError as exc:
            state.ui_state().notice = say(exc)

    del ui
    with rate:
        default = None if given is None else (1 if given.rating is Rating.UP else 0)
        st.feedback("thumbs", key=key, default=default, on_change=rated)
    if given is not None:
        with comment.popover("Comment", icon=":material/comment:", type="tertiary"):
            text = st.text_area(
                "What made this answer good or bad? (optional)",
                value=given.comment or "",
                max_chars=MAX_COMMENT_CHARS,
                key=f"feedback-comment-{message.id}",
            )
            if st.button("Save", key=f"feedback-save-{message.id}"):
                try:
                    svc.feedback.give(who, message.id, given.rating, text)
                except ParleyError as exc:
                    st.error(say(exc))
                else:
                    st.rerun()
    with copy.popover("Copy", icon=":material/content_copy:", type="tertiary"):
        st.caption("The answer as written; the button at the top right copies it.")
        st.code(message.content, language="markdown", wrap_lines=True)


def render_images(svc: Services, who: Principal, message: ChatMessage) -> None:
    """The small copies of the images a question was sent with, named."""
    shown: list[bytes] = []
    names: list[str] = []
    for image in message.images:
        try:
            shown.append(svc.conversations.thumbnail(who, image.image_id)[1])
        except ParleyError:  # erased meanwhile: its name alone
            st.caption(":material/image: " + plain_label(image.name))
        else:
            names.append(image.name)
    if shown:
        st.image(shown, caption=[plain_label(n) for n in names], width=160)


def render_message(
    svc: Services,
    who: Principal,
    message: ChatMessage,
    *,
    conversation_id: int,
    given: GivenFeedback | None = None,
    branching: Branching | None = None,
    actions: bool = True,
) -> None:
    """One message; `actions` off while an answer streams below (nothing to click then)."""
    ui = state.ui_state()
    avatar = "user" if message.role is MessageRole.USER else "assistant"
    with st.chat_message(avatar):
        if message.id == ui.found_message_id:
            st.caption(":material/search: Found here")
        if message.role is MessageRole.USER and ui.editing == message.id and actions:
            render_edit_form(conversation_id, message)
            return
        if message.content:
            st.markdown(safe_markdown(with_markers(message.content, message.citations)))
        if message.images:
            render_images(svc, who, message)
        for attached in message.attachments:
            st.caption(":material/attach_file: " + plain_label(attached.name))
        if message.citations:
            render_citations(svc, who, message)
        elif message.sources and message.role is MessageRole.ASSISTANT:
            render_sources(svc, who, message)
        if message.flagged_recalls:
            st.caption(":material/warning: " + plain_label(RECALL_NOTE))
        if message.status is MessageStatus.INTERRUPTED:
            st.caption(":warning: This answer broke off; the text above is what arrived.")
        elif message.status is MessageStatus.STOPPED:
            st.caption(":material/stop_circle: Stopped; the text above is what arrived.")
        elif message.status is MessageStatus.ERROR:
            st.caption(f":warning: {plain_label(message.error or 'No answer arrived.')}")
        if message.role is MessageRole.ASSISTANT and (line := usage_line(message)):
            st.caption(line)
        if not actions:
            return
        if message.role is MessageRole.USER:
            render_question_actions(svc, who, conversation_id, message, branching)
        else:
            render_answer_actions(svc, who, conversation_id, message, given, branching)


def render_branching(
    svc: Services,
    who: Principal,
    conversation_id: int,
    message: ChatMessage,
    branching: Branching | None,
) -> None:
    """`‹ 2 / 3 ›` between a message's siblings (nothing when it has none)."""
    if branching is None:
        return
    back, where, forth = st.columns([1, 2, 1], vertical_alignment="center", gap="small")
    back.button(
        "",
        key=f"branch-back-{message.id}",
        icon=":material/chevron_left:",
        type="tertiary",
        help="The version before",
        disabled=branching.previous is None,
        on_click=show_branch,
        args=(svc, who, conversation_id, branching.previous),
    )
    where.caption(f"{branching.position} / {branching.count}")
    forth.button(
        "",
        key=f"branch-forth-{message.id}",
        icon=":material/chevron_right:",
        type="tertiary",
        help="The version after",
        disabled=branching.next is None,
        on_click=show_branch,
        args=(svc, who, conversation_id, branching.next),
    )


def show_branch(
    svc: Services, who: Principal, conversation_id: int, message_id: int | None
) -> None:
    if message_id is None:
        return
    ui = state.ui_state()
    try:
        ui.leaves[conversation_id] = svc.conversations.show_branch(who, conversation_id, message_id)
    except ParleyError as exc:
        ui.notice = say(exc)


def render_question_actions(
    svc: Services,
    who: Principal,
    conversation_id: int,
    message: ChatMessage,
    branching: Branching | None,
) -> None:
    edit = st.container()
    if branching is not None:
        steps, edit = st.columns([3, 7], vertical_alignment="center")
        with steps:
            render_branching(svc, who, conversation_id, message, branching)
    edit.button(
        "Edit",
        key=f"edit-{message.id}",
        icon=":material/edit:",
        type="tertiary",
        help="Ask this again in other words; the conversation so far stays (step back with ‹).",
        on_click=start_editing,
        args=(message.id,),
    )


def start_editing(message_id: int) -> None:
    state.ui_state().editing = message_id


def ask_again(conversation_id: int, answer_id: int) -> None:
    ui = state.ui_state()
    ui.pending = state.PendingTurn(conversation_id, answer_id=answer_id)
    ui.editing = None


def render_edit_form(conversation_id: int, message: ChatMessage) -> None:
    """The question in a box to change; Send starts a new branch from here."""
    ui = state.ui_state()
    key = f"edit-text-{message.id}"
    text = st.text_area("Your question", value=message.content, key=key, height=120)
    send, cancel, _ = st.columns([2, 2, 6])
    if send.button("Send", key=f"edit-send-{message.id}", type="primary", icon=":material/send:"):
        ui.pending = state.PendingTurn(conversation_id, question_id=message.id, text=text)
        ui.editing = None
        st.rerun()
    if cancel.button("Cancel", key=f"edit-cancel-{message.id}"):
        ui.editing = None
        st.rerun()


def start_pending(svc: Services, who: Principal, conversation_id: int) -> ReplyStream | None:
    """The edit or "Answer again" clicked on the last run, started now (before the branch
    is read, so the page shows the branch being answered); None when there is none."""
    ui = state.ui_state()
    pending, ui.pending = ui.pending, None
    if pending is None or pending.conversation_id != conversation_id:
        return None
    try:
        if pending.question_id is not None:
            return svc.chat.edit(who, conversation_id, pending.question_id, pending.text or "")
        if pending.answer_id is not None:
            return svc.chat.regenerate(who, conversation_id, pending.answer_id)
    except ParleyError as exc:  # the words typed are not lost
        ui.rejected_text = pending.text if pending.text and pending.text.strip() else None
        ui.rejected_reason = say(exc)
    return None
