"""Helpers for the page tests: run the app, log in, add users, read a page's text."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.support import ROOT

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    return at


def log_in(at: AppTest, name: str, password: str) -> None:
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click().run()


def add_user(name: str, password: str, *, admin: bool = False) -> None:
    from parley.core.config import get_settings
    from parley.core.domain import Role
    from parley.wiring.services import build_services

    services = build_services(get_settings(), eager=False)
    try:
        services.accounts.create_user(
            ROOT, name=name, password=password, role=Role.ADMIN if admin else Role.USER
        )
    finally:
        services.close()


def page_text(at: AppTest) -> str:
    parts = (
        [m.value for m in at.markdown] + [e.value for e in at.error] + [c.value for c in at.caption]
    )
    parts += (
        [s.value for s in at.subheader] + [t.value for t in at.title] + [i.value for i in at.info]
    )
    return "\n".join(str(p) for p in parts)
