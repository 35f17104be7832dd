"""Strategy lab (admins and developers): one stored turn, two memory strategies, side by side."""

from __future__ import annotations

import json

import streamlit as st

from parley.app_pages import state
from parley.app_pages.words import say
from parley.core.counts import count
from parley.core.domain import MessageRole
from parley.core.errors import ParleyError
from parley.memory import ContextWindow

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can use the strategy lab.")
    st.stop()

st.title("Strategy lab")
st.caption(
    "Replay a stored conversation through two memory strategies: what each puts in the "
    "prompt for the chosen message, its tokens and its estimated cost. Each strategy's "
    "options can be set for this conversation; blank ones keep the environment's."
)

conversations = services.conversations.list_all(principal)
if not conversations:
    st.info("There are no conversations yet.")
    st.stop()
chosen = st.selectbox(
    "Conversation",
    conversations,
    format_func=lambda c: f"#{c.id} · {c.owner} · {count(c.messages, 'message')}",
)
try:
    questions = [
        m
        for m in services.conversations.messages_of(principal, chosen.id)
        if m.role is MessageRole.USER
    ]
except ParleyError as exc:  # someone else's, not opened with a reason in the last hour
    st.warning(say(exc))
    st.page_link(
        "parley/app_pages/admin_console.py", label="Admin console", icon=":material/policy:"
    )
    st.stop()
if not questions:
    st.info("This conversation has no user messages.")
    st.stop()
message = st.selectbox(
    "Replay the context for",
    questions,
    index=len(questions) - 1,
    format_func=lambda m: f"#{m.id}: {m.content[:80]}",
)
names = services.lab.strategies
left_name, right_name, budget_col = st.columns([2, 2, 1])
first = left_name.selectbox("Strategy A", names, index=names.index(services.lab.default))
second = right_name.selectbox("Strategy B", names, index=names.index("token_window"))
budget = budget_col.number_input("Budget (tokens)", min_value=200, value=2000, step=500)


admin = principal


def shown(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def options_form(name: str) -> None:
    """`name`'s options for this conversation: blank ones are the environment's."""
    try:
        options = services.lab.options_of(admin, chosen.id, name)
    except ParleyError as exc:
        st.error(say(exc))
        return
    if not options.rows:
        st.caption("This strategy has no options.")
        return
    label = f"Options · {len(options.overrides)} set for this conversation"
    with st.expander(label), st.form(key=f"memory-options-{name}"):
        typed = {
            row.name: st.text_input(
                row.name,
                value=shown(row.conversation) if row.overridden else "",
                placeholder=f"{shown(row.environment)} (the environment's)",
                help=f"{row.description or row.name} ({row.type}; default {shown(row.default)})",
                key=f"memory-option-{name}-{row.name}",
            )
            for row in options.rows
        }
        saved = st.form_submit_button("Save for this conversation")
    if saved:
        chosen_values = {key: text.strip() for key, text in typed.items() if text.strip()}
        try:  # checked by the strategy's own model: a sentence, and nothing stored, if wrong
            services.lab.set_memory_options(admin, chosen.id, name, chosen_values)
        except ParleyError as exc:
            st.error(say(exc))
            return
        st.success("Saved: this conversation's answers, and the replay below, use them.")
        options = services.lab.options_of(admin, chosen.id, name)
    if options.problem:
        st.warning(options.problem)


def show(column: st.delta_generator.DeltaGenerator, name: str) -> None:
    with column:
        st.subheader(name)
        options_form(name)
        try:
            context, estimate = services.lab.replay_context(
                admin, chosen.id, message.id, name, budget=int(budget)
            )
        except ParleyError as exc:
            st.error(say(exc))
            return
        render(context, estimate.input_cost_usd)


def render(context: ContextWindow, cost: float) -> None:
    st.metric("Prompt tokens", f"{context.total_tokens:,}", help="counted with cl100k")
    st.caption(f"Estimated input cost: ${cost:.4f} with `{services.chat.model}`")
    st.dataframe(
        [{"section": k, "tokens": v} for k, v in context.section_tokens.items()],
        hide_index=True,
        width="stretch",
    )
    st.caption(
        f"Turns in the prompt: {len(context.turn_ids)} · recalled: {len(context.recalled)} · "
        f"summary version: {context.summary_version or '—'}"
    )
    with st.expander("System prompt (the operator's text; cached)"):
        st.text(context.system)
    with st.expander(f"Messages ({len(context.messages)})"):
        for prompt_message in context.messages:
            cached = " · the end of the cached prefix" if prompt_message.cache else ""
            st.markdown(f"**{prompt_message.role}**{cached}")
            st.text(prompt_message.content)


left, right = st.columns(2)
show(left, first)
show(right, second)
