"""The widget's reads: what it shows of devices and servers, and the ``Database`` that
reads it.

The hot paths (JSON status, bullets) read only the columns they show, in one statement
and one round trip to MySQL (autocommit: no rollback when a connection goes back to the
pool, no ping before it is used). Every statement (``widget.queries``) is picked by the
version of the collector's tables, read once and kept (``Database.schema_version``):
before the collector's first run the widget shows what MOR's own tables say; a schema
not yet upgraded leaves out only what later ones add (history, PJSIP contacts, the
listener's mark, without which the device cache keeps devices only for
``MOR_WIDGET_CACHE_SECONDS``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, TypeVar

from pymysql.constants import ER, FIELD_TYPE  # type: ignore[import-untyped]
from pymysql.converters import (  # type: ignore[import-untyped]
    conversions as pymysql_conversions,
)
from pymysql.converters import convert_datetime
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, Row, RowMapping, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from mor_plugin import schema, store
from mor_plugin.status import KINDS, SEEN_KINDS, kind_of, latency_ms

from . import dbtime
from .queries import (
    ALL_COUNTS_ONLY,
    ALL_COUNTS_WITH_STATE,
    BRIEFS_ONLY,
    BRIEFS_WITH_STATE,
    CHANGE_MARKS,
    CONTACTS,
    CONTACTS_OF_DEVICE,
    DEVICES_ONLY,
    DEVICES_WITH_STATE,
    FLAPPING,
    HISTORY,
    HISTORY_BEFORE,
    HISTORY_IN_WINDOW,
    LATENCY_IN_WINDOW,
    LIVE_COUNTS_OF_SERVERS,
    MARKS,
    OWN,
    SERVER_EXISTS,
    SERVER_LIVE_COUNTS,
    SERVER_ONLY,
    SERVER_WITH_STATE,
    USER_COUNTS_ONLY,
    USER_COUNTS_WITH_STATE,
    WRONG_SERVER,
    device_list_statements,
    fleet_statement,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

POOL_RECYCLE = 1800  # below MySQL's default wait_timeout of 8 h, and below most proxies'
#: seconds between reads of the collector's schema version while it is below the latest
SCHEMA_RECHECK = 5.0

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def from_row(cls: type[D], row: RowMapping, **computed: Any) -> D:
    """A ``cls`` whose fields are the row's columns of the same names, but for those
    ``computed`` from it."""
    values = {name: row[name] for name in _field_names(cls) if name not in computed}
    return cls(**values, **computed)


def utcnow() -> datetime:
    """Now in UTC, naive like the stored DATETIMEs."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def is_stale(last_success: Optional[datetime], now: datetime, stale_after: float) -> bool:
    """True when the server's collector never succeeded or not within ``stale_after`` s."""
    return last_success is None or (now - last_success).total_seconds() > stale_after


@dataclass(frozen=True)
class DeviceStatus:
    """What the widget shows for one device."""

    id: int
    name: str
    description: Optional[str]
    user_id: int
    server_id: int
    device_type: Optional[str]
    qualify: Optional[str]
    reg_status: Optional[str]
    kind: str
    latency_ms: Optional[int]
    since: Optional[datetime]
    last_seen: Optional[datetime]
    unreachable_since: Optional[datetime]
    ip: Optional[str]
    port: Optional[int]
    last_run: Optional[datetime]
    last_success: Optional[datetime]
    run_result: Optional[str]


def _since(kind: str, state_status: Optional[str], since: Optional[datetime]) -> Optional[datetime]:
    """``since`` belongs to the colour the collector recorded; when ``devices`` says
    otherwise (another writer, a legacy run) it is not shown."""
    return since if state_status == kind else None


def _last_seen(
    kind: str, last_seen: Optional[datetime], last_success: Optional[datetime]
) -> Optional[datetime]:
    """A device still seen is as fresh as its server's last successful run, because the
    collector does not rewrite rows that did not change."""
    if kind in SEEN_KINDS and last_success is not None:
        return max(last_seen, last_success) if last_seen else last_success
    return last_seen


class DeviceBrief(NamedTuple):
    """What a bullet and the JSON API show of one device."""

    id: int
    name: str
    server_id: int
    reg_status: Optional[str]
    kind: str
    latency_ms: Optional[int]
    since: Optional[datetime]
    last_seen: Optional[datetime]
    #: the last successful run of the collector of its server (how fresh the data is)
    last_success: Optional[datetime]


