"""Settings: sources, aliases, secrets directory, nested groups."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from parley.chat.gateway.providers import build_provider
from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.local import LocalProvider
from parley.core.config import DEFAULT_CLAUDE_MODEL, ProviderChoice, Settings, get_settings
from parley.core.errors import ConfigurationError


def test_defaults_keep_all_state_in_the_data_dir(tmp_path: Path) -> None:
    settings = get_settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'parley.db'}"
    assert settings.claude_model == DEFAULT_CLAUDE_MODEL
    assert not settings.uses_anthropic


def test_environment_with_prefix_and_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_MAX_OUTPUT_TOKENS", "321")
    monkeypatch.setenv("PARLEY_TEMPERATURE__SUMMARIZE", "0.05")
    monkeypatch.setenv("PARLEY_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/parley")
    settings = get_settings()
    assert settings.max_output_tokens == 321
    assert settings.temperature.summarize == 0.05
    assert settings.temperature.chat == 0.7
    assert settings.resolved_database_url == "postgresql+psycopg://u@127.0.0.1/parley"


def test_anthropic_key_and_base_url_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    settings = get_settings()
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-test"
    assert "sk-ant-test" not in repr(settings)
    assert settings.anthropic_base_url == "http://127.0.0.1:9"
    assert settings.uses_anthropic
    assert isinstance(build_provider(settings), AnthropicProvider)


def test_key_from_the_secrets_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "anthropic_api_key").write_text("sk-ant-from-file")
    monkeypatch.setenv("PARLEY_SECRETS_DIR", str(secrets))
    settings = get_settings()
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-from-file"


def test_shared_secrets_from_files_named_after_their_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As the docs say (and Docker names secrets): `audit_key`, `session_secret`; the
    prefixed names are read too, and the environment still wins over a file."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "audit_key").write_text("audit-key-from-a-file-0123456789")
    (secrets / "parley_session_secret").write_text("session-secret-from-a-file")
    monkeypatch.setenv("PARLEY_SECRETS_DIR", str(secrets))
    settings = get_settings()
    assert settings.audit_key is not None and settings.session_secret is not None
    assert settings.audit_key.get_secret_value() == "audit-key-from-a-file-0123456789"
    assert settings.session_secret.get_secret_value() == "session-secret-from-a-file"
    (secrets / "log_level").write_text("DEBUG")  # not a secret: not read by its plain name
    (secrets / "MAX_CONCURRENT_CALLS").write_text("1")
    assert get_settings().log_level == Settings().log_level == "INFO"
    assert get_settings().max_concurrent_calls == Settings().max_concurrent_calls
    monkeypatch.setenv("PARLEY_AUDIT_KEY", "audit-key-from-the-environment")
    audit_key = get_settings().audit_key
    assert audit_key is not None
    assert audit_key.get_secret_value() == "audit-key-from-the-environment"


def test_missing_secrets_directory_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PARLEY_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="not a directory"):
        get_settings()


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PARLEY_MAX_MESSAGE_CHARS=1234\nPARLEY_LOCAL_THREADS=3\n")
    monkeypatch.setenv("PARLEY_LOCAL_THREADS", "1")
    settings = get_settings()
    assert settings.max_message_chars == 1234
    assert settings.local_threads == 1


def test_provider_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("PARLEY_PROVIDER", "local")
    settings = get_settings()
    assert settings.provider is ProviderChoice.LOCAL
    assert isinstance(build_provider(settings), LocalProvider)


def test_forcing_claude_without_a_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_PROVIDER", "anthropic")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        build_provider(get_settings())


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TEMPERATURE__CHAT", "7")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-hidden")
    monkeypatch.setenv("PARLEY_ANTHROPIC_TIMEOUT_S", "not-a-number")
    with pytest.raises(ConfigurationError, match="temperature.chat") as caught:
        get_settings()
    assert "anthropic_timeout_s" in str(caught.value)
    assert "sk-ant-hidden" not in str(caught.value) and "not-a-number" not in str(caught.value)


def test_a_password_in_a_url_never_shows_in_reprs_or_logs(tmp_path: Path) -> None:
    from parley.core.logs import RedactSecrets, configure_logging

    url = "postgresql+psycopg://parley:hunter2%21word@db.example:5432/parley"
    settings = Settings(
        data_dir=tmp_path, database_url=url, chroma_url="https://u:tok3n-x@c.example"
    )
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "tok3n-x" not in repr(settings)
    assert settings.resolved_database_url == url
    configure_logging(settings)
    assert RedactSecrets.scrub(f"connect {url} failed") == "connect [redacted] failed"
    assert "hunter2!word" not in RedactSecrets.scrub("password was hunter2!word")
    assert "tok3n-x" not in RedactSecrets.scrub("token tok3n-x refused")


def test_a_key_of_any_shape_is_redacted() -> None:
    from parley.chat.gateway.providers.keys import StaticKey
    from parley.core.logs import RedactSecrets

    StaticKey(SecretStr("gateway-token-7f3a"))  # not shaped like sk-ant-...
    assert RedactSecrets.scrub("sent gateway-token-7f3a upstream") == "sent [redacted] upstream"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://chroma.internal:8000", "must look like http://host:port"),
        ("http://:8000", "must look like http://host:port"),
        ("http://chroma.internal:port", "the port is not a number"),
    ],
)
def test_a_malformed_chroma_url_stops_the_settings(
    monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    # Checked with the settings: every process and command refuses it at its start,
    # also one that never opens the vector store.
    monkeypatch.setenv("PARLEY_CHROMA_URL", url)
    with pytest.raises(ConfigurationError) as refused:
        get_settings()
    assert "chroma_url" in str(refused.value) and why in str(refused.value)
    assert url not in str(refused.value)  # it may hold a password


def test_a_chroma_url_of_the_right_shape_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_CHROMA_URL", "https://chroma.internal")
    chroma = get_settings().chroma_url
    assert chroma is not None and chroma.get_secret_value() == "https://chroma.internal"
