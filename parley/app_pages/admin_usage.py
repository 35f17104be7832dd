"""Admins: usage and cost from the ledger, per day, user, group and model (for chargeback),
with a CSV export; and each user's daily quotas."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date, timedelta

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label
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
    facts = services.usage.facts(admin, since=since, until=until)
except ParleyError as exc:
    st.error(exc.user_message)
    st.stop()

if not facts:
    st.info("No model calls in these days.")
else:
    total_cost = sum(f.cost_usd for f in facts)
    top = st.columns(3)
    top[0].metric("Cost", f"${total_cost:,.2f}")
    top[1].metric("Calls", f"{sum(f.calls for f in facts):,}")
    top[2].metric("Tokens", f"{sum(f.input_tokens + f.output_tokens for f in facts):,}")

    st.subheader("Cost per day, by user")
    per_day: dict[tuple[date, str], float] = defaultdict(float)
    for f in facts:
        per_day[(f.day, f.user)] += f.cost_usd
    st.bar_chart(
        [{"day": d, "user": u, "cost ($)": c} for (d, u), c in sorted(per_day.items())],
        x="day",
        y="cost ($)",
        color="user",
    )

    left, right = st.columns(2)
    with left:
        st.subheader("By model")
        per_model: dict[str, float] = defaultdict(float)
        for f in facts:
            per_model[f.model] += f.cost_usd
        st.bar_chart(
            [{"model": m, "cost ($)": c} for m, c in sorted(per_model.items())],
            x="model",
            y="cost ($)",
        )
    with right:
        st.subheader("By group")
        per_user_cost: dict[str, float] = defaultdict(float)
        for f in facts:
            per_user_cost[f.user] += f.cost_usd
        groups = [
            {"group": group, "cost ($)": sum(per_user_cost.get(n, 0.0) for n in names)}
            for group, names in services.groups.list_all(admin)
        ]
        if groups:
            st.bar_chart(groups, x="group", y="cost ($)")
            st.caption("A user in two groups counts in both.")
        else:
            st.caption("No groups yet.")

    st.subheader("Per user")
    fields = ("calls", "input_tokens", "output_tokens", "cache_tokens", "cost_usd")
    per_user: dict[str, dict[str, float]] = {}
    for f in facts:
        row = per_user.setdefault(f.user, dict.fromkeys(fields, 0.0))
        for name in fields:
            row[name] += getattr(f, name)
    st.dataframe(
        [
            {"user": user, **{k.replace("_", " "): round(v, 4) for k, v in row.items()}}
            for user, row in sorted(per_user.items(), key=lambda item: -item[1]["cost_usd"])
        ],
        hide_index=True,
        width="stretch",
    )
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["day", "user", "model", "purpose", "calls", *fields[1:]])
    for f in facts:
        writer.writerow(
            [f.day, f.user, f.model, f.purpose, f.calls, *(getattr(f, n) for n in fields[1:])]
        )
    st.download_button(
        "Export CSV (day, user, model, purpose)",
        table.getvalue(),
        file_name=f"parley-usage-{since}-{until}.csv",
        mime="text/csv",
    )

st.subheader("Daily quotas")
users = services.accounts.list_users(admin)
name = st.selectbox("User", [u.name for u in users], key="quota-user")
target = next((u for u in users if u.name == name), None)
if target is not None:
    messages, tokens = services.usage.stored_quota(admin, target.id)
    in_force = services.usage.quota(admin, target.id)
    used = services.usage.today(admin, target.id)
    st.caption(
        f"Today {used.messages:,} messages and {used.tokens:,} tokens (${used.cost_usd:.4f}); "
        f"in force: {in_force.messages_per_day or 'no limit'} messages, "
        f"{in_force.tokens_per_day or 'no limit':,} tokens a day."
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
                services.usage.set_quota(
                    admin,
                    target.id,
                    messages_per_day=None if keep else int(new_messages),
                    tokens_per_day=None if keep else int(new_tokens),
                )
            except ParleyError as exc:
                st.error(exc.user_message)
            else:
                st.success(f"Quotas saved for {plain_label(target.name)}.")
