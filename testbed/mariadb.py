"""The local MariaDB for the tests, the benchmarks and the recorder: started when it is
down, MariaDB's root over its socket, and throw-away MOR databases. Each scratch database
has MOR X5's tables (``tests/mor_x5_tables.sql``) and a MySQL user with a password limited
to it (on ``localhost`` and ``127.0.0.1``); both are dropped after. The collector, the
widget and the legacy baseline reach it over TCP, as in production."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pymysql  # type: ignore[import-untyped,unused-ignore]

SOCKET = "/run/mysqld/mysqld.sock"
HOST = "127.0.0.1"
PORT = 3306
MOR_DDL = Path(__file__).resolve().parents[1] / "tests" / "mor_x5_tables.sql"
_HOSTS = ("localhost", HOST)


class MariaDBUnavailable(Exception):
    """MariaDB does not answer and could not be started; the message says why."""


def sqlalchemy_url(user: str, password: str, database: str) -> str:
    """How the collector and the widget reach ``database`` as ``user``: over TCP."""
    return f"mysql+pymysql://{user}:{password}@{HOST}:{PORT}/{database}?charset=utf8mb4"


class ScratchDatabase(NamedTuple):
    """A throw-away MOR database and the user that may use it."""

    name: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return sqlalchemy_url(self.user, self.password, self.name)

    def pymysql_args(self) -> dict[str, Any]:
        """The same connection for ``pymysql.connect`` (the legacy baseline's)."""
        return {
            "host": HOST,
            "port": PORT,
            "user": self.user,
            "password": self.password,
            "database": self.name,
            "charset": "utf8mb4",
        }


def root_connection(database: Optional[str] = None, timeout: int = 60) -> Any:
    """MariaDB's root over the socket, autocommitting, with explicit timeouts."""
    return pymysql.connect(
        unix_socket=SOCKET,
        user="root",
        database=database,
        autocommit=True,
        connect_timeout=5,
        read_timeout=timeout,
        write_timeout=timeout,
    )


def _answers() -> bool:
    try:
        root_connection(timeout=5).close()
    except pymysql.err.OperationalError:
        return False
    return True


def ensure_running(timeout: float = 30.0) -> None:
    """MariaDB answers on its socket; if it is down, start it (only root can)."""
    if _answers():
        return
    if os.geteuid() != 0:
        raise MariaDBUnavailable("MariaDB is not running and only root can start it: run as root")
    subprocess.run(
        ["install", "-d", "-o", "mysql", "-g", "mysql", "/run/mysqld"], check=True, timeout=10
    )
    subprocess.run(
        ["start-stop-daemon", "--start", "--oknodo", "--background", "--chuid", "mysql"]
        + ["--exec", "/usr/sbin/mariadbd"],
        check=True,
        timeout=10,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers():
            return
        time.sleep(0.3)
    raise MariaDBUnavailable(
        f"MariaDB did not start within {timeout:g} s (see /var/log/mysql/error.log)"
    )


def create_mor_tables(cursor: Any) -> None:
    """MOR X5's tables in the cursor's current database."""
    for statement in MOR_DDL.read_text().split(";\n"):
        if statement.strip() and "CREATE TABLE" in statement:
            cursor.execute(statement)


@contextmanager
def scratch_mor_database(
    prefix: str, *, root: Any = None, timeout: int = 60
) -> Iterator[ScratchDatabase]:
    """A new database ``<prefix>_<random>`` with MOR's tables and its own user, made and
    dropped through ``root`` (whose cursor's database is the new one while it exists), or
    through a root connection of its own whose statements ``timeout`` bounds."""
    with contextlib.ExitStack() as own:
        if root is None:
            root = own.enter_context(contextlib.closing(root_connection(timeout=timeout)))
        suffix = secrets.token_hex(4)
        scratch = ScratchDatabase(f"{prefix}_{suffix}", f"{prefix}_{suffix}", secrets.token_hex(8))
        try:
            with root.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{scratch.name}` CHARACTER SET utf8")
                for host in _HOSTS:
                    cur.execute(
                        f"CREATE USER '{scratch.user}'@'{host}' IDENTIFIED BY '{scratch.password}'"
                    )
                    cur.execute(f"GRANT ALL ON `{scratch.name}`.* TO '{scratch.user}'@'{host}'")
                cur.execute(f"USE `{scratch.name}`")
                create_mor_tables(cur)
            yield scratch
        finally:
            with root.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{scratch.name}`")
                for host in _HOSTS:
                    cur.execute(f"DROP USER IF EXISTS '{scratch.user}'@'{host}'")
