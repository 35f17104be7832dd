"""Parley's entry point: a router that offers pages by login state and role."""

from __future__ import annotations

import streamlit as st

from parley.app_pages import state
from parley.app_pages.words import say
from parley.auth.oidc import SignInExpired
from parley.core.errors import ParleyError

st.set_page_config(page_title="Parley", page_icon=":speech_balloon:", layout="centered")
# Set here too, not only in .streamlit/config.toml (read from the working directory):
# wherever Streamlit is started, a browser never shows a traceback.
st.set_option("client.showErrorDetails", "none")

try:
    services = state.services()
except ParleyError as exc:
    st.error(say(exc))
    st.stop()


def route() -> None:
    """Sign-in state, then the pages this principal may see."""
    principal = state.current_principal(services)
    state.follow_redirect()
    if principal is None and state.signed_in_with_oidc() and not state.ui_state().oidc_refused:
        # The provider has signed the user in (st.login): provision or sync them, and start a
        # Parley session as a password sign-in would.
        try:
            claims = st.user.to_dict()
            metadata_url = state.signed_in_metadata_url()
            state.log_in(services, services.oidc.sign_in(claims, metadata_url=metadata_url))
        except SignInExpired:  # an old token in Streamlit's cookie: back to the provider
            state.ui_state().redirect_to = "/session/end?then=oidc"
        except ParleyError as exc:
            state.ui_state().oidc_refused = say(exc)
        st.rerun()

    if not services.accounts.has_users() and not state.oidc_providers():
        pages = [
            st.Page(
                "parley/app_pages/first_run.py", title="Welcome", icon=":material/rocket_launch:"
            )
        ]
    elif principal is None:
        pages = [st.Page("parley/app_pages/login.py", title="Log in", icon=":material/login:")]
    else:
        pages = [
            st.Page("parley/app_pages/chat.py", title="Chat", icon=":material/chat:", default=True),
            st.Page(
                "parley/app_pages/documents.py", title="Documents", icon=":material/description:"
            ),
            st.Page(
                "parley/app_pages/privacy.py", title="Who looked", icon=":material/visibility:"
            ),
        ]
        if principal.is_admin:
            pages += [
                st.Page(
                    "parley/app_pages/admin_console.py",
                    title="Admin console",
                    icon=":material/policy:",
                ),
                st.Page(
                    "parley/app_pages/admin_usage.py", title="Usage", icon=":material/bar_chart:"
                ),
                st.Page("parley/app_pages/admin_users.py", title="Users", icon=":material/group:"),
                st.Page(
                    "parley/app_pages/admin_groups.py", title="Groups", icon=":material/groups:"
                ),
                st.Page(
                    "parley/app_pages/admin_batches.py",
                    title="Batch jobs",
                    icon=":material/stacks:",
                ),
                st.Page(
                    "parley/app_pages/strategy_lab.py",
                    title="Strategy lab",
                    icon=":material/science:",
                ),
            ]
        pages.append(
            st.Page(log_out_page, title="Log out", icon=":material/logout:", url_path="logout")
        )
    st.navigation(pages).run()


def log_out_page() -> None:
    state.log_out(services, notice="You are logged out.")
    st.rerun()


try:
    route()
except ParleyError as exc:  # a page that did not catch it (the database went away while
    st.error(say(exc))  # the page ran, say): its sentence, never Streamlit's error box
