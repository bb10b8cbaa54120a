"""The benchmark's MOR databases: ``testbed.mariadb``'s throw-away ones, filled and reset
the way the benchmark needs. The bench connects as root over the socket for set-up and
resets, and hands the collector and the widget a SQLAlchemy URL over TCP, as production
does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import pymysql

from testbed import mariadb

#: The project's own tables, emptied before every cold run.
OWN_TABLES = (
    "mor_regstatus_devices",
    "mor_regstatus_servers",
    "mor_regstatus_wrong_server",
    "mor_regstatus_contacts",
)


#: a 100k set-up or reset statement may take minutes
ROOT_TIMEOUT = 300

#: what the bench's jobs connect with: ``url`` for the collector and the widget,
#: ``pymysql_args()`` for the legacy baseline (both over TCP, like the collector)
BenchDatabase = mariadb.ScratchDatabase


def root_connection(database: Optional[str] = None) -> pymysql.connections.Connection:
    return mariadb.root_connection(database, timeout=ROOT_TIMEOUT)


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """A fresh MOR database and a password user limited to it; both dropped afterwards."""
    with mariadb.scratch_mor_database("mor_bench", timeout=ROOT_TIMEOUT) as database:
        yield database


def add_servers(conn: Any, server_ids: Iterable[int]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO servers (id, server_ip, hostname) VALUES (%s, %s, %s)",
            [(sid, f"127.0.0.{sid}", f"ast{sid}") for sid in server_ids],
        )


def add_devices(conn: Any, count: int, server_id: int, prefix: str = "", start: int = 0) -> None:
    """``count`` SIP devices named like ``realistic_peers``: ``f"{prefix}{100000 + i}"``.

    One ``INSERT … SELECT`` over MariaDB's sequence engine: 100k rows in a few seconds.
    """
    if count <= 0:
        return
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO devices (name, server_id, device_type, user_id, secret, context,"
            " extension, username, qualify)"
            " SELECT CONCAT(%s, 100000 + seq), %s, 'SIP', 2, 's', 'mor',"
            " CONCAT(%s, 100000 + seq), CONCAT(%s, 100000 + seq), 'yes'"
            f" FROM seq_{int(start)}_to_{int(start + count - 1)}",
            (prefix, server_id, prefix, prefix),
        )


def reset_statuses(conn: Any, server_id: Optional[int] = None) -> None:
    """Every ``reg_status`` NULL and the project's own rows gone: the next run is cold."""
    with conn.cursor() as cur:
        if server_id is None:
            cur.execute("UPDATE devices SET reg_status = NULL")
        else:
            cur.execute("UPDATE devices SET reg_status = NULL WHERE server_id = %s", (server_id,))
        cur.execute("SHOW TABLES")
        present = {row[0] for row in cur.fetchall()}
        for table in OWN_TABLES:
            if table in present:
                cur.execute(f"DELETE FROM `{table}`")


def reg_statuses(conn: Any, server_id: Optional[int] = None) -> dict[str, Optional[str]]:
    with conn.cursor() as cur:
        if server_id is None:
            cur.execute("SELECT name, reg_status FROM devices")
        else:
            cur.execute("SELECT name, reg_status FROM devices WHERE server_id = %s", (server_id,))
        return {name: status for name, status in cur.fetchall()}


def server_facts(conn: Any) -> dict[str, str]:
    """The MariaDB settings that bound the figures (they go into the results)."""
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        facts = {"version": str(cur.fetchone()[0])}
        cur.execute(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('innodb_flush_log_at_trx_commit',"
            " 'innodb_buffer_pool_size', 'sync_binlog', 'log_bin')"
        )
        facts.update({name: str(value) for name, value in cur.fetchall()})
    return facts
