"""Admins: batch jobs (document summaries, conversation summaries, titles), submitted
here and followed to the end. With Claude a job goes through the Message Batches API at
the batch price and may take minutes to hours; without a key it runs on the local model
in the background. The list refreshes itself while a job is open."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.rendering import plain_label
from parley.app_pages.words import say
from parley.chat.batch.service import JobView
from parley.core.errors import ParleyError

services = state.services()
principal = state.current_principal(services)
if principal is None or not principal.is_admin:
    st.error("Only administrators can see this page.")
    st.stop()

st.title("Batch jobs")
batches = services.batches
runs_on = (
    "Claude's Message Batches API, at the batch price; results can take up to a day"
    if services.settings.uses_anthropic
    else "the local model, in the background (no API key is set)"
)
st.caption(plain_label(f"Work nobody waits for, done in bulk. Jobs run on {runs_on}."))

with st.form("new-batch-job"):
    kinds = batches.kinds
    kind = st.selectbox(
        "Job", list(kinds), format_func=lambda name: f"{name}: {kinds[name]}", key="batch-kind"
    )
    if st.form_submit_button("Submit", type="primary"):
        try:
            job = batches.submit(principal, kind)
        except ParleyError as exc:
            st.error(say(exc))
        else:
            if job is None:
                st.info(plain_label(f"Nothing needs {kind} now: no job was made."))
            elif job.state in ("planned", "failed") and job.note:  # the API refused it
                st.warning(plain_label(f"Job {job.id}: {job.note}"))
            else:
                st.success(plain_label(f"Job {job.id} submitted: {job.items} item(s)."))


def progress_line(job: JobView) -> str:
    parts = [f"{job.done} done"]
    if job.skipped:
        parts.append(f"{job.skipped} skipped (changed meanwhile)")
    if job.failed:
        parts.append(f"{job.failed} failed")
    return f"{job.finished} of {job.items}: " + ", ".join(parts)


@st.fragment(run_every=5)
def job_list() -> None:
    # A fragment's rerun runs this function alone: the sign-in is checked again here,
    # so an admin signed out, disabled or demoted meanwhile sees nothing more.
    admin = state.current_principal(services)
    if admin is None or not admin.is_admin:
        st.error("Only administrators can see this page.")
        return
    try:
        jobs = batches.jobs(admin)
    except ParleyError as exc:
        st.error(say(exc))
        return
    if not jobs:
        st.caption("No batch jobs yet.")
        return
    for job in jobs:
        with st.container(border=True):
            head = f"Job {job.id} · {job.kind} · {job.shown_state}"
            where = "Message Batches API" if job.runner == "api" else "local model"
            st.markdown(f"**{plain_label(head)}**")
            st.caption(
                plain_label(
                    f"{where} · {job.model} · round {job.round} · "
                    f"{job.input_tokens + job.output_tokens:,} tokens · ${job.cost_usd:.4f} · "
                    f"submitted {job.created_at:%Y-%m-%d %H:%M} UTC"
                )
            )
            st.progress(
                job.finished / job.items if job.items else 1.0, text=plain_label(progress_line(job))
            )
            if job.note:
                st.caption(plain_label(job.note))
            if job.errors:
                st.caption(plain_label("Failed: " + "; ".join(job.errors)))
            if job.is_open and not job.cancel_requested:
                left, right = st.columns(2)
                if job.runner == "api" and left.button("Check now", key=f"collect-{job.id}"):
                    try:
                        batches.collect(admin, job.id)
                    except ParleyError as exc:
                        st.error(say(exc))
                    else:
                        st.rerun()  # the list as it now stands
                if right.button("Cancel", key=f"cancel-{job.id}"):
                    try:
                        batches.cancel(admin, job.id)
                    except ParleyError as exc:
                        st.error(say(exc))
                    else:
                        st.rerun()


job_list()
