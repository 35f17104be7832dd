"""Each strategy's own options: a pydantic model, filled from the environment and per conversation.

A strategy declares them as a class attribute `Options` (a pydantic model whose fields
all have defaults); one without takes none. Values come from three places, the later
overriding the earlier:

    the model's defaults
    the environment          PARLEY_MEMORY__<STRATEGY>__<OPTION>=value   (operator)
    the conversation         `conversations.memory_options`, set by an admin

Every value is checked by the strategy's own model wherever it comes from: a bad one
in the environment is a `ConfigurationError` naming the variable, a bad one for a
conversation an `InvalidInput` sentence (and what was stored is kept as it was).
An option the model does not declare is refused, whatever the model's `extra` says:
a misspelt variable must not be ignored in silence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_jsonable_python

from parley.core.errors import ConfigurationError, InvalidInput

OptionsT = TypeVar("OptionsT", bound=BaseModel)

ENV_PREFIX = "PARLEY_MEMORY__"


class NoOptions(BaseModel):
    """The options of a strategy that declares none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UncheckedOptions(BaseModel):
    """Options not yet checked by a strategy's model (`fake_deps(turns=3)` before the
    strategy reads them with `MemoryDeps.options_as`)."""

    model_config = ConfigDict(extra="allow", frozen=True)


def options_model(factory: object) -> type[BaseModel]:
    """The model a strategy factory declares as `Options`, or `NoOptions`.

    Raises TypeError when `Options` is there but is not a pydantic model.
    """
    model = getattr(factory, "Options", None)  # optional by design: most strategies have none
    if model is None:
        return NoOptions
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{factory!r}.Options must be a pydantic model, not {model!r}")
    return model


def env_variable(strategy: str, option: str) -> str:
    """The environment variable that sets `option` of `strategy`."""
    return f"{ENV_PREFIX}{strategy.upper()}__{option.upper()}"


def _unknown(model: type[BaseModel], values: Mapping[str, object]) -> list[str]:
    return sorted(str(k) for k in values if k not in model.model_fields)


def _field_list(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields) or "none"


def from_environment(
    strategy: str, model: type[OptionsT], values: Mapping[str, object]
) -> OptionsT:
    """`values` read from `PARLEY_MEMORY__<STRATEGY>__*`, checked: a `ConfigurationError`
    naming the variable when one is unknown or invalid."""
    unknown = _unknown(model, values)
    if unknown:
        raise ConfigurationError(
            f"{env_variable(strategy, unknown[0])} is not an option of the memory strategy "
            f"{strategy!r} (its options: {_field_list(model)})."
        )
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        # Without the value given: a plug-in's option might be a secret.
        problems = "; ".join(
            f"{env_variable(strategy, str(e['loc'][0])) if e['loc'] else strategy} "
            f"is not valid: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigurationError(f"{problems}.") from None


def validated(
    strategy: str | None,
    model: type[OptionsT],
    base: Mapping[str, object],
    overrides: Mapping[str, object],
    *,
    stored: bool,
) -> OptionsT:
    """`overrides` (a conversation's, or a test's) over `base` (the environment's), checked
    by `model`: an `InvalidInput` sentence when they do not suit the strategy (None: one
    not named). `stored` says whether a conversation's were read back (the sentence then
    says they no longer suit: a plug-in changed its options)."""
    problem = _problem(model, {**base, **overrides}, overrides)
    if problem is None:
        return model.model_validate({**base, **overrides})
    if stored:
        raise InvalidInput(
            f"This conversation's options for the memory strategy {strategy!r} are no "
            f"longer valid ({problem})."
        )
    whose = f"the memory strategy {strategy!r}" if strategy else "this memory strategy"
    raise InvalidInput(f"These options do not suit {whose}: {problem}.")


def _problem(
    model: type[BaseModel], values: Mapping[str, object], overrides: Mapping[str, object]
) -> str | None:
    unknown = _unknown(model, overrides)
    if unknown:
        return f"it has no option {unknown[0]!r} (its options: {_field_list(model)})"
    try:
        model.model_validate(dict(values))
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
    return None


def as_json(options: BaseModel) -> dict[str, Any]:
    """The options as JSON values (what a conversation stores, what the CLI prints)."""
    return options.model_dump(mode="json")


def options_key(options: BaseModel) -> str:
    """A text that is equal exactly when two option values are."""
    return json.dumps(as_json(options), sort_keys=True)


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """One option as the lab and `parley memory strategies` show it."""

    name: str
    type: str
    default: object  # JSON value; None when the option has no default
    description: str | None


def describe_options(model: type[BaseModel]) -> tuple[OptionInfo, ...]:
    """The model's options with their types, defaults and descriptions."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type):
            type_name = annotation.__name__
        else:
            type_name = "object" if annotation is None else str(annotation).replace("typing.", "")
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        found.append(OptionInfo(name, type_name, to_jsonable_python(default), field.description))
    return tuple(found)


__all__ = [
    "ENV_PREFIX",
    "NoOptions",
    "OptionInfo",
    "UncheckedOptions",
    "as_json",
    "describe_options",
    "env_variable",
    "validated",
    "from_environment",
    "options_key",
    "options_model",
]
