"""PII redaction: personal values are replaced before text leaves for the provider, and
put back in the answer the user sees.

`RedactingProvider` sits in the gateway between the output guard and the response
cache (guard > redaction > cache > limited provider), so every caller gets it: chat
turns, summaries, titles, extraction. With `PARLEY_PII__ENABLED=true` it rewrites each
request's messages and document passages (never the operator's system prompt), sends
that, and restores the placeholders in the answer as it streams (a placeholder split
across two deltas is held until it is whole) and in the text of native citations.

    "mail ana@example.org"  →  provider sees "mail [EMAIL_5f0c19ab]"
    answer "[EMAIL_5f0c19ab] it is"  →  user sees "ana@example.org it is"

A placeholder is the kind and eight hex digits of an HMAC of the normalised value
(keyed from the session secret): the same value gets the same placeholder in every
turn, summary and process, so the model can tell two people apart, Claude's prompt
cache still hits, and nobody holding the prompt can reverse it (a plain hash of a
phone number could be found by trying them all). What is found, and by what:

- e-mail addresses: a pattern (finding them needs nothing more);
- phone numbers: `phonenumbers` (Google's libphonenumber metadata), numbers valid
  for `phone_region` or written with their country code;
- payment card numbers: 13 to 19 digits passing the Luhn check (`stdnum.luhn`);
- IBANs: `stdnum.iban` (the country's length and the mod-97 check);
- national ids: `stdnum`'s validators (check digits, ranges) behind a pattern of the
  id's written form; the UK National Insurance number by its pattern alone.

Both libraries work offline. What leaves is the placeholder only; logs, the ledger,
the audit trail and metrics hold counts by kind, never a value. Images are not read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from threading import Lock
from types import ModuleType

import phonenumbers
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.pl import pesel
from stdnum.se import personnummer
from stdnum.us import ssn

from parley.chat.gateway.wrapping import Wrapping, close_stream
from parley.core import metrics
from parley.core.errors import ProviderError
from parley.core.llm import (
    ChatRequest,
    Citation,
    GatewayProvider,
    StreamEvent,
    TextDelta,
)

log = logging.getLogger(__name__)

KINDS = ("EMAIL", "PHONE", "CARD", "IBAN", "ID")
_PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|CARD|IBAN|ID)_([0-9a-f]{8})\]", re.IGNORECASE)
# The end of an answer that could still become a placeholder: held until it is whole.
_PARTIAL = re.compile(r"\[[A-Za-z]{0,5}(?:_[0-9a-fA-F]{0,8})?$")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,24}(?![\w-])"
)
_NOT_PHONE = str.maketrans("[]{}", "    ")
_MAX_PHONE_PARSES = 400  # a text's second look at numbers the matcher passed over
_PHONE_RUN = re.compile(r"(?<![\w+])(?:\+|\()?\d[\d ().-]{4,24}\d")
# Groups of digits one space or dash apart; a card is some of them in a row, written as
# cards are (unbroken, in fours, or 4-6-5), 13 to 19 digits, passing the Luhn check.
_DIGIT_RUN = re.compile(r"(?<![\w-])\d+(?:[ -]\d+)*(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")


@dataclass(frozen=True, slots=True)
class NationalId:
    """A national id: the pattern of its written form and the validator behind it."""

    name: str
    pattern: re.Pattern[str]
    validator: ModuleType | None  # None: the pattern alone decides


def _digits(pattern: str) -> re.Pattern[str]:
    """An id's pattern as a whole token: never a part of a longer run of digit groups
    (four digits of a card number are no one's tax id)."""
    return re.compile(rf"(?<![\w-])(?<!\d[ .-]){pattern}(?![\w-])(?![ .-]\d)", re.IGNORECASE)


NATIONAL_IDS: dict[str, NationalId] = {
    nid.name: nid
    for nid in (
        NationalId("us_ssn", _digits(r"\d{3}-\d{2}-\d{4}"), ssn),
        NationalId("ca_sin", _digits(r"\d{3}[ -]\d{3}[ -]\d{3}"), sin),
        NationalId("gb_nhs", _digits(r"\d{3}[ -]?\d{3}[ -]?\d{4}"), nhs),
        # HMRC's published form: two prefix letters (some never used), six digits, A-D.
        NationalId(
            "gb_nino",
            _digits(
                r"(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
            ),
            None,
        ),
        NationalId("de_idnr", _digits(r"\d{2} ?\d{3} ?\d{3} ?\d{3}"), idnr),
        NationalId(
            "fr_nir", _digits(r"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}"), nir
        ),
        NationalId("es_dni", _digits(r"\d{8}-?[A-Za-z]"), dni),
        NationalId("es_nie", _digits(r"[XYZxyz]-?\d{7}-?[A-Za-z]"), nie),
        NationalId(
            "it_codice_fiscale",
            _digits(r"[A-Za-z]{6}\d{2}[A-Za-z]\d{2}[A-Za-z]\d{3}[A-Za-z]"),
            codicefiscale,
        ),
        NationalId("pl_pesel", _digits(r"\d{11}"), pesel),
        NationalId("se_personnummer", _digits(r"(?:\d{2})?\d{6}[-+]\d{4}"), personnummer),
        NationalId("in_aadhaar", _digits(r"[2-9]\d{3} ?\d{4} ?\d{4}"), aadhaar),
        NationalId("br_cpf", _digits(r"\d{3}\.\d{3}\.\d{3}-\d{2}"), cpf),
    )
}


@dataclass(frozen=True, slots=True)
class Found:
    start: int
    end: int
    kind: str  # one of KINDS
    value: str  # normalised: what the placeholder is derived from


@dataclass(frozen=True, slots=True)
class Redacted:
    text: str
    placeholders: dict[str, str]  # placeholder (lower case) -> the text it replaced
    counts: dict[str, int]  # kind -> values replaced


class Redactor:
    """Finds personal values in text and replaces them with stable placeholders."""

    def __init__(
        self,
        key: bytes,
        *,
        phone_region: str = "US",
        national_ids: Iterable[str] = tuple(NATIONAL_IDS),
        memo_chars: int = 8_000_000,
    ) -> None:
        unknown = set(national_ids) - set(NATIONAL_IDS)
        if unknown:
            raise ValueError(f"unknown national ids: {', '.join(sorted(unknown))}")
        self._key = key
        self._region = phone_region.upper()
        self._ids = [NATIONAL_IDS[name] for name in national_ids]
        # The same history goes out with every turn: each text is read once a scope
        # (a user), within a budget of characters held.
        self._memo: OrderedDict[tuple[str, str], Redacted] = OrderedDict()
        self._memo_chars = 0
        self._memo_budget = memo_chars
        self._lock = Lock()

    def placeholder(self, kind: str, value: str, scope: str = "") -> str:
        """`[KIND_xxxxxxxx]`: an HMAC of the value, keyed per scope (a user), so the
        provider cannot link two users who share a value."""
        key = hmac.new(self._key, f"scope:{scope}".encode(), hashlib.sha256).digest()
        digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
        return f"[{kind}_{digest[:8]}]"

    def find(self, text: str) -> list[Found]:
        """Every value found, earliest first, none overlapping. Kinds are looked for in
        turn (IBAN, national id, card, e-mail, phone), each in the text with what the
        ones before it claimed blanked out, so a value never runs into its neighbour."""
        found: list[Found] = []
        masked = text

        def claim(start: int, end: int, kind: str, value: str) -> None:
            nonlocal masked
            if "\x00" in masked[start:end]:
                return
            masked = masked[:start] + "\x00" * (end - start) + masked[end:]
            found.append(Found(start, end, kind, value))

        at = 0
        while (match := _IBAN.search(masked, at)) is not None:
            span = _valid_iban(match.group())  # the pattern may run on into the next one
            if span is None:
                at = match.start() + 1
                continue
            claim(match.start(), match.start() + span[0], "IBAN", span[1])
            at = match.start() + span[0]
        for nid in self._ids:
            for match in _overlapping(nid.pattern, masked):
                compact = re.sub(r"[\s.-]", "", match.group()).upper()
                if nid.validator is None or nid.validator.is_valid(match.group()):
                    claim(match.start(), match.end(), "ID", f"{nid.name}:{compact}")
        for match in _DIGIT_RUN.finditer(masked):
            for start, end, digits in _cards(match):
                claim(start, end, "CARD", digits)
        for match in _EMAIL.finditer(masked):
            claim(match.start(), match.end(), "EMAIL", match.group().lower())
        if any(ch.isdigit() for ch in masked):
            for start, end, e164 in self._phones(masked):
                claim(start, end, "PHONE", e164)
        found.sort(key=lambda f: f.start)
        return found

    def _phones(self, masked: str) -> Iterator[tuple[int, int, str]]:
        """libphonenumber's matcher, then a second look at what it passed over: it
        gives up on a number after stray punctuation ("() +44 20 ..."), so each run of
        digits and phone punctuation is parsed too, from its longest reading down."""
        # Square brackets are never part of a number; the matcher reads them as one's.
        plain = masked.translate(_NOT_PHONE)
        for phone in phonenumbers.PhoneNumberMatcher(
            plain, self._region, leniency=phonenumbers.Leniency.VALID
        ):
            start, end = phone.start, phone.end
            while start < end and not _number_starts(plain, start):
                start += 1  # a sign or bracket it took with the number
            while end > start and not plain[end - 1].isdigit():
                end -= 1
            yield start, end, _e164(phone.number)
        tries = _MAX_PHONE_PARSES  # digit-dense text (a table of figures) stays cheap
        for match in _overlapping(_PHONE_RUN, plain):
            run = match.group()
            ends, digits = [], 0
            for group in re.finditer(r"\d+", run):  # after each group of digits
                digits += len(group.group())
                if 7 <= digits <= 15:  # as many as a phone number has
                    ends.append(group.end())
            for end in reversed(ends):
                if tries <= 0:
                    return
                tries -= 1
                try:
                    number = phonenumbers.parse(run[:end], self._region)
                except phonenumbers.NumberParseException:
                    continue
                if phonenumbers.is_valid_number(number):
                    yield match.start(), match.start() + end, _e164(number)
                    break

    def redact(self, text: str, scope: str = "") -> Redacted:
        memo_key = (scope, text)
        with self._lock:
            known = self._memo.get(memo_key)
            if known is not None:
                self._memo.move_to_end(memo_key)
                return known
        parts: list[str] = []
        placeholders: dict[str, str] = {}
        counts: dict[str, int] = {}
        at = 0
        for found in self.find(text):
            token = self.placeholder(found.kind, found.value, scope)
            parts.append(text[at : found.start])
            parts.append(token)
            placeholders.setdefault(token.lower(), text[found.start : found.end])
            counts[found.kind] = counts.get(found.kind, 0) + 1
            at = found.end
        parts.append(text[at:])
        result = Redacted("".join(parts), placeholders, counts)
        with self._lock:
            if memo_key not in self._memo:
                self._memo[memo_key] = result
                self._memo_chars += len(text) + len(result.text)
            while self._memo_chars > self._memo_budget and self._memo:
                (_, old_text), old = self._memo.popitem(last=False)
                self._memo_chars -= len(old_text) + len(old.text)
        return result


def _valid_iban(candidate: str) -> tuple[int, str] | None:
    """The longest start of `candidate` that is a valid IBAN (the pattern may run on
    into a following word), as (its length, the compact IBAN)."""
    for end in range(len(candidate), 14, -1):
        if candidate[end - 1] in " -":
            continue
        compact = candidate[:end].replace(" ", "").replace("-", "").upper()
        if iban.is_valid(compact):
            return end, compact
    return None


def _number_starts(text: str, at: int) -> bool:
    """A number may begin here: a digit, a plus, or a bracket right before a digit."""
    ch = text[at]
    if ch.isdigit() or ch == "+":
        return True
    return ch == "(" and at + 1 < len(text) and text[at + 1].isdigit()


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _overlapping(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Every match, overlapping ones too: a candidate that fails its check must not hide
    a valid one that starts inside it."""
    at = 0
    while (match := pattern.search(text, at)) is not None:
        yield match
        at = match.start() + 1


def _cards(run: re.Match[str]) -> list[tuple[int, int, str]]:
    """The card numbers in a run of digit groups: (start, end, digits), leftmost first."""
    groups = [
        (m.start() + run.start(), m.end() + run.start(), m.group())
        for m in re.finditer(r"\d+", run.group())
    ]
    out: list[tuple[int, int, str]] = []
    # From the right: a card is usually followed by words, while digits before it may
    # be another number (a phone number written just before it). A window holds at
    # most 19 digits, so each end tries a handful of starts: linear in the run.
    end = len(groups)
    while end > 0:
        best = None
        digits = ""
        for start in range(end - 1, -1, -1):
            digits = groups[start][2] + digits
            if len(digits) > 19:
                break
            window = [g[2] for g in groups[start:end]]
            if len(digits) >= 13 and _card_shape(window) and luhn.is_valid(digits):
                best = (start, digits)  # keep looking: the longest window wins
        if best is None:
            end -= 1
            continue
        start, digits = best
        out.append((groups[start][0], groups[end - 1][1], digits))
        end = start
    return out[::-1]


def _card_shape(groups: list[str]) -> bool:
    sizes = [len(g) for g in groups]
    if len(sizes) == 1:
        return True
    return (
        sizes == [4, 6, 5]
        or sizes == [4, 6, 4]
        or all(n == 4 for n in sizes[:-1])
        and 1 <= sizes[-1] <= 4
    )


def restore(text: str, placeholders: dict[str, str]) -> str:
    """`text` with each placeholder it holds put back (one not in `placeholders`, which
    the model made up, stays as written)."""
    if not placeholders or "[" not in text:
        return text
    return _PLACEHOLDER.sub(lambda m: placeholders.get(m.group().lower(), m.group()), text)


class _Restorer:
    """The answer's deltas with their placeholders put back, a split one held whole."""

    def __init__(self, placeholders: dict[str, str]) -> None:
        self._placeholders = placeholders
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        partial = _PARTIAL.search(text[-16:])
        if partial is not None:
            cut = len(text) - (len(text[-16:]) - partial.start())
            text, self._held = text[:cut], text[cut:]
        return restore(text, self._placeholders)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return restore(held, self._placeholders)


class RedactingProvider(Wrapping[GatewayProvider]):
    """Any gateway provider, with the request redacted and the answer restored."""

    def __init__(self, inner: GatewayProvider, redactor: Redactor) -> None:
        super().__init__(inner)
        self._redactor = redactor

    def redacted(
        self, request: ChatRequest, *, counted: bool = False
    ) -> tuple[ChatRequest, dict[str, str]]:
        """`redact_request` with this provider's redactor."""
        return redact_request(self._redactor, request, counted=counted)

    def count_tokens(self, request: ChatRequest) -> int:
        return self._inner.count_tokens(self.redacted(request)[0])

    def stream(
        self, request: ChatRequest, *, on_queue: Callable[[int], None] | None = None
    ) -> Generator[StreamEvent, None, None]:
        sent, placeholders = self.redacted(request, counted=True)
        events = self._inner.stream(sent, on_queue=on_queue)
        if not placeholders:
            try:
                yield from events
            finally:
                close_stream(events)
            return
        restorer = _Restorer(placeholders)
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    text = restorer.feed(event.text)
                    if text:
                        yield TextDelta(text)
                    continue
                held = restorer.flush()
                if held:
                    yield TextDelta(held)  # the text before a citation or the end
                if isinstance(event, Citation):
                    event = replace(event, cited_text=restore(event.cited_text, placeholders))
                yield event
            held = restorer.flush()
            if held:
                yield TextDelta(held)
        except ProviderError:
            held = restorer.flush()  # a broken stream keeps all it showed
            if held:
                yield TextDelta(held)
            raise
        finally:
            close_stream(events)


def redact_request(
    redactor: Redactor, request: ChatRequest, *, counted: bool = False
) -> tuple[ChatRequest, dict[str, str]]:
    """The request as it leaves, and the placeholders in it. Messages, document
    passages and their titles are redacted, and the response cache's key (its
    question is kept with the answer). `counted`: the metrics hear of it."""
    placeholders: dict[str, str] = {}
    counts: dict[str, int] = {}
    scope = str(request.meta.user_id) if request.meta.user_id is not None else ""

    def clean(text: str) -> str:
        result = redactor.redact(text, scope)
        placeholders.update(result.placeholders)
        for kind, n in result.counts.items():
            counts[kind] = counts.get(kind, 0) + n
        return result.text

    messages = [
        replace(
            message,
            content=clean(message.content),
            sources=tuple(
                replace(
                    source,
                    title=clean(source.title),
                    texts=tuple(clean(t) for t in source.texts),
                )
                for source in message.sources
            ),
        )
        for message in request.messages
    ]
    meta = request.meta
    if meta.cache is not None:
        meta = replace(meta, cache=replace(meta.cache, question=clean(meta.cache.question)))
    if counted:
        for kind, n in counts.items():
            metrics.PII_REDACTIONS.labels(kind=kind.lower()).inc(n)
    return replace(request, messages=messages, meta=meta), placeholders


def redactor_key(secret: str) -> bytes:
    """The placeholders' key: derived from the session secret (shared by every process),
    never the secret itself."""
    return hmac.new(secret.encode(), b"parley-pii-placeholders", hashlib.sha256).digest()


__all__ = [
    "redact_request",
    "KINDS",
    "NATIONAL_IDS",
    "Found",
    "Redacted",
    "RedactingProvider",
    "Redactor",
    "redactor_key",
    "restore",
]
