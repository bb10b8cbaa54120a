"""Throw-away MOR databases on the local MariaDB: the tests', the benchmarks' and the
recorder's. Each has MOR X5's tables (``tests/mor_x5_tables.sql``) and a MySQL user with
a password limited to it (on ``localhost`` and ``127.0.0.1``); both are dropped after."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pymysql  # type: ignore[import-untyped,unused-ignore]

SOCKET = "/run/mysqld/mysqld.sock"
MOR_DDL = Path(__file__).resolve().parents[1] / "tests" / "mor_x5_tables.sql"
_HOSTS = ("localhost", "127.0.0.1")


class Login(NamedTuple):
    """A scratch database and the user that may use it."""

    name: str
    user: str
    password: str


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


def create_mor_tables(cursor: Any) -> None:
    """MOR X5's tables in the cursor's current database."""
    for statement in MOR_DDL.read_text().split(";\n"):
        if statement.strip() and "CREATE TABLE" in statement:
            cursor.execute(statement)


@contextmanager
def scratch_mor_database(root: Any, prefix: str) -> Iterator[Login]:
    """A new database ``<prefix>_<random>`` with MOR's tables and its own user, made and
    dropped through ``root``; the cursor's database is the new one while it exists."""
    suffix = secrets.token_hex(4)
    login = Login(f"{prefix}_{suffix}", f"{prefix}_{suffix}", secrets.token_hex(8))
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{login.name}` CHARACTER SET utf8")
            for host in _HOSTS:
                cur.execute(f"CREATE USER '{login.user}'@'{host}' IDENTIFIED BY '{login.password}'")
                cur.execute(f"GRANT ALL ON `{login.name}`.* TO '{login.user}'@'{host}'")
            cur.execute(f"USE `{login.name}`")
            create_mor_tables(cur)
        yield login
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{login.name}`")
            for host in _HOSTS:
                cur.execute(f"DROP USER IF EXISTS '{login.user}'@'{host}'")
