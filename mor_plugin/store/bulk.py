"""Many rows at once: the one bulk writer and the one chunked ``IN`` reader.

A large server has 100k devices, so every statement that names devices is sent in
chunks (each far below MySQL's ``max_allowed_packet``), and rows are written as
multi-row statements rather than a round trip each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy import ColumnElement, Table, bindparam, literal_column
from sqlalchemy.engine import Connection, CursorResult, Row
from sqlalchemy.sql import Delete, Select, Update

from .engine import is_mysql

T = TypeVar("T")

#: Values per ``IN (...)`` list: keeps every packet far below MySQL's max_allowed_packet.
CHUNK = 2000
#: Rows per multi-row INSERT, and per batch of a streamed read.
BATCH = 5000

#: A statement with its values already in it: the driver must not look for ``%s``.
_VERBATIM: dict[str, Any] = {"no_parameters": True}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- reading ----------------------------------------------------------------------


def streamed(conn: Connection, query: Any) -> Any:
    """Rows fetched in batches from a server-side cursor, not all held at once."""
    return conn.execution_options(stream_results=True, max_row_buffer=BATCH).execute(query)


def select_in(
    conn: Connection, query: Select[Any], column: ColumnElement[Any], values: Iterable[Any]
) -> Iterator[Row[Any]]:
    """The rows of ``query`` whose ``column`` is one of ``values``, a chunk of them per
    statement (each distinct value asked once, in sorted order)."""
    for result in _each_chunk(conn, query, column, values):
        yield from result


def execute_in(
    conn: Connection,
    statement: Delete | Update,
    column: ColumnElement[Any],
    values: Iterable[Any],
    params: Optional[Mapping[str, Any]] = None,
) -> int:
    """Run a DELETE or UPDATE for the rows whose ``column`` is one of ``values``, a chunk
    of them per statement; returns the rows it matched."""
    return sum(result.rowcount for result in _each_chunk(conn, statement, column, values, params))


def _each_chunk(
    conn: Connection,
    statement: Any,
    column: ColumnElement[Any],
    values: Iterable[Any],
    params: Optional[Mapping[str, Any]] = None,
) -> Iterator[CursorResult[Any]]:
    # one statement with an expanding parameter: SQLAlchemy compiles it once
    chunked = statement.where(column.in_(bindparam("chunk", expanding=True)))
    for chunk in chunks(sorted(set(values)), CHUNK):
        yield conn.execute(chunked, {**(params or {}), "chunk": list(chunk)})


class Shared:
    """One object per distinct value: 100k rows hold a few hundred status strings and
    the timestamps of a few runs, so sharing them saves tens of MB on large servers."""

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}

    def __call__(self, value: T) -> T:
        if value is None:
            return value
        return self._seen.setdefault(value, value)  # type: ignore[no-any-return]


# --- writing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Merge:
    """How an upsert combines a stored value with the new row's (``{new}``), in each
    dialect's SQL; the default is to take the new value."""

    mysql: str
    sqlite: str


def insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (values in the order of ``columns``) into ``table``."""
    _write(conn, table, columns, rows, None)


def upsert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    merge: Optional[Mapping[str, Merge]] = None,
) -> None:
    """Insert ``rows``; a row whose primary key is already stored updates that row's other
    ``columns`` instead (to the new values, or as ``merge`` says)."""
    keys = [column.name for column in table.primary_key]
    merges = {name: (merge or {}).get(name) for name in columns if name not in keys}
    _write(conn, table, columns, rows, _OnConflict(keys, merges))


@dataclass(frozen=True)
class _OnConflict:
    """What an upsert does with a row whose primary key (``keys``) is stored: each of
    ``merges`` is updated, to the new value (None) or as its ``Merge`` says."""

    keys: list[str]
    merges: dict[str, Optional[Merge]]


def _write(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    on_conflict: Optional[_OnConflict],
) -> None:
    if not rows:
        return
    if is_mysql(conn):
        head, tail = _mysql_statement(table, columns, on_conflict)
        _insert_literal(conn, head, rows, tail)
        return
    statement = _sqlite_statement(table, on_conflict)
    for chunk in chunks(rows, BATCH):
        conn.execute(statement, [dict(zip(columns, row)) for row in chunk])


def _mysql_statement(
    table: Table, columns: Sequence[str], on_conflict: Optional[_OnConflict]
) -> tuple[str, str]:
    """``INSERT INTO t (columns) VALUES`` and ``ON DUPLICATE KEY UPDATE ...`` (or nothing)."""
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES"
    if on_conflict is None:
        return head, ""
    updates = []
    for name, merge in on_conflict.merges.items():
        new = f"VALUES({name})"
        updates.append(f"{name} = {new if merge is None else merge.mysql.format(new=new)}")
    return head, "ON DUPLICATE KEY UPDATE " + ", ".join(updates)


def _sqlite_statement(table: Table, on_conflict: Optional[_OnConflict]) -> Any:
    """SQLAlchemy's INSERT [ON CONFLICT DO UPDATE] (its type conversions for SQLite)."""
    if on_conflict is None:
        return table.insert()
    # the SQLite dialect only here: a cron run on MySQL never loads it
    from sqlalchemy.dialects import sqlite

    lite = sqlite.insert(table)
    return lite.on_conflict_do_update(
        index_elements=on_conflict.keys,
        set_={
            name: lite.excluded[name]
            if merge is None
            else literal_column(merge.sqlite.format(new=f"excluded.{name}"))
            for name, merge in on_conflict.merges.items()
        },
    )


def _insert_literal(conn: Connection, head: str, rows: Sequence[Sequence[Any]], tail: str) -> None:
    """MySQL: ``head (...),(...) tail``, ``BATCH`` rows a statement.

    Big runs write 100k rows of ints, short strings and times: turning each value
    into SQL here (strings through the driver's own quoting, each distinct time
    once) costs a third of what PyMySQL's generic per-value quoting does.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    literal = _sql_literal(dbapi.escape)
    for chunk in chunks(rows, BATCH):
        values = ",".join("(" + ",".join(map(literal, row)) + ")" for row in chunk)
        # through SQLAlchemy, statement text as it is: its errors are handled (and a lost
        # connection invalidated) as every other statement's are
        conn.exec_driver_sql(f"{head} {values} {tail}", execution_options=_VERBATIM)


def _sql_literal(quote: Callable[[str], str]) -> Callable[[Any], str]:
    """A value as a MySQL literal: NULL, numbers, strings quoted by the driver, times."""
    times: dict[datetime, str] = {}

    def literal(value: Any) -> str:
        kind = type(value)
        if value is None:
            return "NULL"
        if kind is int:
            return str(value)
        if kind is str:
            return quote(value)  # PyMySQL's own quoting, aware of NO_BACKSLASH_ESCAPES
        if kind is bool:
            return "1" if value else "0"
        if kind is datetime:
            text = times.get(value)
            if text is None:
                text = times[value] = "'" + value.isoformat(sep=" ") + "'"
            return text
        raise TypeError(f"no SQL literal for a {kind.__name__}")

    return literal
