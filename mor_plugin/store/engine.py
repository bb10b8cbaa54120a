"""Connections: the engine, one-line errors, transactions with a retry, named locks.

``is_mysql`` is where MySQL/MariaDB and SQLite (the demo's database) part ways;
every other module of the store asks it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: MySQL/MariaDB errors worth one more try: deadlock, lock wait timeout.
RETRYABLE_MYSQL_ERRORS = (1213, 1205)
#: Client errors of a connection that broke: gone away, lost during a query, cannot read.
_LOST_CONNECTION = frozenset({2006, 2013, 2055})


class StoreError(Exception):
    """A database failure; ``str()`` is one line that says what to fix."""


def make_engine(url: str, *, timeout: float = 30.0, echo: bool = False) -> Engine:
    """An engine with explicit timeouts: a dead database fails a run, never hangs it."""
    connect_args: dict[str, Any] = {}
    if url.startswith("mysql"):
        connect_args = {
            "connect_timeout": 5,
            "read_timeout": int(timeout),
            "write_timeout": int(timeout),
        }
    elif url.startswith("sqlite"):
        connect_args = {"timeout": timeout}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, echo=echo)


def is_mysql(conn: Connection) -> bool:
    """MySQL or MariaDB (MOR's database); otherwise SQLite, the demo's."""
    return conn.dialect.name in ("mysql", "mariadb")


def describe_db_error(err: BaseException) -> str:
    """One line for a database failure, without the SQL or the parameters."""
    orig = getattr(err, "orig", None) or err
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    code = args[0] if len(args) >= 2 and isinstance(args[0], int) else None
    if code is None:
        text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    elif code in _LOST_CONNECTION:
        text = f"connection to the database lost{_during(err)} (MySQL error {code})"
    elif code <= 0:
        # PyMySQL's error 0: the socket was already closed, or a reply cut short
        text = f"connection to the database lost{_during(err)}: {args[1] or 'no reply'}"
    else:
        text = f"MySQL error {code}: {args[1]}"
    return " ".join(text.split())


def _during(err: BaseException) -> str:
    """`` during INSERT INTO x`` from the failed statement's first words (never its values)."""
    words = str(getattr(err, "statement", None) or "").split()[:3]
    if not words:
        return ""
    if words[0].upper() in ("INSERT", "DELETE") and len(words) == 3:
        return " during " + " ".join(words)
    return f" during {words[0].upper()}" if words[0].isalpha() else ""


def write_lock_name(server_id: int) -> str:
    """The MySQL named lock that the poll and the event listener of a server share."""
    return f"mor_regstatus_write_{server_id}"


@contextmanager
def named_lock(conn: Connection, name: str, timeout: float) -> Iterator[bool]:
    """MySQL's ``GET_LOCK(name)`` for the duration of the block; yields False when another
    session kept it for ``timeout`` seconds (the caller decides whether to go on).

    SQLite has no named locks and needs none (one writer at a time): nothing is taken,
    and it yields True.
    """
    if not is_mysql(conn):
        yield True
        return
    got = conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (name, max(0, int(timeout)))).scalar()
    conn.commit()  # end the implicit transaction: the work's snapshot starts after the lock
    if got != 1:
        yield False
        return
    try:
        yield True
    finally:
        try:
            conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (name,))
            conn.commit()
        except SQLAlchemyError as err:  # the session is gone, and its lock with it
            log.debug("RELEASE_LOCK failed: %s", describe_db_error(err))


def in_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    lock: Optional[str] = None,
    lock_timeout: float = 30.0,
) -> T:
    """Run ``work`` in one transaction; a deadlock or lock-wait timeout gets one more try.

    With ``lock`` (MySQL/MariaDB) the transaction runs under that named lock
    (``GET_LOCK``), taken before the transaction's first read: the poll and the
    event listener of one server then never interleave, and each reads what the
    other committed last. A lock not obtained within ``lock_timeout`` is logged
    and the work runs anyway (the observation-time rule still guards each row).
    """
    for attempt in (1, 2):
        try:
            with engine.connect() as conn, _lock_if(conn, lock, lock_timeout), conn.begin():
                return work(conn)
        except DBAPIError as err:
            code = getattr(getattr(err, "orig", None), "args", (None,))[0]
            if attempt == 1 and code in RETRYABLE_MYSQL_ERRORS:
                log.warning("transaction retried after %s", describe_db_error(err))
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _lock_if(conn: Connection, name: Optional[str], timeout: float) -> Iterator[None]:
    """``named_lock`` when a name is given; a lock not obtained is logged, not fatal."""
    if name is None:
        yield
        return
    with named_lock(conn, name, timeout) as held:
        if not held:
            log.warning("named lock %s not obtained within %g s; writing without it", name, timeout)
        yield
