"""Strategy lab (admins and developers): one stored turn, two memory strategies, side by side."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
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
    "prompt for the chosen message, its tokens and its estimated cost."
)

conversations = services.conversations.list_all(principal)
if not conversations:
    st.info("There are no conversations yet.")
    st.stop()
chosen = st.selectbox(
    "Conversation",
    conversations,
    format_func=lambda c: f"#{c.id} · {c.owner} · {c.messages} messages",
)
try:
    questions = [
        m
        for m in services.conversations.messages_of(principal, chosen.id)
        if m.role is MessageRole.USER
    ]
except ParleyError as exc:  # someone else's, not opened with a reason in the last hour
    st.warning(exc.user_message)
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


def show(column: st.delta_generator.DeltaGenerator, name: str) -> None:
    with column:
        st.subheader(name)
        try:
            context, estimate = services.lab.replay_context(
                admin, chosen.id, message.id, name, budget=int(budget)
            )
        except ParleyError as exc:
            st.error(exc.user_message)
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
