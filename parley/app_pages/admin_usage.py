"""Admins: usage and cost from the ledger, per day, user, group and model (for chargeback),
with a CSV export; and each user's daily quotas."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label
from parley.app_pages.words import say
from parley.core.counts import count
from parley.core.errors import ParleyError

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can see this page.")
    st.stop()
admin = principal

st.title("Usage and quotas")
days = st.date_input("Between", (state.utc_today() - timedelta(days=29), state.utc_today()))
since, until = (days[0], days[-1]) if isinstance(days, tuple) and days else (state.utc_today(),) * 2
try:
    report = services.usage.report(admin, since=since, until=until)
except ParleyError as exc:
    st.error(say(exc))
    st.stop()

if not report.facts:
    st.info("No model calls in these days.")
else:
    top = st.columns(3)
    top[0].metric("Cost", f"${report.cost_usd:,.2f}")
    top[1].metric("Calls", f"{report.calls:,}")
    top[2].metric("Tokens", f"{report.tokens:,}")
    if report.cache_hits or report.cache_misses:
        cache = st.columns(3)
        cache[0].metric("Answered from the cache", f"{report.cache_hits:,}")
        cache[1].metric("Not in the cache", f"{report.cache_misses:,}")
        saved = (
            f"${report.saved_usd:,.2f}" if report.saved_usd else f"{report.saved_tokens:,} tokens"
        )
        cache[2].metric("Saved by the cache", saved)
    # A local model costs nothing: its charts would be flat lines at $0, so they count tokens.
    priced = report.priced
    measure = "cost ($)" if priced else "tokens"
    if not priced:
        st.caption("Nothing in these days cost money (a local model): the charts show tokens.")

    st.subheader(f"{'Cost' if priced else 'Tokens'} per day, by user")
    st.bar_chart(
        [
            {"day": r.day, "user": r.user, measure: r.cost_usd if priced else r.tokens}
            for r in reversed(report.per_user_and_day())
        ],
        x="day",
        y=measure,
        color="user",
    )

    left, right = st.columns(2)
    with left:
        st.subheader("By model")
        per_model = report.cost_per_model() if priced else report.tokens_per_model()
        st.bar_chart(
            [{"model": m, measure: c} for m, c in per_model.items()],
            x="model",
            y=measure,
        )
    with right:
        st.subheader("By group")
        per_group = report.cost_per_group() if priced else report.tokens_per_group()
        if per_group:
            st.bar_chart(
                [{"group": g, measure: c} for g, c in per_group.items()],
                x="group",
                y=measure,
            )
            st.caption("A user in two groups counts in both.")
        else:
            st.caption("No groups yet.")

    st.subheader("Per user")
    st.dataframe(
        [
            {
                "user": r.user,
                "calls": r.calls,
                "input tokens": r.input_tokens,
                "output tokens": r.output_tokens,
                "cache tokens": r.cache_tokens,
                "cost usd": round(r.cost_usd, 4),
            }
            for r in report.per_user()
        ],
        hide_index=True,
        width="stretch",
    )
    st.download_button(
        "Export CSV (day, user, model, purpose)",
        report.csv(),
        file_name=f"parley-usage-{since}-{until}.csv",
        mime="text/csv",
    )


def limit(per_day: int | None, noun: str) -> str:
    """A daily limit in words: "3 messages", or "no limit on tokens" (0 or unset)."""
    return count(per_day, noun) if per_day else f"no limit on {noun}s"


st.subheader("Daily quotas")
users = services.accounts.list_users(admin)
name = st.selectbox("User", [u.name for u in users], key="quota-user")
target = next((u for u in users if u.name == name), None)
if target is not None:
    messages, tokens = services.quotas.stored_quota(admin, target.id)
    in_force = services.quotas.quota(admin, target.id)
    used = services.quotas.today(admin, target.id)
    st.caption(
        f"Today {count(used.messages, 'message')} and {count(used.tokens, 'token')} "
        f"(${used.cost_usd:.4f}); "
        f"in force: {limit(in_force.messages_per_day, 'message')}, "
        f"{limit(in_force.tokens_per_day, 'token')} a day."
    )
    with st.form("quota"):
        keep = st.checkbox("Use the defaults", value=messages is None and tokens is None)
        left, right = st.columns(2)
        new_messages = left.number_input(
            "Messages a day (0: no limit)", 0, value=in_force.messages_per_day
        )
        new_tokens = right.number_input(
            "Tokens a day (0: no limit)", 0, value=in_force.tokens_per_day, step=10_000
        )
        if st.form_submit_button("Save quotas"):
            try:
                services.quotas.set_quota(
                    admin,
                    target.id,
                    messages_per_day=None if keep else int(new_messages),
                    tokens_per_day=None if keep else int(new_tokens),
                )
            except ParleyError as exc:
                st.error(say(exc))
            else:
                st.success(f"Quotas saved for {plain_label(target.name)}.")
