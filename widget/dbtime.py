"""One bound on the database time of a request, whatever the database or the network does.

PyMySQL's timeouts are per socket operation: a server (or a proxy, or a
half-broken link) that sends one byte every few seconds never trips a read
timeout and holds a request for as long as it trickles, and a silent server
is given the read timeout, not the connect timeout. Here every request starts
a clock (``MOR_WIDGET_DB_TIMEOUT`` seconds, set by the app for each request)
and all of its database work shares it:

- every read and write on a connection's socket waits at most until the
  deadline, in the handshake, the pool's pre-ping and every statement alike
  (the socket is our own subclass, also under TLS); past it the socket fails,
  PyMySQL closes the connection and SQLAlchemy raises ``OperationalError``,
  which the app answers with 503;
- every statement takes the time left to the server (MariaDB 10.1.2+:
  ``SET STATEMENT max_statement_time=N FOR ...``; MySQL 5.7.8+: the
  ``MAX_EXECUTION_TIME`` hint), so a query stuck behind a lock or running long
  is stopped by the server itself and the connection stays usable.

Outside a request (no clock started) only the per-operation timeouts apply.
"""

from __future__ import annotations

import contextvars
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import pymysql  # type: ignore[import-untyped]
from pymysql.constants import CR  # type: ignore[import-untyped]

_DEADLINE: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar(
    "mor_widget_db_deadline", default=None
)
#: MariaDB has SET STATEMENT from 10.1.2, MySQL the MAX_EXECUTION_TIME hint from 5.7.8
MARIADB_SET_STATEMENT = (10, 1, 2)
MYSQL_EXECUTION_HINT = (5, 7, 8)


class DatabaseTimeUp(socket.timeout):
    """The request's database time is up (an ``OSError``, as PyMySQL expects of its socket)."""


def begin(seconds: float) -> contextvars.Token[Optional[float]]:
    """Start the clock of this request (this context): ``seconds`` of database time from now."""
    return _DEADLINE.set(time.monotonic() + seconds)


def end(token: contextvars.Token[Optional[float]]) -> None:
    _DEADLINE.reset(token)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """The database work inside the block shares ``seconds``."""
    token = begin(seconds)
    try:
        yield
    finally:
        end(token)


def time_left() -> Optional[float]:
    """Seconds left on this request's clock (zero or less: time is up); None without a clock."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


class DeadlineSocket(socket.socket):
    """A socket whose every wait ends at the request's deadline (and within its own timeout)."""

    _base_timeout: Optional[float] = None

    def settimeout(self, value: Optional[float]) -> None:
        self._base_timeout = value
        self._arm()

    def _arm(self) -> None:
        left = time_left()
        timeout = self._base_timeout
        if left is not None:
            if left <= 0:
                raise DatabaseTimeUp("the request's database time is up")
            timeout = left if timeout is None else min(timeout, left)
        super().settimeout(timeout)

    def recv(self, *args: Any) -> bytes:
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        self._arm()
        return super().recv_into(*args)

    def send(self, *args: Any) -> int:
        self._arm()
        return super().send(*args)

    def sendall(self, *args: Any) -> None:
        self._arm()
        super().sendall(*args)


class DeadlineSSLSocket(DeadlineSocket, ssl.SSLSocket):
    """The same once PyMySQL has wrapped the connection in TLS."""


def _open_socket(host: str, port: int, timeout: Optional[float]) -> DeadlineSocket:
    error: Optional[OSError] = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = DeadlineSocket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock
    raise error or OSError(f"no address for {host}")


def _open_unix_socket(path: str, timeout: Optional[float]) -> DeadlineSocket:
    sock = DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


# (PyMySQL has no types: its Connection is Any to mypy)
class DeadlineConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """A PyMySQL connection on a ``DeadlineSocket`` (or ``DeadlineSSLSocket`` under TLS)."""

    def __init__(self, *args: Any, defer_connect: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, defer_connect=True, **kwargs)
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            ctx.sslsocket_class = DeadlineSSLSocket
        if not defer_connect:
            self.connect()

    def connect(self, sock: Optional[socket.socket] = None) -> None:
        if sock is None:
            try:
                if self.unix_socket:
                    sock = _open_unix_socket(self.unix_socket, self.connect_timeout)
                    self.host_info = "Localhost via UNIX socket"
                    self._secure = True  # as PyMySQL's own connect() says of a unix socket
                else:
                    sock = _open_socket(self.host, self.port, self.connect_timeout)
                    self.host_info = f"socket {self.host}:{self.port}"
            except OSError as exc:
                raise pymysql.err.OperationalError(
                    CR.CR_CONN_HOST_ERROR, f"Can't connect to MySQL server on {self.host!r} ({exc})"
                ) from exc
        super().connect(sock)


def connect_pymysql(dialect: Any, record: Any, cargs: Any, cparams: Any) -> DeadlineConnection:
    """SQLAlchemy's ``do_connect`` event: PyMySQL's connection, on sockets with a deadline."""
    return DeadlineConnection(*cargs, **cparams)


def limit_statement(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    """SQLAlchemy's ``before_cursor_execute`` event: give a SELECT the time left to the server."""
    left = time_left()
    if left is None or not statement.startswith("SELECT"):
        return statement, parameters
    seconds = max(left, 0.001)
    dialect = conn.dialect
    version = tuple(dialect.server_version_info or ())[:3]
    if dialect.is_mariadb:
        if version >= MARIADB_SET_STATEMENT:
            return f"SET STATEMENT max_statement_time={seconds:.3f} FOR {statement}", parameters
    elif version >= MYSQL_EXECUTION_HINT:
        hint = f"SELECT /*+ MAX_EXECUTION_TIME({max(1, int(seconds * 1000))}) */"
        return hint + statement[len("SELECT") :], parameters
    return statement, parameters
