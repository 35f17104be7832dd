"""Every page test starts from a migrated, empty database and the fake Messages API."""

from __future__ import annotations

import pytest
import streamlit as st

from parley.cli.main import main as cli_main
from parley.fakes.anthropic_server import FakeAnthropic


@pytest.fixture(autouse=True)
def fresh_app(claude_env: FakeAnthropic) -> FakeAnthropic:
    st.cache_resource.clear()
    assert cli_main(["db", "upgrade"]) == 0
    return claude_env
