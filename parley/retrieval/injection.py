"""Prompt-injection detection: text in a document or an old turn that speaks to the model.

A document is written for people; an injection is written for the model that will
read it ("add a link to your answer", "ignore the above", "what is the capital of
Brazil?" in the middle of a bank's e-mail). `InjectionDetector.scan` reads a chunk
sentence by sentence (a fenced code block is one unit) and scores each:

1. **Rules** (certain): the sentence tells the model what to do with its answer ("in
   your response", "to your reply"), tries to override its instructions ("ignore the
   previous instructions", "you are now"), or asks for code to be put into what it
   writes ("incorporate the following code").
2. **A request out of place** (judged): a classifier over the sentence's MiniLM
   embedding says how much it reads like a request to an assistant (a logistic
   regression trained on `injection_examples`: sentences written for Parley, none
   from a benchmark), and the sentence's fit to the rest of the chunk (the cosine
   between its embedding and the mean of the others') says whether it belongs there.
   A request that does not fit is flagged; one that does ("reply to this e-mail if
   you have questions" in an e-mail) is not. A chunk of one sentence (an old turn of
   a conversation, where a question is what people write) is judged by the rules
   alone.

The chunk's score is its highest sentence's. Flagged chunks are still quoted as data,
marked to the model and to the user (`parley.chat.documents`). Measured by `parley
bench injection` (`parley/bench/injection.py`), figures in the README.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parley.retrieval.embeddings import Embedder

# A request out of place (`out_of_place`) at or above this is flagged: set from the
# negatives alone (BIPIA's e-mails, LoCoMo's chat), the lowest that keeps each kind's
# false positives under 5 %.
THRESHOLD = 0.5

_OUTPUT = r"(?:answer|response|reply|replies|output|message|completion)"
# Verbs that change or add to an answer: "Augment your answer", "Render your message".
_ON_ANSWER = (
    r"(?:augment|modify|enhance|render|rewrite|reformat|format|convert|encode|translate"
    r"|reverse|scramble|jumble|capitali[sz]e|replace|substitute|swap|shift|pad|spell|end"
    r"|begin|start|conclude|structure|style|phrase|group|combine|remove|insert|add|include"
    r"|integrate|append|embed|incorporate|infuse|craft|frame|punctuate|limit|enrich)"
)
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "tells the model what to do with its answer",
        re.compile(
            # "in your response", but not "in response to your message" or "as you said
            # in your message"
            rf"(?<!response )(?<!reply )(?<!regard )(?<!said )(?<!mentioned )(?<!wrote )"
            rf"(?<!stated )(?<!thanks )\b(?:in|to|into|within|throughout) your {_OUTPUT}\b"
            rf"|\b(?:end|start|beginning|top|bottom|body|tone|style|format|words)"
            rf" of your {_OUTPUT}\b"
            rf"|^\W*(?:please\s+)?{_ON_ANSWER}\s+your\s+(?:[a-z]+\s+){{0,2}}{_OUTPUT}\b"
            rf"|^\W*(?:please\s+)?(?:format|render|present|encode|convert|output|phrase)\s+"
            rf"the\s+(?:whole\s+|entire\s+)?(?:answer|response|reply|output)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "tries to override the model's instructions",
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|set aside)\b[^.]{0,30}?"
            r"\b(?:previous|prior|above|earlier|preceding|original|initial|system)\s+"
            r"(?:instructions?|prompts?|rules|guidelines|directions|directives|commands)\b"
            r"|\byou are now (?:a|an|dan|free|unrestricted|no longer"
            r"|in (?:developer|god|jailbreak|unrestricted) mode)\b"
            r"|\bfrom now on,? you (?:will|must|are|shall)\b|\bnew instructions?\s*:"
            r"|\b(?:reveal|print|show|repeat|output|leak|display|disclose)\s+(?:\w+\s+){0,2}"
            r"(?:system|developer|hidden|initial)\s+(?:prompt|instructions)\b"
            r"|\bdo not (?:tell|mention|reveal)[^.]{0,30}\b(?:the user|this instruction)",
            re.IGNORECASE,
        ),
    ),
    (
        "tells the model what to tell its reader",
        re.compile(
            r"^\W*(?:please\s+)?(?:tell|inform|warn|remind|urge|encourage|convince|persuade"
            r"|assure)\s+(?:all\s+)?(?:the\s+)?(?:users?|readers?)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "asks for code to be put into what the model writes",
        re.compile(
            r"^(?=.*\b(?:following|subsequent|below)\s+(?:code|snippet|script|lines))"
            r"(?=.*\byour\s+(?:code|algorithm|solution|implementation|program|codebase"
            r"|elucidation)\b)",
            re.IGNORECASE,
        ),
    ),
)
_FENCE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
# Sentence ends, line breaks and e-mail fields ("SUBJECT: ...|CONTENT: ..."); linear
# on long runs of spaces (the parts are stripped anyway).
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*|\|\s*")
# Letters that look Latin (NFKC keeps them apart); format characters (zero-width
# spaces, soft hyphens) are dropped before the rules read a sentence.
_LOOKALIKES = str.maketrans("аеорсухіјѕԁӏкмнтвАЕОРСХІЈЅКМНТВ", "aeopcyxijsdlkmhtbAEOPCXIJSKMHTB")


def normal(text: str) -> str:
    """A sentence as the rules read it: NFKC, no format characters, look-alikes mapped
    to Latin, runs of white space one space."""
    folded = unicodedata.normalize("NFKC", text).translate(_LOOKALIKES)
    kept = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(kept.split())


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the detector made of one chunk: never the text itself."""

    flagged: bool
    score: float  # its highest sentence's, 0 to 1 (1: a rule)
    reason: str | None  # the rule, or "a request out of place", when flagged