def device_brief(row: Sequence[Any]) -> DeviceBrief:
    """A row of ``BRIEFS_WITH_STATE`` (or ``BRIEFS_ONLY``) as the user should read it."""
    device_id, name, server_id, reg_status, state_status, since, last_seen, last_success = row
    kind = kind_of(reg_status)
    return DeviceBrief(
        device_id,
        name,
        server_id,
        reg_status,
        kind,
        latency_ms(reg_status),
        _since(kind, state_status, since),
        _last_seen(kind, last_seen, last_success),
        last_success,
    )


def device_status(row: RowMapping) -> DeviceStatus:
    """A joined row as the user should read it (see ``_since`` and ``_last_seen``)."""
    kind = kind_of(row["reg_status"])
    return from_row(
        DeviceStatus,
        row,
        kind=kind,
        latency_ms=latency_ms(row["reg_status"]),
        since=_since(kind, row["state_status"], row["since"]),
        last_seen=_last_seen(kind, row["last_seen"], row["last_success"]),
    )


@dataclass(frozen=True)
class WrongServerSighting:
    """The device registered on another server than the one MOR assigns it to."""

    seen_on_server_id: int
    seen_on_hostname: Optional[str]
    assigned_server_id: int
    assigned_hostname: Optional[str]
    reg_status: str
    ip: Optional[str]
    port: Optional[int]
    last_seen: datetime


@dataclass(frozen=True)
class Counts:
    """Devices per kind, and how fresh the data behind them is."""

    counts: dict[str, int]
    oldest_success: Optional[datetime]
    never_collected: int


@dataclass(frozen=True)
class ServerSummary:
    server_id: int
    hostname: Optional[str]
    last_run: Optional[datetime]
    last_success: Optional[datetime]
    result: Optional[str]
    asterisk_version: Optional[str]
    wrong_server: Optional[int]
    counts: dict[str, int]


def count_kinds(rows: Iterable[tuple[Optional[str], int]]) -> dict[str, int]:
    """Devices per kind from (reg_status, n) groups, with kind_of as the single rule."""
    counts = dict.fromkeys(KINDS, 0)
    for reg_status, n in rows:
        counts[kind_of(reg_status)] += int(n)
    return counts


@dataclass(frozen=True)
class HistoryEntry:
    """One change of a device's bullet, as the collector logged it."""

    at: datetime
    from_status: str
    to_status: str
    reg_status: Optional[str]
    latency_ms: Optional[int]
    source: str


@dataclass(frozen=True)
class History:
    """A device's changes and latency samples in ``[start, end]``."""

    start: datetime
    end: datetime
    #: the last change before ``start`` (None: none logged)
    before: Optional[HistoryEntry]
    transitions: list[HistoryEntry]
    latency: list[tuple[datetime, int]]
    flapping: bool
    flapping_since: Optional[datetime]
    #: False while the collector has not created the history tables
    available: bool = True


def parse_samples(hour: datetime, samples: str) -> Iterator[tuple[datetime, int]]:
    """``"0:23 60:25"`` of the hour starting at ``hour``; malformed pairs are skipped."""
    for pair in samples.split():
        offset, sep, ms = pair.partition(":")
        if sep and offset.isdigit() and ms.isdigit() and len(offset) <= 5 and len(ms) <= 9:
            yield hour + timedelta(seconds=int(offset)), int(ms)


@dataclass(frozen=True)
class FleetServer:
    """One Asterisk server: its collector's last run, counts, listener."""

    server_id: int
    hostname: Optional[str]
    server_ip: Optional[str]
    last_run: Optional[datetime]
    last_success: Optional[datetime]
    result: Optional[str]
    duration_ms: Optional[int]
    asterisk_version: Optional[str]
    counts: dict[str, int]
    wrong_server: Optional[int]
    #: None while the history tables are missing
    flapping: Optional[int]
    listener_connected: Optional[bool]
    listener_seen: Optional[datetime]
    listener_since: Optional[datetime]


@dataclass(frozen=True)
class ListedDevice:
    """A row of a server's device list."""

    id: int
    name: str
    description: Optional[str]
    user_id: int
    server_id: int
    reg_status: Optional[str]
    kind: str
    since: Optional[datetime]
    last_seen: Optional[datetime]


@dataclass(frozen=True)
class DevicePage:
    total: int
    devices: list[ListedDevice]


