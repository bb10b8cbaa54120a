"""A value class kept as a table's rows: its fields name the columns, once.

``DeviceState``, ``Transition``, ``Notified`` and the device records have one field
per column, named alike, so the field list is the column list of every query and
write that moves them; a field without its column fails at import, not in a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

from sqlalchemy import Column, Table, select
from sqlalchemy.sql import Select

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


class Stored(Generic[R]):
    """The rows of ``table`` as ``kind`` values: ``names`` are the fields read and written
    (default: all; otherwise the leading ones, the others keep their defaults)."""

    def __init__(self, table: Table, kind: type[R], names: Optional[Sequence[str]] = None) -> None:
        every = tuple(field.name for field in fields(kind))
        self.names: tuple[str, ...] = every if names is None else tuple(names)
        if len(self.names) < 2 or self.names != every[: len(self.names)]:
            raise ValueError(f"{kind.__name__}: {self.names} must be two or more first fields")
        self.table = table
        self.columns: tuple[Column[Any], ...] = tuple(table.c[name] for name in self.names)
        self._make: Callable[..., R] = kind
        #: the value's fields as a row, in the order of ``names``
        self.values: Callable[[R], tuple[Any, ...]] = attrgetter(*self.names)

    def select(self) -> Select[Any]:
        """SELECT of the columns, in the order ``reader`` takes them."""
        return select(*self.columns)

    def reader(self, **convert: Callable[[Any], Any]) -> Callable[[Sequence[Any]], R]:
        """A function from a row of ``select()`` to a value; ``convert`` maps some fields'
        values first (e.g. a ``Shared`` for values that repeat across many rows)."""
        make = self._make
        steps = [(i, convert.pop(name)) for i, name in enumerate(self.names) if name in convert]
        if convert:
            raise ValueError(f"no such fields: {', '.join(convert)}")

        def read(row: Sequence[Any]) -> R:
            values = list(row)
            for i, step in steps:
                values[i] = step(values[i])
            return make(*values)

        return read
