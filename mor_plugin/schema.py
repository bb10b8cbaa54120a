"""Table definitions: the MOR columns the project touches, and the project's own tables.

MOR's tables (``devices``, ``servers``) are described only as far as we read or
write them; they are never created or altered outside tests and the demo. The
project's own tables carry the ``mor_regstatus_`` prefix, use natural primary
keys (so ``INSERT ... ON DUPLICATE KEY UPDATE`` burns no auto-increment ids) and
are created by versioned migrations in ``mor_plugin.store``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
)

#: MOR's own tables, as far as this project uses them.
mor_metadata = MetaData()

devices = Table(
    "devices",
    mor_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("device_type", String(20)),
    Column("user_id", Integer, nullable=False),
    Column("server_id", Integer, nullable=False),
    Column("qualify", String(10), nullable=False),
    Column("description", String(255)),
    Column("reg_status", String(50)),
)

servers = Table(
    "servers",
    mor_metadata,
    Column("id", Integer, primary_key=True),
    Column("server_ip", String(255), nullable=False),
    Column("hostname", String(255)),
    Column("ami_port", String(255)),
    Column("ami_secret", String(255)),
    Column("ami_username", String(255)),
    Column("version", String(30)),
    Column("uptime", String(150)),
)

#: The project's own tables.
own_metadata = MetaData()
#: InnoDB for transactions; utf8mb4 so that any device name fits.
_OWN_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

schema_version = Table(
    "mor_regstatus_schema",
    own_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime, nullable=False),
    **_OWN_TABLE_OPTIONS,
)

device_state = Table(
    "mor_regstatus_devices",
    own_metadata,
    Column("device_id", Integer, primary_key=True, autoincrement=False),
    Column("server_id", Integer, nullable=False, index=True),
    # one of mor_plugin.status.KINDS
    Column("status", String(12), nullable=False),
    # when the bullet last changed colour (UTC)
    Column("since", DateTime, nullable=False),
    # last run in which the device was registered and answering, as of the row's last write;
    # for a device still seen, the server's last successful run is later (see docs)
    Column("last_seen", DateTime),
    # first run that found it UNREACHABLE (drives the UNKNOWN-after-an-hour rule)
    Column("unreachable_since", DateTime),
    Column("ip", String(45)),
    Column("port", Integer),
    **_OWN_TABLE_OPTIONS,
)

server_state = Table(
    "mor_regstatus_servers",
    own_metadata,
    Column("server_id", Integer, primary_key=True, autoincrement=False),
    Column("last_run", DateTime, nullable=False),
    Column("last_success", DateTime),
    # "ok" or the one-line error of the last run
    Column("result", String(255), nullable=False),
    Column("duration_ms", Integer, nullable=False, default=0),
    Column("peers", Integer, nullable=False, default=0),
    Column("changed", Integer, nullable=False, default=0),
    Column("n_ok", Integer, nullable=False, default=0),
    Column("n_lagged", Integer, nullable=False, default=0),
    Column("n_unreachable", Integer, nullable=False, default=0),
    Column("n_unknown", Integer, nullable=False, default=0),
    Column("n_unmonitored", Integer, nullable=False, default=0),
    Column("n_none", Integer, nullable=False, default=0),
    Column("n_wrong_server", Integer, nullable=False, default=0),
    Column("asterisk_version", String(30)),
    **_OWN_TABLE_OPTIONS,
)

wrong_server = Table(
    "mor_regstatus_wrong_server",
    own_metadata,
    Column("device_id", Integer, primary_key=True, autoincrement=False),
    Column("seen_on_server_id", Integer, primary_key=True, autoincrement=False),
    Column("assigned_server_id", Integer, nullable=False),
    Column("peer_name", String(100), nullable=False),
    Column("reg_status", String(50), nullable=False),
    Column("ip", String(45)),
    Column("port", Integer),
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    **_OWN_TABLE_OPTIONS,
)

COUNT_COLUMNS = {
    "ok": "n_ok",
    "lagged": "n_lagged",
    "unreachable": "n_unreachable",
    "unknown": "n_unknown",
    "unmonitored": "n_unmonitored",
    "none": "n_none",
}