def fleet_server(row: RowMapping, live: Optional[list[tuple[Optional[str], int]]]) -> FleetServer:
    """A fleet row; counts as of the last run, or from ``devices`` before the first one."""
    if live is None:
        counts = {kind: int(row[column] or 0) for kind, column in schema.COUNT_COLUMNS.items()}
    else:
        counts = count_kinds(live)
    flapping, connected = row["n_flapping"], row["listener_connected"]
    return from_row(
        FleetServer,
        row,
        counts=counts,
        flapping=None if flapping is None else int(flapping),
        listener_connected=None if connected is None else bool(connected),
    )


def listed_device(row: RowMapping) -> ListedDevice:
    kind = kind_of(row["reg_status"])
    state_status = row["state_status"]
    # "since" belongs to the colour the collector recorded (see device_status)
    since = row["since"] if state_status is None or state_status == kind else None
    return from_row(ListedDevice, row, kind=kind, since=since)


@dataclass(frozen=True)
class ContactRow:
    """One PJSIP contact of a device, as the status page lists it."""

    uri: str
    user_agent: str
    roundtrip_usec: Optional[int]
    status: str
    via: Optional[str]

    @property
    def roundtrip_ms(self) -> Optional[str]:
        """The round trip in ms, one decimal below 10 ms; None when Asterisk said N/A."""
        if self.roundtrip_usec is None or self.status != "Reachable":
            return None
        ms = self.roundtrip_usec / 1000
        return f"{ms:.1f}" if ms < 10 else str(round(ms))


def fast_datetime(value: Any) -> Any:
    """A DATETIME as PyMySQL decodes it, at C speed for the two forms MySQL sends
    (``YYYY-MM-DD HH:MM:SS``, with six decimals for DATETIME(6)); anything else, a zero date
    included, is left to PyMySQL's own decoder. PyMySQL's takes 2.5 us where
    ``fromisoformat`` takes 0.2: a list of 100 devices carries 300 of them."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("ascii")
    if len(value) in (19, 26):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return convert_datetime(value)


#: PyMySQL's conversions with ``fast_datetime`` for DATETIME and TIMESTAMP
FAST_CONVERSIONS = {
    **pymysql_conversions,
    FIELD_TYPE.DATETIME: fast_datetime,
    FIELD_TYPE.TIMESTAMP: fast_datetime,
}


_PING = text("SELECT 1")


class _SchemaSeen(NamedTuple):
    """The collector's schema version as read at ``read_at`` (``time.monotonic()``)."""

    version: int
    read_at: float
    #: the database refused to let the widget's user read it (then 0)
    denied: bool = False


def _log_schema(seen: _SchemaSeen) -> None:
    table = schema.schema_version.name
    if seen.denied:
        log.warning(
            "the widget's database user may not read %s (after the collector's first run, "
            "GRANT SELECT on it): showing only what MOR's own tables say",
            table,
        )
    elif seen.version == 0:
        log.warning(
            "the collector's tables are missing (has it run yet?): "
            "showing only what MOR's own tables say"
        )
    elif seen.version < store.LATEST_VERSION:
        log.warning(
            "the collector's tables are at schema %d, this widget reads up to %d: "
            "the pages leave out what the later ones add",
            seen.version,
            store.LATEST_VERSION,
        )
    else:
        log.info("the collector's tables are at schema %d", seen.version)


