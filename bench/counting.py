"""Count the SQL statements a process sends and the rows they write.

Every statement PyMySQL sends goes through ``Connection.query`` (``executemany``
of an INSERT becomes a few multi-row statements, of an UPDATE one statement per
row), so wrapping it counts what MariaDB really receives, for the collector
(through SQLAlchemy) and the legacy baseline (plain PyMySQL) alike. Rows
written are the affected rows MariaDB reports for UPDATE/INSERT/DELETE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pymysql.connections

_TARGET = re.compile(
    rb"\s*(?:UPDATE|INSERT\s+(?:IGNORE\s+)?INTO|DELETE\s+FROM|REPLACE\s+INTO)\s+`?(\w+)`?", re.I
)


@dataclass
class SqlCounter:
    statements: int = 0
    writes: int = 0
    #: affected rows by the table written (the first table named after the verb)
    rows: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"statements": self.statements, "write_statements": self.writes, "rows": self.rows}


def install() -> SqlCounter:
    """Wrap PyMySQL's ``Connection.query`` in this process; returns the live counter."""
    counter = SqlCounter()
    original = pymysql.connections.Connection.query

    def query(self: Any, sql: Any, unbuffered: bool = False) -> Any:
        result = original(self, sql, unbuffered)
        counter.statements += 1
        head = (sql.encode() if isinstance(sql, str) else bytes(sql))[:200]
        match = _TARGET.match(head)
        if match is not None:
            table = match.group(1).decode("utf-8", "replace")
            counter.writes += 1
            counter.rows[table] = counter.rows.get(table, 0) + max(0, int(self.affected_rows()))
        return result

    pymysql.connections.Connection.query = query  # type: ignore[method-assign]
    return counter