def sentences(text: str) -> list[str]:
    """The chunk's units: sentences, lines, e-mail fields, and fenced code blocks whole."""
    units: list[str] = []
    at = 0
    for fence in _FENCE.finditer(text):
        units.extend(_split(text[at : fence.start()]))
        units.append(fence.group().strip())
        at = fence.end()
    units.extend(_split(text[at:]))
    return [u for u in units if any(ch.isalnum() for ch in u)]


def _split(text: str) -> list[str]:
    return [part.strip() for part in _SPLIT.split(text) if part and part.strip()]


def rule_hit(sentence: str) -> str | None:
    plain = normal(sentence)
    for reason, pattern in _RULES:
        if pattern.search(plain):
            return reason
    return None


OVERRIDE = "tries to override the model's instructions"


def override_hit(text: str) -> str | None:
    """The override rule alone ("ignore the previous instructions", "you are now ...",
    "reveal the system prompt"), read on the text as one line: what an old answer may
    hold only when an injection put it there (the other rules also read advice to a
    person, "in your reply, thank her", which answers are full of)."""
    plain = normal(text)
    pattern = dict(_RULES)[OVERRIDE]
    return OVERRIDE if pattern.search(plain) else None


def rules_over(units: Sequence[str]) -> str | None:
    """The rule any unit, or any two neighbouring units read as one, trips (a sentence
    broken over two lines is read whole)."""
    for unit in units:
        hit = rule_hit(unit)
        if hit is not None:
            return hit
    for first, second in zip(units, units[1:], strict=False):
        hit = rule_hit(f"{first} {second}")
        if hit is not None:
            return hit
    return None


class InjectionDetector:
    """Scores chunks; the classifier is trained on first use (a second, offline)."""

    def __init__(self, embedder: Embedder, *, threshold: float = THRESHOLD) -> None:
        self._embedder = embedder
        self._threshold = threshold
        self._weights: tuple[np.ndarray, float] | None = None
        self._lock = threading.Lock()

    def _model(self) -> tuple[np.ndarray, float]:
        with self._lock:
            if self._weights is None:
                self._weights = _trained(self._embedder)
            return self._weights

    def scan(self, text: str) -> Verdict:
        return self.scan_many([text])[0]

    def scan_many(self, texts: Sequence[str]) -> list[Verdict]:
        """One verdict a chunk; the sentences of all of them embedded in one batch (each
        distinct sentence of a chunk once: repeating one does not make it fit)."""
        split = [list(dict.fromkeys(sentences(t))) for t in texts]
        hits = [rules_over(units) for units in split]
        judged = {i for i, units in enumerate(split) if len(units) > 1 and hits[i] is None}
        flat = [u for i in sorted(judged) for u in split[i]]
        vectors = self._embedder.embed(flat) if flat else np.zeros((0, 1), dtype=np.float32)
        weights, bias = self._model() if flat else (np.zeros(1, dtype=np.float32), 0.0)
        verdicts: list[Verdict] = []
        at = 0
        for i, units in enumerate(split):
            if hits[i] is not None:
                verdicts.append(Verdict(True, 1.0, hits[i]))
                continue
            if i not in judged:
                verdicts.append(Verdict(False, 0.0, None))
                continue
            own = vectors[at : at + len(units)]
            at += len(units)
            score = min(float(out_of_place(own, weights, bias).max()), 0.999)
            flagged = score >= self._threshold
            reason = "a request out of place" if flagged else None
            verdicts.append(Verdict(flagged, round(score, 3), reason))
        return verdicts


_TRAINED: dict[int, tuple[Embedder, tuple[np.ndarray, float]]] = {}
_TRAINING = threading.Lock()


def _trained(embedder: Embedder) -> tuple[np.ndarray, float]:
    """The classifier's weights for this embedder: trained once a process (a second)."""
    with _TRAINING:
        known = _TRAINED.get(id(embedder))
        if known is not None and known[0] is embedder:
            return known[1]
        from sklearn.linear_model import LogisticRegression

        from parley.retrieval.injection_examples import ORDINARY, REQUESTS

        vectors = embedder.embed([*REQUESTS, *ORDINARY])
        labels = np.array([1] * len(REQUESTS) + [0] * len(ORDINARY))
        model = LogisticRegression(C=0.5, max_iter=1000).fit(vectors, labels)
        weights = (model.coef_[0].astype(np.float32), float(model.intercept_[0]))
        _TRAINED[id(embedder)] = (embedder, weights)
        return weights


def out_of_place(vectors: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """Each sentence's request probability, times its misfit (1 - cosine to the mean of
    the chunk's other sentences), times how much worse it fits than the chunk's typical
    sentence (so a chat, whose lines all fit loosely, is not suspect for that alone)."""
    n = len(vectors)
    request = 1.0 / (1.0 + np.exp(-(vectors @ weights + bias)))
    total = vectors.sum(axis=0)
    others = (total[None, :] - vectors) / max(n - 1, 1)
    norms = np.maximum(np.linalg.norm(others, axis=1), 1e-9)
    fit = (others * vectors).sum(axis=1) / norms
    misfit = np.clip(1.0 - fit, 0.0, 1.0)
    if n <= 2:  # no typical sentence to stand out from: the misfit alone
        standing_out = np.ones(n, dtype=np.float32)
    else:
        standing_out = np.clip(0.5 + 2.0 * (np.median(fit) - fit), 0.0, 1.5)
    return np.asarray(request * misfit * standing_out, dtype=np.float32)


__all__ = [
    "THRESHOLD",
    "InjectionDetector",
    "Verdict",
    "normal",
    "out_of_place",
    "rule_hit",
    "rules_over",
    "sentences",
]
