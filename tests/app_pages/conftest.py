"""Every page test starts from a migrated, empty database and the fake Messages API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st

from parley.app_pages.state import close_all
from parley.cli.main import main as cli_main
from parley.fakes.anthropic_server import FakeAnthropic


@pytest.fixture(autouse=True)
def fresh_app(claude_env: FakeAnthropic) -> Iterator[FakeAnthropic]:
    st.cache_resource.clear()
    assert cli_main(["db", "upgrade"]) == 0
    yield claude_env
    close_all()  # the app's services: their periodic work ends with the test
    st.cache_resource.clear()
