"""Logging to `<data dir>/logs/parley.log` (rotated) and stderr, with secrets redacted.

Keys are never passed to a log call on purpose; `RedactSecrets` is the second
line of defence: every record's final text is scrubbed of every registered
secret and of anything shaped like an Anthropic key before a handler writes it.
"""

from __future__ import annotations

import logging
import re
import threading
from logging.handlers import RotatingFileHandler

from parley.core.config import Settings

_KEY_SHAPE = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")
_HANDLER_NAME = "parley-file"


class RedactSecrets(logging.Filter):
    _secrets: set[str] = set()
    _lock = threading.Lock()

    @classmethod
    def register(cls, secret: str) -> None:
        """Scrub `secret` from every record from now on, whatever its shape or length."""
        if secret:
            with cls._lock:
                cls._secrets.add(secret)

    @classmethod
    def scrub(cls, text: str) -> str:
        with cls._lock:
            secrets = sorted(cls._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "[redacted]")
        return _KEY_SHAPE.sub("sk-ant-[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            scrubbed_exc = self.scrub(formatted)
            if scrubbed_exc != formatted:
                record.exc_info = None
                record.exc_text = scrubbed_exc
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


class OneLine(logging.Formatter):
    """`parley: <the sentence>` for a terminal: the first line only, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines() or [""]
        return f"parley: {lines[0]}"


def console_warnings() -> logging.Handler:
    """A stderr handler for warnings and errors as one-line sentences, secrets scrubbed."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(OneLine())
    handler.addFilter(RedactSecrets())
    return handler


def configure_logging(settings: Settings) -> None:
    """Attach the rotating file handler under the data dir (once per process and folder)."""
    for secret in settings.secret_values():
        RedactSecrets.register(secret)
    folder = settings.data_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "parley.log"
    level = logging.getLevelNamesMapping()[settings.log_level]
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.get_name() == _HANDLER_NAME:
            if getattr(handler, "baseFilename", None) == str(path.resolve()):
                return
            root.removeHandler(handler)
            handler.close()
    handler = RotatingFileHandler(path, maxBytes=5_000_000, backupCount=5, encoding="utf-8")
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, level))
    if level > logging.DEBUG:
        for noisy in ("httpx2", "httpcore2", "httpx", "httpcore", "anthropic", "watchdog"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
