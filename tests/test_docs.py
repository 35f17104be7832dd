"""The README's settings table stays true: every setting is documented, none is invented."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from parley.core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def setting_variables() -> set[str]:
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f"PARLEY_{name}__{sub}".upper() for sub in annotation.model_fields}
        else:
            names.add(f"PARLEY_{name}".upper())
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(PARLEY_[A-Z0-9_]+)`", README, flags=re.MULTILINE))
    documented |= set(re.findall(r"/ `(PARLEY_[A-Z0-9_]+)`", README))
    missing = setting_variables() - documented
    assert not missing, f"settings missing from README: {sorted(missing)}"
    invented = documented - setting_variables() - {"PARLEY_SECRETS_DIR"}
    assert not invented, f"README documents settings that do not exist: {sorted(invented)}"
