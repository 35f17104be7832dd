"""The ledger, added up: one aggregation (`UsageFact` per UTC day, user, model and
purpose) from which the usage page, the admin console and `parley usage` all read their
totals, chargeback by group and CSV export. Pages and the CLI only show what is here."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True, slots=True)
class UsageFact:
    """Calls of one user, to one model, for one purpose, on one UTC day."""

    day: date
    user: str  # the name at the time of the call; "user #ID" once erased
    model: str
    purpose: str
    calls: int
    messages: int  # chat calls that got going: what a message quota counts
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    # The response cache: answers it served (no call), calls it could not answer, and
    # what the answers it served had cost.
    cache_hits: int = 0
    cache_misses: int = 0
    saved_tokens: int = 0
    saved_usd: float = 0.0

    @property
    def cache_tokens(self) -> int:
        return self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Totals of one user (on one day, or over the whole report)."""

    day: date | None
    user: str
    calls: int
    messages: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float

    @property
    def cache_tokens(self) -> int:
        return self.cache_read_tokens + self.cache_write_tokens

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Usage between two days (both included), and the groups' members for chargeback."""

    since: date
    until: date
    facts: tuple[UsageFact, ...]
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # group -> member names

    @property
    def cost_usd(self) -> float:
        return sum(f.cost_usd for f in self.facts)

    @property
    def calls(self) -> int:
        return sum(f.calls for f in self.facts)

    @property
    def tokens(self) -> int:
        return sum(f.input_tokens + f.output_tokens for f in self.facts)

    @property
    def cache_hits(self) -> int:
        return sum(f.cache_hits for f in self.facts)

    @property
    def cache_misses(self) -> int:
        return sum(f.cache_misses for f in self.facts)

    @property
    def saved_tokens(self) -> int:
        return sum(f.saved_tokens for f in self.facts)

    @property
    def saved_usd(self) -> float:
        return sum(f.saved_usd for f in self.facts)

    def per_user_and_day(self) -> list[UsageRow]:
        """One row per user and day, newest day first."""
        rows = _totals(self.facts, lambda f: (f.day, f.user))
        return sorted(rows, key=lambda r: (-(r.day or date.min).toordinal(), r.user))

    def per_user(self) -> list[UsageRow]:
        """One row per user over the whole report, the costliest first."""
        rows = _totals(self.facts, lambda f: (None, f.user))
        return sorted(rows, key=lambda r: (-r.cost_usd, r.user))

    @property
    def priced(self) -> bool:
        """Whether anything cost money (a local model's calls cost nothing: then the
        pages show tokens, not flat lines at $0)."""
        return any(f.cost_usd > 0 for f in self.facts)

    def cost_per_model(self) -> dict[str, float]:
        return self.per_model(lambda f: f.cost_usd)

    def tokens_per_model(self) -> dict[str, float]:
        return self.per_model(lambda f: f.input_tokens + f.output_tokens)

    def per_model(self, figure: Callable[[UsageFact], float]) -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for f in self.facts:
            found[f.model] += figure(f)
        return dict(sorted(found.items()))

    def cost_per_group(self) -> dict[str, float]:
        """Chargeback: each group's members' cost (a user in two groups counts in both)."""
        return self.per_group(lambda r: r.cost_usd)

    def tokens_per_group(self) -> dict[str, float]:
        return self.per_group(lambda r: r.tokens)

    def per_group(self, figure: Callable[[UsageRow], float]) -> dict[str, float]:
        per_user = {r.user: figure(r) for r in self.per_user()}
        return {
            group: sum(per_user.get(name, 0.0) for name in names)
            for group, names in sorted(self.groups.items())
        }

    def csv(self) -> str:
        """Every fact as a CSV row (day, user, model, purpose, then the figures)."""
        out = io.StringIO()
        writer = csv.writer(out)
        figures = (
            "calls",
            "messages",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cost_usd",
        )
        writer.writerow(["day", "user", "model", "purpose", *figures])
        for f in self.facts:
            writer.writerow([f.day, f.user, f.model, f.purpose, *(getattr(f, n) for n in figures)])
        return out.getvalue()


def _totals(
    facts: Sequence[UsageFact], key: Callable[[UsageFact], tuple[date | None, str]]
) -> list[UsageRow]:
    by: dict[tuple[date | None, str], list[UsageFact]] = defaultdict(list)
    for fact in facts:
        by[key(fact)].append(fact)
    return [
        UsageRow(
            day=day,
            user=user,
            calls=sum(f.calls for f in group),
            messages=sum(f.messages for f in group),
            input_tokens=sum(f.input_tokens for f in group),
            output_tokens=sum(f.output_tokens for f in group),
            cache_read_tokens=sum(f.cache_read_tokens for f in group),
            cache_write_tokens=sum(f.cache_write_tokens for f in group),
            cost_usd=sum(f.cost_usd for f in group),
        )
        for (day, user), group in by.items()
    ]


__all__ = ["UsageFact", "UsageReport", "UsageRow"]
