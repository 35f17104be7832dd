"""Key sources: file re-read on change, command cached for a TTL, no key in any error."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from parley.chat.gateway.providers import build_key_source
from parley.chat.gateway.providers.keys import CommandKey, FileKey, StaticKey
from parley.core.config import KeySourceChoice, Settings
from parley.core.errors import ConfigurationError


def key_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "get-key"
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_file_key_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sk-ant-first\n")
    source = FileKey(path)
    assert source.get() == "sk-ant-first"
    path.write_text("sk-ant-second\n")
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    assert source.get() == "sk-ant-second"


def test_empty_or_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        FileKey(path).get()
    with pytest.raises(ConfigurationError, match="cannot be read"):
        FileKey(tmp_path / "missing").get()


def test_command_key_is_cached_for_its_ttl(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    script = key_script(
        tmp_path,
        "from pathlib import Path\n"
        f"p = Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print(f'sk-ant-key-{n}')",
    )
    now = [0.0]
    source = CommandKey(str(script), ttl_s=60, clock=lambda: now[0])
    assert source.get() == "sk-ant-key-1"
    now[0] = 59
    assert source.get() == "sk-ant-key-1"
    now[0] = 61
    assert source.get() == "sk-ant-key-2"
    assert source.refresh() == "sk-ant-key-3"


def test_failing_command_never_quotes_its_output(tmp_path: Path) -> None:
    script = key_script(
        tmp_path,
        "import sys\nprint('sk-ant-leaked-on-stdout')\n"
        "print('sk-ant-leaked-on-stderr', file=sys.stderr)\nsys.exit(3)",
    )
    with pytest.raises(ConfigurationError) as caught:
        CommandKey(str(script)).get()
    text = str(caught.value) + caught.value.user_message
    assert "exit code 3" in text and "leaked" not in text


def test_static_key_refresh_reads_settings_again() -> None:
    fresh = iter([SecretStr("sk-ant-rotated")])
    source = StaticKey(SecretStr("sk-ant-old"), reload=lambda: next(fresh))
    assert source.get() == "sk-ant-old"
    assert source.refresh() == "sk-ant-rotated"


def test_settings_choose_the_source(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("sk-ant-file")
    chosen = build_key_source(
        Settings(anthropic_key_source=KeySourceChoice.FILE, anthropic_key_file=key)
    )
    assert isinstance(chosen, FileKey) and chosen.get() == "sk-ant-file"
    with pytest.raises(ConfigurationError, match="PARLEY_ANTHROPIC_KEY_COMMAND"):
        build_key_source(Settings(anthropic_key_source=KeySourceChoice.COMMAND))
    assert Settings(anthropic_key_source=KeySourceChoice.FILE).uses_anthropic
