"""Table definitions: the MOR columns the project touches, and the project's own tables.

MOR's tables (``devices``, ``servers``) are described only as far as we read or
write them; they are never created or altered outside tests and the demo. The
project's own tables carry the ``mor_regstatus_`` prefix, use natural primary
keys (so ``INSERT ... ON DUPLICATE KEY UPDATE`` burns no auto-increment ids) and
are created by versioned migrations in ``mor_plugin.store.migrations``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import SchemaItem

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
#: A DATETIME with microseconds on MySQL/MariaDB: observation times are compared, and a
#: poll and an event within the same second must still be ordered.
PreciseDateTime = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _own_table(name: str, *items: SchemaItem) -> Table:
    """One of the project's tables: InnoDB for transactions, utf8mb4 so that any device
    name fits."""
    return Table(name, own_metadata, *items, mysql_engine="InnoDB", mysql_charset="utf8mb4")


schema_version = _own_table(
    "mor_regstatus_schema",
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime, nullable=False),
)

device_state = _own_table(
    "mor_regstatus_devices",
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
    # schema 2: >= flap_changes transitions within flap_window minutes
    Column("flapping", Boolean, nullable=False, server_default=text("0")),
    Column("flapping_since", DateTime),
    # schema 2: when what this row says was observed (UTC): the poll's list completion or
    # the PeerStatus event's arrival. The poll and the event listener each leave alone a
    # device whose stored observation is newer than their own (last observation wins).
    Column("observed_at", PreciseDateTime),
)

server_state = _own_table(
    "mor_regstatus_servers",
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
    # schema 4: 255 (was 30): Debian's "22.10.1+dfsg+~cs6.17.60671434-1" is 31 characters;
    # the full text is kept here, MOR's servers.version (varchar(30)) gets what fits
    Column("asterisk_version", String(255)),
    # schema 2: the AMI event listener (mor-retrieve-peers --watch) of this server
    Column("listener_connected", Boolean, nullable=False, server_default=text("0")),
    Column("listener_seen", DateTime),  # its last heartbeat
    Column("listener_since", DateTime),  # connected (or disconnected) since
    # schema 2: when the last successful poll's AMI list completed; the listener ignores
    # events older than that (the poll saw every device after them)
    Column("observed_at", PreciseDateTime),
    # schema 5: when the listener last changed one of this server's devices; with
    # last_success (every poll's), it tells the widget that what it read of them may be old
    Column("listener_wrote_at", PreciseDateTime),
)

wrong_server = _own_table(
    "mor_regstatus_wrong_server",
    Column("device_id", Integer, primary_key=True, autoincrement=False),
    Column("seen_on_server_id", Integer, primary_key=True, autoincrement=False),
    Column("assigned_server_id", Integer, nullable=False),
    Column("peer_name", String(100), nullable=False),
    Column("reg_status", String(50), nullable=False),
    Column("ip", String(45)),
    Column("port", Integer),
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
)

# --- schema 2: history ---------------------------------------------------------

#: One row per change of a device's bullet (never for latency jitter).
history = _own_table(
    "mor_regstatus_history",
    # append-only log: a surrogate key, ordered by insertion
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("device_id", Integer, nullable=False),
    Column("server_id", Integer, nullable=False),
    Column("at", DateTime, nullable=False),  # UTC
    Column("from_status", String(12), nullable=False),  # a mor_plugin.status kind
    Column("to_status", String(12), nullable=False),
    Column("reg_status", String(50)),  # the string written, NULL for "none"
    Column("latency_ms", Integer),
    Column("source", String(8), nullable=False),  # "poll" or "event"
    Index("mor_regstatus_history_device_at", "device_id", "at"),
    Index("mor_regstatus_history_at", "at"),
)

#: Latency samples, one row per device and hour: ``samples`` holds space-separated
#: ``<seconds since the hour>:<ms>`` pairs, e.g. ``"0:23 60:25 120:24"``.
#: Written by the poll for OK/LAGGED devices, at most one sample per device every
#: 5 minutes (``store.LATENCY_EVERY``); rows older than 24 hours are purged.
latency = _own_table(
    "mor_regstatus_latency",
    Column("device_id", Integer, primary_key=True, autoincrement=False),
    Column("hour", DateTime, primary_key=True),  # UTC, minutes and seconds zero
    Column("samples", String(2000), nullable=False),
    Index("mor_regstatus_latency_hour", "hour"),
)

#: Webhook dampening: what was last sent for a device.
notified = _own_table(
    "mor_regstatus_notified",
    Column("device_id", Integer, primary_key=True, autoincrement=False),
    Column("last_status", String(12), nullable=False),
    Column("last_sent", DateTime, nullable=False),
    Column("window_start", DateTime, nullable=False),
    Column("sent_in_window", Integer, nullable=False),
)

# --- schema 3: PJSIP contacts ---------------------------------------------------

#: Every contact of a PJSIP device, as the collector (or the event listener) last saw it.
#: A device's rows are replaced together, and only when one of them changed (the round
#: trip compared in whole milliseconds); a device without contacts has no rows.
contacts = _own_table(
    "mor_regstatus_contacts",
    Column("device_id", Integer, primary_key=True, autoincrement=False),
    # the contact's place among the device's contacts (ordered by URI)
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("server_id", Integer, nullable=False, index=True),
    Column("uri", String(512), nullable=False),
    Column("user_agent", String(255), nullable=False, server_default=text("''")),
    Column("roundtrip_usec", BigInteger),  # NULL: Asterisk said N/A
    # Asterisk's label: Reachable, Unreachable, Unknown, NonQualified (Created in 13-15)
    Column("status", String(16), nullable=False),
    Column("via", String(64)),  # ip:port of the Via header, when Asterisk kept one
    Column("seen", DateTime, nullable=False),  # UTC: when these rows were written
)

COUNT_COLUMNS = {
    "ok": "n_ok",
    "lagged": "n_lagged",
    "unreachable": "n_unreachable",
    "unknown": "n_unknown",
    "unmonitored": "n_unmonitored",
    "none": "n_none",
}
