"""The docs stay true and findable: the README is a short front door naming both commands,
every setting is in the operators' table and none is invented, every relative link and
anchor resolves, every docs page is linked from the README, and every file the docs name
exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from parley.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPERATORS = ROOT / "docs" / "operators.md"
README_MAX_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
NAMED_PATH = re.compile(r"`((?:parley|tests|docs)/[\w./-]*\w/?)")


def pages() -> list[Path]:
    """Every page a reader may follow a link from."""
    return [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file or heading does not exist."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for line in prose_lines(text):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{target} (no such file)")
            elif (
                anchor
                and file.suffix == ".md"
                and anchor not in anchors(file.read_text(encoding="utf-8"))
            ):
                broken.append(f"{target} (no heading #{anchor})")
    return broken


def setting_variables() -> set[str]:
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f"PARLEY_{name}__{sub}".upper() for sub in annotation.model_fields}
        else:
            names.add(f"PARLEY_{name}".upper())
    return names


def test_every_setting_is_in_the_operators_table() -> None:
    text = OPERATORS.read_text(encoding="utf-8")
    # `PARLEY_MEMORY__<STRATEGY>__<OPTION>` documents the dict setting `memory`.
    variable = r"`(PARLEY_[A-Z0-9_]*[A-Z0-9])(?:__<[A-Z]+>)*`"
    documented = set(re.findall(rf"^\| {variable}", text, flags=re.MULTILINE))
    documented |= set(re.findall(r"/ `(PARLEY_[A-Z0-9_]+)`", text))
    missing = setting_variables() - documented
    assert not missing, f"settings missing from docs/operators.md: {sorted(missing)}"
    invented = documented - setting_variables() - {"PARLEY_SECRETS_DIR"}
    assert not invented, f"docs/operators.md documents settings that do not exist: {invented}"


def test_the_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_names_both_commands_and_the_makefile_has_them() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    commands = {line.split("#")[0].strip() for block in blocks for line in block.splitlines()}
    assert {"make run", "make test"} <= commands, "README.md must show `make run` and `make test`"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"no `make {target}`"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    broken = broken_links(page)
    assert not broken, f"broken links in {page.relative_to(ROOT)}: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for line in prose_lines(text)
        for target in LINK.findall(line)
    }
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize(
    "page",
    [p for p in pages() if p.name != "CHANGELOG.md"],  # history may name files since gone
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_file_the_docs_name_exists(page: Path) -> None:
    named = set(NAMED_PATH.findall(page.read_text(encoding="utf-8")))
    gone = sorted(path for path in named if not (ROOT / path).exists())
    assert not gone, f"{page.relative_to(ROOT)} names files that do not exist: {gone}"


def test_the_link_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## The `parley` command\n")
    page.write_text(
        "# Title\n\n"
        "[fine](other.md#the-parley-command) [self](#title) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere)\n"
        "`[in code](missing-too.md)`\n\n"
        "```\n[in a fence](missing-three.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nowhere (no heading #nowhere)",
    ]


def test_anchors_follow_githubs_rules() -> None:
    text = (
        "# Security: what Parley defends, and what it does not\n"
        "## The prompt's layout\n## Notes\n## Notes\n```\n# a comment\n```\n"
    )
    assert anchors(text) == {
        "security-what-parley-defends-and-what-it-does-not",
        "the-prompts-layout",
        "notes",
        "notes-1",
    }
