"""Admins: find conversations, open one with a reason (break-glass: its owner sees it),
see what fed each answer and what it cost; a user's audit history, exports, the
chain's check. Every rule is in the services; this page only asks them."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label, safe_markdown
from parley.app_pages.words import say
from parley.chat.documents.library import MAX_UPLOAD_MB
from parley.chat.oversight.review import Review, ReviewFilter, ReviewPage
from parley.core.counts import count
from parley.core.domain import MessageRole, MessageStatus, Principal, Rating
from parley.core.errors import ParleyError
from parley.core.records import Provenance
from parley.wiring.services import Services

PER_PAGE = 20

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can see this page.")
    st.stop()
admin = principal


def chosen_page(key: str) -> int:
    """The page index (0-based) the pager under a table last chose."""
    return max(0, int(st.session_state.get(key, 1)) - 1)


def pager(total: int, key: str) -> None:
    """The page picker under a table (its choice is read by `chosen_page` next run)."""
    pages = max(1, -(-total // PER_PAGE))
    if pages == 1:
        st.caption(f"{total:,} in all")
        return
    if int(st.session_state.get(key, 1)) > pages:
        st.session_state[key] = pages
    left, right = st.columns([1, 3])
    page = left.number_input("Page", 1, pages, key=key)
    right.caption(f"page {page} of {pages} · {total:,} in all")


def filters(svc: Services, who: Principal) -> ReviewFilter:
    users = [""] + [u.name for u in svc.accounts.list_users(who)]
    with st.form("review-filters"):
        top = st.columns(3)
        user = top[0].selectbox("User", users, format_func=lambda u: u or "everyone")
        days = top[1].date_input(
            "Messages between", (state.utc_today() - timedelta(days=7), state.utc_today())
        )
        status = top[2].selectbox(
            "An answer that ended",
            [
                None,
                MessageStatus.COMPLETE,
                MessageStatus.STOPPED,
                MessageStatus.INTERRUPTED,
                MessageStatus.ERROR,
            ],
            format_func=lambda s: "any way" if s is None else str(s),
        )
        bottom = st.columns([1, 1, 2])
        model = bottom[0].selectbox(
            "Model", [None, *svc.review.models(who)], format_func=lambda m: m or "any model"
        )
        rating = bottom[1].selectbox(
            "Feedback",
            [None, Rating.DOWN, Rating.UP],
            format_func=lambda r: {None: "any or none", Rating.DOWN: "thumbs down"}.get(
                r, "thumbs up"
            ),
        )
        text = bottom[2].text_input("Text in a message or title (this search is audited)")
        if st.form_submit_button("Find"):
            st.session_state["review-found"] = {}  # searched again: nothing cached
            st.session_state["review-page"] = 1
    since, until = (days[0], days[-1]) if isinstance(days, tuple) and days else (None, None)
    return ReviewFilter(
        user=user or None,
        since=since,
        until=until,
        status=status,
        model=model,
        text=text or None,
        rating=rating,
    )


def render_review(review: Review) -> None:
    st.subheader(plain_label(f"#{review.id} · {review.title}"))
    st.caption(
        f"Owner {plain_label(review.owner)} · {count(len(review.messages), 'message')} · "
        f"${review.cost_usd:.4f} in answers"
    )
    previous: int | None = None
    for item in review.messages:  # every branch's, in the order written
        message = item.message
        with st.chat_message("user" if message.role is MessageRole.USER else "assistant"):
            if message.parent_id != previous:  # an edit, an answer asked for again
                after = f"message #{message.parent_id}" if message.parent_id else "the start"
                st.caption(f":material/call_split: Another branch: #{message.id} follows {after}")
            if message.status is not MessageStatus.SUPERSEDED:  # a retry's answer follows
                previous = message.id  # the question, as the one it replaced did
            st.markdown(safe_markdown(message.content or "*(no text)*"))
            for name in [a.name for a in message.attachments] + [i.name for i in message.images]:
                st.caption(":material/attach_file: sent with " + plain_label(name))
            if message.role is MessageRole.USER:
                continue
            tokens = (message.input_tokens or 0) + (message.output_tokens or 0)
            st.caption(
                f"{message.status} · {plain_label(message.model or '?')} · {tokens:,} tokens · "
                f"${message.cost_usd or 0:.4f} · {message.created_at:%Y-%m-%d %H:%M} UTC"
            )
            if item.rating is not None:
                thumb = (
                    ":material/thumb_up:" if item.rating is Rating.UP else ":material/thumb_down:"
                )
                why = f" · {plain_label(item.comment)}" if item.comment else ""
                st.caption(f"{thumb} rated by its user{why}")
            if item.prompt:
                with st.expander("What went into the prompt"):
                    render_prompt(item.prompt)


def render_prompt(prompt: Provenance) -> None:
    st.markdown(
        f"Strategy **{plain_label(prompt.strategy)}** · "
        f"{prompt.total_tokens:,} tokens · "
        f"turns {len(prompt.turn_ids)} · "
        f"summary version {prompt.summary_version or '—'} · recalled {len(prompt.recalled)}"
    )
    if prompt.sources:
        st.table(  # a few rows: a plain table, its text in the page (cells are Markdown)
            [
                {
                    "passage": s.n,
                    "document": plain_label(s.name or ""),
                    "chunks": ", ".join(str(c) for c in s.chunks),
                    "page": s.page,
                    "score": s.score,
                    "allowed as": plain_label(s.allowed_as),
                }
                for s in prompt.sources
            ]
        )
    else:
        st.caption("No document passages.")
    if prompt.recalled:
        st.caption(
            "Recalled turns: "
            + ", ".join(f"#{r.turn_id}{' (flagged)' if r.suspect else ''}" for r in prompt.recalled)
        )
    if prompt.images:
        tokens = prompt.section_tokens.get("images", 0)
        st.caption(f"{count(len(prompt.images), 'image')} ({tokens:,} tokens)")


def conversations_tab() -> None:
    where = filters(services, admin)
    page = chosen_page("review-page")
    # A text search is audited: reruns (opening a row, paging back) reuse its results.
    cache: dict[tuple[ReviewFilter, int], ReviewPage] = st.session_state.setdefault(
        "review-found", {}
    )
    try:
        found = cache.get((where, page)) or services.review.find(
            admin, where, page=page, per_page=PER_PAGE
        )
    except ParleyError as exc:
        st.error(say(exc))
        return
    if where.text:
        cache[(where, page)] = found
    if not found.rows:
        st.info("No conversation matches.")
        return
    st.dataframe(
        [
            {
                "id": r.id,
                "owner": r.owner,
                "messages": r.messages,
                "cost ($)": round(r.cost_usd, 4),
                "started": r.created_at,
                "last active": r.updated_at,
            }
            for r in found.rows
        ],
        hide_index=True,
        width="stretch",
    )
    pager(found.total, "review-page")
    chosen = st.selectbox(
        "Open conversation",
        found.rows,
        format_func=lambda r: f"#{r.id} · {r.owner} · {count(r.messages, 'message')}",
    )
    if chosen is None:
        return
    if services.review.granted(admin, chosen.id):
        render_review(services.review.read(admin, chosen.id))
        return
    st.warning(
        f"{plain_label(chosen.owner)} will see that you opened this conversation, when, "
        "and your reason."
    )
    with st.form(f"break-glass-{chosen.id}", clear_on_submit=True):  # one reason, one conversation
        reason = st.text_input("Reason", max_chars=500, placeholder="e.g. support ticket 4411")
        if st.form_submit_button("Open with this reason"):
            try:
                services.review.open(admin, chosen.id, reason)
            except ParleyError as exc:
                st.error(say(exc))
            else:
                st.rerun()


def audit_tab() -> None:
    users = {u.name: u.id for u in services.accounts.list_users(admin)}
    left, right = st.columns(2)
    name = left.selectbox("Whose history", ["", *users], format_func=lambda u: u or "everyone")
    kinds = right.multiselect("Kinds", services.audit.kinds(admin))
    user_id = users.get(name) if name else None
    if st.session_state.get("audit-scope") != (user_id, tuple(kinds)):  # new filters: page 1
        st.session_state["audit-scope"] = (user_id, tuple(kinds))
        st.session_state["audit-page"] = 1
    history = services.audit.history(
        admin, user_id=user_id, kinds=kinds, page=chosen_page("audit-page"), per_page=PER_PAGE
    )
    st.dataframe(
        [
            {
                "id": r.id,
                "at": r.at[:19].replace("T", " "),
                "actor": r.actor,
                "kind": r.kind,
                "subject": r.subject,
                "data": r.data[:300],
            }
            for r in history.records
        ],
        hide_index=True,
        width="stretch",
    )
    pager(history.total, "audit-page")
    st.subheader("Export and check")
    fmt = st.radio("Format", ["jsonl", "csv"], horizontal=True)
    scope = (fmt, user_id)
    if st.button("Prepare export (goes on record)"):
        st.session_state["audit-export"] = (
            scope,
            services.audit.export(
                admin,
                format="csv" if fmt == "csv" else "jsonl",
                user_id=user_id,
            ),
        )
    kept = st.session_state.get("audit-export")
    prepared = kept[1] if kept is not None and kept[0] == scope else None  # this scope's only
    if prepared is not None:
        st.download_button("Download", prepared, file_name=f"parley-audit.{fmt}", mime="text/plain")
    last = services.audit.last_checkpoint(admin)
    st.caption(
        f"Last checkpoint: {last:%Y-%m-%d %H:%M} UTC." if last is not None else
        "No checkpoint taken yet: run `parley audit checkpoint` and keep its line "
        "outside the database (see the README)."
    )  # fmt: skip
    anchors = st.file_uploader(
        "Checkpoints kept elsewhere (optional)",
        type=["txt", "log"],
        help="A file of lines printed by `parley audit checkpoint`: each must still hold.",
        key="audit-checkpoints",
        max_upload_size=MAX_UPLOAD_MB,
    )
    if st.button("Verify the chain"):
        try:
            result = (
                services.audit.verify_against(admin, anchors.getvalue().decode("utf-8"))
                if anchors is not None
                else services.audit.verify(admin)
            )
        except UnicodeDecodeError:
            st.error("That checkpoint file is not text. Please choose the file of lines.")
            return
        except ParleyError as exc:
            st.error(say(exc))
            return
        if result.broken is None:
            held = f"; {count(result.anchors, 'checkpoint')} hold" if result.anchors else ""
            st.success(f"The audit trail is intact: {count(result.records, 'record')}{held}.")
        else:
            st.error(
                f"The audit trail is broken at record {result.broken.record_id}: "
                f"{plain_label(result.broken.reason)}."
            )


st.title("Admin console")
conversations, audit = st.tabs(["Conversations", "Audit trail"])
with conversations:
    conversations_tab()
with audit:
    audit_tab()
