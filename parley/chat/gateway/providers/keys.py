"""Where the API key comes from, and how a rotated key is picked up without a restart.

    env      the key from settings (environment, `.env`, secrets directory); `refresh()`
             reads the settings again, so a rewritten secrets file takes effect
    file     a file holding only the key; re-read whenever its modification time changes
    command  an operator command (`vault kv get -field=key secret/parley`, a cloud
             secrets-manager CLI) whose stdout is the key, cached for a TTL

The provider calls `get()` before each request and `refresh()` once after an
authentication failure. A key is never logged or put in an exception message.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from parley.core.errors import ConfigurationError
from parley.core.logs import RedactSecrets

log = logging.getLogger(__name__)


class KeySource(Protocol):
    def get(self) -> str:
        """The current key (cached; cheap to call per request)."""
        ...

    def refresh(self) -> str:
        """Load the key again now, bypassing any cache."""
        ...


class StaticKey:
    """A key from settings. `reload` re-reads settings (e.g. a rotated secrets-dir file)."""

    def __init__(
        self, key: SecretStr, reload: Callable[[], SecretStr | None] | None = None
    ) -> None:
        self._key = key
        self._reload = reload
        RedactSecrets.register(key.get_secret_value())

    def get(self) -> str:
        return self._key.get_secret_value()

    def refresh(self) -> str:
        if self._reload is not None:
            fresh = self._reload()
            if fresh is not None:
                self._key = fresh
                RedactSecrets.register(fresh.get_secret_value())
        return self.get()


class FileKey:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._key = SecretStr("")

    def get(self) -> str:
        with self._lock:
            try:
                mtime = self._path.stat().st_mtime_ns
            except OSError as exc:
                raise ConfigurationError(f"The API key file {self._path} cannot be read.") from exc
            if mtime != self._mtime:
                self._load(mtime)
            return self._key.get_secret_value()

    def refresh(self) -> str:
        with self._lock:
            self._mtime = None
        return self.get()

    def _load(self, mtime: float) -> None:
        try:
            key = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"The API key file {self._path} cannot be read.") from exc
        if not key:
            raise ConfigurationError(f"The API key file {self._path} is empty.")
        if self._mtime is not None:
            log.info("API key file %s changed; using the new key.", self._path)
        RedactSecrets.register(key)
        self._key, self._mtime = SecretStr(key), mtime


class CommandKey:
    def __init__(
        self,
        command: str,
        *,
        ttl_s: float = 300.0,
        timeout_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argv = shlex.split(command)
        if not self._argv:
            raise ConfigurationError("PARLEY_ANTHROPIC_KEY_COMMAND is empty.")
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._key: SecretStr | None = None
        self._loaded_at = 0.0

    def get(self) -> str:
        with self._lock:
            if self._key is None or self._clock() - self._loaded_at >= self._ttl_s:
                self._load()
            assert self._key is not None
            return self._key.get_secret_value()

    def refresh(self) -> str:
        with self._lock:
            self._key = None
        return self.get()

    def _load(self) -> None:
        name = self._argv[0]
        try:
            done = subprocess.run(
                self._argv,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            raise ConfigurationError(f"The API key command ({name}) could not run.") from None
        # Neither stdout nor stderr is logged or quoted: either may hold the key.
        key = done.stdout.strip()
        if done.returncode != 0 or not key:
            raise ConfigurationError(
                f"The API key command ({name}) failed with exit code {done.returncode}."
            )
        RedactSecrets.register(key)
        self._key, self._loaded_at = SecretStr(key), self._clock()