class Database:
    """The engine (made on first use) and the queries; one per app."""

    def __init__(
        self, url: str, connect_timeout: float, read_timeout: float, request_timeout: float = 3
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        #: what one request may spend on the database in all (see ``widget.dbtime``)
        self._request_timeout = request_timeout
        self._engine: Optional[Engine] = None
        self._lock = threading.Lock()
        #: the collector's schema version as last read (see ``schema_version``)
        self._schema: Optional[_SchemaSeen] = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        url = make_url(self._url)
        kwargs: dict[str, Any] = {"pool_recycle": POOL_RECYCLE}
        mysql = url.get_backend_name() == "mysql"
        if mysql:
            # One round trip a query: every statement is its own transaction (the widget
            # only reads), so nothing is rolled back when a connection goes back to the
            # pool; and no ping before each use: a connection found dead is retried once
            # on a new one instead (Database._run).
            kwargs["isolation_level"] = "AUTOCOMMIT"
            kwargs["skip_autocommit_rollback"] = True
            # waiting for a free pooled connection is database time too
            kwargs["pool_timeout"] = self._request_timeout
            # a dead or firewalled server must answer 503 quickly, not hang the worker
            kwargs["connect_args"] = {
                "connect_timeout": self._connect_timeout,
                "read_timeout": self._read_timeout,
                "write_timeout": self._read_timeout,
            }
        else:  # SQLite: the demo and tests
            kwargs["pool_pre_ping"] = True
        if mysql and url.get_driver_name() == "pymysql":
            kwargs["connect_args"]["conv"] = FAST_CONVERSIONS
        log.info("database engine for %s", url.render_as_string(hide_password=True))
        engine = create_engine(url, **kwargs)
        if mysql:
            # each request's database time is bounded as a whole (widget.dbtime)
            event.listen(engine, "before_cursor_execute", dbtime.limit_statement, retval=True)
            if url.get_driver_name() == "pymysql":
                event.listen(engine, "do_connect", dbtime.connect_pymysql)
            else:
                log.warning(
                    "%s: only PyMySQL's sockets are bounded by MOR_WIDGET_DB_TIMEOUT as a whole "
                    "(with this driver, each read waits up to MOR_WIDGET_DB_READ_TIMEOUT)",
                    url.drivername,
                )
        return engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def schema_version(self) -> int:
        """The version of the collector's tables, which picks every statement (see
        ``widget.queries``).

        Read once and kept: the latest version this code knows (or a newer one) is final,
        so no request costs a query for it. One below that is read again every
        ``SCHEMA_RECHECK`` s, because the collector may create or upgrade its tables while
        the widget runs (its first run; ``--migrate`` before a new release).
        """
        seen = self._schema
        if seen is not None and (
            seen.version >= store.LATEST_VERSION or time.monotonic() - seen.read_at < SCHEMA_RECHECK
        ):
            return seen.version
        fresh = self._read_schema_version()
        if seen is None or (fresh.version, fresh.denied) != (seen.version, seen.denied):
            _log_schema(fresh)
        self._schema = fresh
        return fresh.version

    def _read_schema_version(self) -> _SchemaSeen:
        read_at = time.monotonic()
        try:
            return _SchemaSeen(self._run(store.schema_version), read_at)
        except DBAPIError as error:
            # MySQL denies a table it does not grant whether or not it exists: a user with
            # only the documented GRANTs before the collector's first run, or without the
            # one on the schema table
            if getattr(error.orig, "args", (None,))[0] != ER.TABLEACCESS_DENIED_ERROR:
                raise
            return _SchemaSeen(0, read_at, denied=True)

    def _run(self, query: Callable[[Connection], T]) -> T:
        """``query`` on a pooled connection; once more on a new one when the first was dead
        (a restarted server, a connection closed by wait_timeout or a proxy). Only reads
        are retried, within the same request's database time (widget.dbtime)."""
        try:
            with self.engine.connect() as conn:
                return query(conn)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
            log.info("database connection lost, retrying once: %s", str(error.orig).splitlines()[0])
        with self.engine.connect() as conn:
            return query(conn)

    def _rows(self, statement: Executable, **params: Any) -> Sequence[Row[Any]]:
        """Every row of one statement, in one round trip (see ``_run``)."""
        return self._run(lambda conn: conn.execute(statement, params).all())

    def ping(self) -> None:
        self._rows(_PING)

    def _by_id(
        self,
        ids: Sequence[int],
        with_state: Executable,
        without: Executable,
        make: Callable[[Row[Any]], T],
    ) -> dict[int, T]:
        """The devices among ``ids`` that exist, each row made into a value, by id (the
        statements' first column); ``without`` before the collector's first run."""
        if not ids:
            return {}
        statement = with_state if self.schema_version() >= OWN else without
        return {row[0]: make(row) for row in self._rows(statement, ids=list(ids))}

    def devices(self, ids: Sequence[int]) -> dict[int, DeviceStatus]:
        """The devices among ``ids`` that exist, by id."""
        return self._by_id(
            ids, DEVICES_WITH_STATE, DEVICES_ONLY, lambda row: device_status(row._mapping)
        )

    def briefs(self, ids: Sequence[int]) -> dict[int, DeviceBrief]:
        """What the bullets and the JSON API show of the devices among ``ids`` that exist."""
        return self._by_id(ids, BRIEFS_WITH_STATE, BRIEFS_ONLY, device_brief)

    def change_marks(self) -> Optional[dict[int, tuple[Any, ...]]]:
        """Each server's mark (see ``CHANGE_MARKS``), of the servers that have one; None
        before schema 5."""
        if self.schema_version() < MARKS:
            return None
        return {
            server_id: (last_success, observed_at, wrote_at)
            for server_id, last_success, observed_at, wrote_at, connected in self._rows(
                CHANGE_MARKS
            )
            # a listener that is connected and never marked a write may be of a version
            # before schema 5, which writes without marking: this server has no mark
            if wrote_at is not None or not connected
        }

    def wrong_server(self, device_id: int) -> list[WrongServerSighting]:
        if self.schema_version() < OWN:
            return []
        rows = self._rows(WRONG_SERVER, device_id=device_id)
        return [from_row(WrongServerSighting, row._mapping) for row in rows]

    def user_counts(self, user_id: Optional[int]) -> Counts:
        """The SIP devices of one user per kind; of every user when ``user_id`` is None."""
        own = self.schema_version() >= OWN
        if user_id is None:
            rows = self._rows(ALL_COUNTS_WITH_STATE if own else ALL_COUNTS_ONLY)
        else:
            rows = self._rows(USER_COUNTS_WITH_STATE if own else USER_COUNTS_ONLY, user_id=user_id)
        oldest = [row.oldest_success for row in rows if row.oldest_success is not None]
        return Counts(
            counts=count_kinds((row.reg_status, row.n) for row in rows),
            oldest_success=min(oldest) if oldest else None,
            never_collected=sum(int(row.never or 0) for row in rows),
        )

    def server_summary(self, server_id: int) -> Optional[ServerSummary]:
        """The collector's last run on a server and its counts; None for an unknown server."""
        statement = SERVER_WITH_STATE if self.schema_version() >= OWN else SERVER_ONLY
        found = self._rows(statement, server_id=server_id)
        if not found:
            return None
        row = found[0]._mapping
        if row["last_run"] is not None:
            counts = {kind: int(row[column]) for kind, column in schema.COUNT_COLUMNS.items()}
        else:  # the collector never ran here: count what devices says now
            live = self._rows(SERVER_LIVE_COUNTS, server_id=server_id)
            counts = count_kinds((r.reg_status, r.n) for r in live)
        return from_row(ServerSummary, row, counts=counts)

    def history(self, device_id: int, start: datetime, end: datetime) -> History:
        """Changes and latency samples of one device between ``start`` and ``end``."""
        if self.schema_version() < HISTORY:
            return History(start, end, None, [], [], False, None, available=False)
        window = {"device_id": device_id, "start": start, "end": end}
        before = self._rows(HISTORY_BEFORE, **window)
        entries = self._rows(HISTORY_IN_WINDOW, **window)
        first_hour = start.replace(minute=0, second=0, microsecond=0)
        latency = sorted(
            (at, ms)
            for row in self._rows(LATENCY_IN_WINDOW, **window, first_hour=first_hour)
            for at, ms in parse_samples(row.hour, row.samples)
            if start <= at <= end
        )
        flap = self._rows(FLAPPING, device_id=device_id)
        flapping = bool(flap and flap[0].flapping)
        return History(
            start=start,
            end=end,
            before=HistoryEntry(*before[0]) if before else None,
            transitions=[HistoryEntry(*row) for row in entries],
            latency=latency,
            flapping=flapping,
            flapping_since=flap[0].flapping_since if flapping else None,
        )

    def contacts(self, device_id: int) -> list[ContactRow]:
        """Every PJSIP contact of a device (none for chan_sip devices, or before schema 3)."""
        if self.schema_version() < CONTACTS:
            return []
        return [ContactRow(*row) for row in self._rows(CONTACTS_OF_DEVICE, device_id=device_id)]

    def fleet(self) -> list[FleetServer]:
        """Every server in MOR's ``servers``, with its collector's state, by id."""
        rows = [row._mapping for row in self._rows(fleet_statement(self.schema_version()))]
        never = [row["server_id"] for row in rows if row["last_run"] is None]
        live: dict[int, list[tuple[Optional[str], int]]] = {sid: [] for sid in never}
        if never:
            for r in self._rows(LIVE_COUNTS_OF_SERVERS, server_ids=never):
                live[r.server_id].append((r.reg_status, r.n))
        return [fleet_server(row, live.get(row["server_id"])) for row in rows]

    def server_devices(
        self, server_id: int, status: Optional[str], offset: int, limit: int
    ) -> Optional[DevicePage]:
        """A page of a server's SIP devices, optionally of one kind (or flapping, or
        registered here though assigned elsewhere); None for an unknown server."""
        if not self._rows(SERVER_EXISTS, server_id=server_id):
            return None
        rows_q, count_q = device_list_statements(status, self.schema_version())
        total = int(self._rows(count_q, server_id=server_id)[0][0])
        rows = self._rows(rows_q.limit(limit).offset(offset), server_id=server_id)
        return DevicePage(total=total, devices=[listed_device(row._mapping) for row in rows])
