"""JSON columns that hold typed records: validated when written and when read, so no
raw dict of stored JSON leaves the store."""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import JSON, Dialect
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

T = TypeVar("T")


class TypedJSON(TypeDecorator[T], Generic[T]):
    """A JSON column of `python_type` (a pydantic model, or a list of them). A stored
    value that no longer validates (written by hand) reads as None, logged; what Parley
    writes always validates, since it is validated on the way in."""

    impl = JSON
    cache_ok = True

    def __init__(self, model: type[T] | Any) -> None:
        super().__init__()
        # Named as the parameter: SQLAlchemy's statement cache keys the type by it, so two
        # columns of different records never share a compiled reader.
        self.model = model
        self._adapter: TypeAdapter[T] = TypeAdapter(model)

    @property
    def python_type(self) -> type[Any]:
        return object

    def process_bind_param(self, value: T | None, dialect: Dialect) -> Any:  # noqa: ARG002
        if value is None:
            return None
        return self._adapter.dump_python(self._adapter.validate_python(value), mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> T | None:  # noqa: ARG002
        if value is None:
            return None
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            log.warning("A stored %s does not validate; read as none: %s", self.model, exc)
            return None

    def __repr__(self) -> str:
        return f"TypedJSON({self.model!r})"


__all__ = ["TypedJSON"]
