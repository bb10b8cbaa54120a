"""Read-only queries: MOR's ``devices`` joined with the collector's own tables.

The hot paths (JSON status, bullets) read only the columns they show, in one
statement and one round trip to MySQL (autocommit: no rollback when a connection
goes back to the pool, no ping before it is used), built once with SQLAlchemy
Core so the compiled form is cached. The collector creates its
own tables on its first run; until then they are missing and every query
falls back to a variant without them (re-checked every ``RECHECK_MISSING`` s).
Schema 2 (history, latency samples, flapping, listener state) is a second tier:
a collector not yet upgraded leaves it missing, and only the pages that need it
fall back (the status bullets never read it). Schema 5 adds the listener's mark
(``CHANGE_MARKS``), without which the widget's device cache keeps devices only for
``MOR_WIDGET_CACHE_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from pymysql.constants import FIELD_TYPE  # type: ignore[import-untyped]
from pymysql.converters import (  # type: ignore[import-untyped]
    conversions as pymysql_conversions,
)
from pymysql.converters import convert_datetime
from sqlalchemy import (
    and_,
    bindparam,
    case,
    create_engine,
    event,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection, Engine, Row, make_url
from sqlalchemy.exc import DBAPIError

from mor_plugin import schema
from mor_plugin.status import (
    KINDS,
    LAGGED,
    NONE,
    OK,
    SEEN_KINDS,
    UNKNOWN,
    UNMONITORED,
    UNREACHABLE,
    kind_of,
    latency_ms,
)

from . import dbtime

log = logging.getLogger(__name__)

RECHECK_MISSING = 30.0
POOL_RECYCLE = 1800  # below MySQL's default wait_timeout of 8 h, and below most proxies'
# MySQL/MariaDB ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR (a schema-2 column not yet added)
MISSING_TABLE_CODES = (1146, 1054)
#: the tiers of the collector's tables a query may need
OWN = "own"  # schema 1: device state, server runs, wrong-server sightings
HISTORY = "history"  # schema 2: history, latency samples, flapping, listener state
CONTACTS = "contacts"  # schema 3: PJSIP contacts
MARKS = "change-mark"  # schema 5: the listener's mark of a server's changes

_d = schema.devices
_srv = schema.servers
_st = schema.device_state
_run = schema.server_state
_ws = schema.wrong_server
_hist = schema.history
_lat = schema.latency
_con = schema.contacts

_DEVICE_COLUMNS = (
    _d.c.id,
    _d.c.name,
    _d.c.description,
    _d.c.user_id,
    _d.c.server_id,
    _d.c.device_type,
    _d.c.qualify,
    _d.c.reg_status,
)
_STATE_COLUMNS = (
    _st.c.status.label("state_status"),
    _st.c.since,
    _st.c.last_seen,
    _st.c.unreachable_since,
    _st.c.ip,
    _st.c.port,
    _run.c.last_run,
    _run.c.last_success,
    _run.c.result,
)
_STATE_NAMES = [column.name for column in _STATE_COLUMNS]

#: a device with its state and its server's last run
_WITH_STATE = _d.outerjoin(_st, _st.c.device_id == _d.c.id).outerjoin(
    _run, _run.c.server_id == _d.c.server_id
)
DEVICES_WITH_STATE = (
    select(*_DEVICE_COLUMNS, *_STATE_COLUMNS)
    .select_from(_WITH_STATE)
    .where(_d.c.id.in_(bindparam("ids", expanding=True)))
)
DEVICES_ONLY = select(*_DEVICE_COLUMNS, *(null().label(name) for name in _STATE_NAMES)).where(
    _d.c.id.in_(bindparam("ids", expanding=True))
)
#: what a bullet and the JSON API show of a device, and nothing more: decoding columns is
#: most of what a list of 100 devices costs the widget (PyMySQL is pure Python)
_BRIEF_COLUMNS = (_d.c.id, _d.c.name, _d.c.server_id, _d.c.reg_status)
_BRIEF_STATE_COLUMNS = (
    _st.c.status.label("state_status"),
    _st.c.since,
    _st.c.last_seen,
    _run.c.last_success,
)
BRIEFS_WITH_STATE = (
    select(*_BRIEF_COLUMNS, *_BRIEF_STATE_COLUMNS)
    .select_from(_WITH_STATE)
    .where(_d.c.id.in_(bindparam("ids", expanding=True)))
)
BRIEFS_ONLY = select(
    *_BRIEF_COLUMNS, *(null().label(column.name) for column in _BRIEF_STATE_COLUMNS)
).where(_d.c.id.in_(bindparam("ids", expanding=True)))

_seen_on = _srv.alias("seen_on")
_assigned = _srv.alias("assigned")
WRONG_SERVER = (
    select(
        _ws.c.seen_on_server_id,
        _ws.c.assigned_server_id,
        _ws.c.reg_status,
        _ws.c.ip,
        _ws.c.port,
        _ws.c.last_seen,
        _seen_on.c.hostname.label("seen_on_hostname"),
        _assigned.c.hostname.label("assigned_hostname"),
    )
    .select_from(
        _ws.outerjoin(_seen_on, _seen_on.c.id == _ws.c.seen_on_server_id).outerjoin(
            _assigned, _assigned.c.id == _ws.c.assigned_server_id
        )
    )
    .where(_ws.c.device_id == bindparam("device_id"))
    .order_by(_ws.c.last_seen.desc())
)

_sip = _d.c.device_type == "SIP"

#: what moves, in the same transaction, whenever a server's devices are written: every
#: successful poll (last_success, and observed_at to the microsecond) and every listener
#: batch that changed one (listener_wrote_at)
CHANGE_MARKS = select(
    _run.c.server_id,
    _run.c.last_success,
    _run.c.observed_at,
    _run.c.listener_wrote_at,
    _run.c.listener_connected,
)


def _counts_with_state(where: Any) -> Any:
    return (
        select(
            _d.c.reg_status,
            func.count().label("n"),
            func.min(_run.c.last_success).label("oldest_success"),
            func.sum(case((_run.c.last_success.is_(None), 1), else_=0)).label("never"),
        )
        .select_from(_d.outerjoin(_run, _run.c.server_id == _d.c.server_id))
        .where(where)
        .group_by(_d.c.reg_status)
    )


def _counts_only(where: Any) -> Any:
    return (
        select(
            _d.c.reg_status,
            func.count().label("n"),
            null().label("oldest_success"),
            func.count().label("never"),
        )
        .where(where)
        .group_by(_d.c.reg_status)
    )


_user_sip = (_d.c.user_id == bindparam("user_id")) & _sip
USER_COUNTS_WITH_STATE = _counts_with_state(_user_sip)
USER_COUNTS_ONLY = _counts_only(_user_sip)
ALL_COUNTS_WITH_STATE = _counts_with_state(_sip)
ALL_COUNTS_ONLY = _counts_only(_sip)

#: the columns of mor_regstatus_servers in schema 1 (later ones may be missing)
_RUN_V1_COLUMNS = tuple(
    _run.c[name]
    for name in (
        "last_run",
        "last_success",
        "result",
        "duration_ms",
        "peers",
        "changed",
        *schema.COUNT_COLUMNS.values(),
        "n_wrong_server",
        "asterisk_version",
    )
)
SERVER_WITH_STATE = (
    select(_srv.c.id, _srv.c.hostname, *_RUN_V1_COLUMNS)
    .select_from(_srv.outerjoin(_run, _run.c.server_id == _srv.c.id))
    .where(_srv.c.id == bindparam("server_id"))
)
SERVER_ONLY = select(_srv.c.id, _srv.c.hostname, literal(None).label("last_run")).where(
    _srv.c.id == bindparam("server_id")
)
SERVER_LIVE_COUNTS = (
    select(_d.c.reg_status, func.count().label("n"))
    .where((_d.c.server_id == bindparam("server_id")) & (_d.c.device_type == "SIP"))
    .group_by(_d.c.reg_status)
)


# --- schema 2: history of one device ---------------------------------------------

_TRANSITION_COLUMNS = (
    _hist.c.at,
    _hist.c.from_status,
    _hist.c.to_status,
    _hist.c.reg_status,
    _hist.c.latency_ms,
    _hist.c.source,
)
_of_device = _hist.c.device_id == bindparam("device_id")
TRANSITIONS_IN_WINDOW = (
    select(*_TRANSITION_COLUMNS)
    .where(_of_device & _hist.c.at.between(bindparam("start"), bindparam("end")))
    .order_by(_hist.c.at, _hist.c.id)
)
#: the last change before the window: the colour the window starts with
TRANSITION_BEFORE = (
    select(*_TRANSITION_COLUMNS)
    .where(_of_device & (_hist.c.at < bindparam("start")))
    .order_by(_hist.c.at.desc(), _hist.c.id.desc())
    .limit(1)
)
LATENCY_IN_WINDOW = (
    select(_lat.c.hour, _lat.c.samples)
    .where(
        (_lat.c.device_id == bindparam("device_id"))
        & _lat.c.hour.between(bindparam("first_hour"), bindparam("end"))
    )
    .order_by(_lat.c.hour)
)
FLAPPING = select(_st.c.flapping, _st.c.flapping_since).where(
    _st.c.device_id == bindparam("device_id")
)

# --- schema 3: the PJSIP contacts of one device ----------------------------------------

CONTACTS_OF_DEVICE = (
    select(_con.c.uri, _con.c.user_agent, _con.c.roundtrip_usec, _con.c.status, _con.c.via)
    .where(_con.c.device_id == bindparam("device_id"))
    .order_by(_con.c.seq)
)


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


# --- the fleet: every Asterisk server ----------------------------------------------

LISTENER_COLUMNS = ("listener_connected", "listener_seen", "listener_since")
_flapping_per_server = (
    select(_st.c.server_id, func.count().label("n_flapping"))
    .where(_st.c.flapping == true())
    .group_by(_st.c.server_id)
    .subquery("flapping_per_server")
)
_SERVER_COLUMNS = (_srv.c.id, _srv.c.hostname, _srv.c.server_ip)
FLEET_WITH_HISTORY = (
    select(
        *_SERVER_COLUMNS,
        *_RUN_V1_COLUMNS,
        *(_run.c[name] for name in LISTENER_COLUMNS),
        func.coalesce(_flapping_per_server.c.n_flapping, 0).label("n_flapping"),
    )
    .select_from(
        _srv.outerjoin(_run, _run.c.server_id == _srv.c.id).outerjoin(
            _flapping_per_server, _flapping_per_server.c.server_id == _srv.c.id
        )
    )
    .order_by(_srv.c.id)
)
FLEET_WITH_STATE = (
    select(
        *_SERVER_COLUMNS,
        *_RUN_V1_COLUMNS,
        *(null().label(name) for name in LISTENER_COLUMNS),
        null().label("n_flapping"),
    )
    .select_from(_srv.outerjoin(_run, _run.c.server_id == _srv.c.id))
    .order_by(_srv.c.id)
)
FLEET_ONLY = select(
    *_SERVER_COLUMNS,
    *(null().label(c.name) for c in _RUN_V1_COLUMNS),
    *(null().label(name) for name in LISTENER_COLUMNS),
    null().label("n_flapping"),
).order_by(_srv.c.id)
#: counts of servers whose collector never ran, from what ``devices`` says now
LIVE_COUNTS_OF_SERVERS = (
    select(_d.c.server_id, _d.c.reg_status, func.count().label("n"))
    .where(
        _d.c.server_id.in_(bindparam("server_ids", expanding=True)) & (_d.c.device_type == "SIP")
    )
    .group_by(_d.c.server_id, _d.c.reg_status)
)

# --- one server's devices, by status ------------------------------------------------

#: device-list filters beyond the six kinds
FLAPPING_FILTER = "flapping"
WRONG_SERVER_FILTER = "wrong_server"
DEVICE_FILTERS = (*KINDS, FLAPPING_FILTER, WRONG_SERVER_FILTER)


def kind_condition(kind: str) -> Any:
    """SQL for ``kind_of(devices.reg_status) == kind`` (MOR's prefix rules).

    MySQL compares case-insensitively under its default collations; the
    collector writes Asterisk's exact strings, so this only matters for rows
    some other tool wrote in another case.
    """
    rs = _d.c.reg_status
    rules = {
        OK: rs.like("OK%"),
        LAGGED: rs.like("LAGGED%"),
        UNREACHABLE: rs == "UNREACHABLE",
        UNKNOWN: rs == "UNKNOWN",
        UNMONITORED: rs == "Unmonitored",
    }
    if kind == NONE:
        return or_(rs.is_(None), not_(or_(*rules.values())))
    return rules[kind]


_LIST_COLUMNS = (
    _d.c.id,
    _d.c.name,
    _d.c.description,
    _d.c.user_id,
    _d.c.server_id,
    _d.c.reg_status,
)
_on_server = (_d.c.server_id == bindparam("server_id")) & (_d.c.device_type == "SIP")
SERVER_EXISTS = select(_srv.c.id).where(_srv.c.id == bindparam("server_id"))


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


def device_status(row: Mapping[Any, Any]) -> DeviceStatus:
    """A joined row as the user should read it (see ``_since`` and ``_last_seen``)."""
    kind = kind_of(row["reg_status"])
    return DeviceStatus(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        user_id=row["user_id"],
        server_id=row["server_id"],
        device_type=row["device_type"],
        qualify=row["qualify"],
        reg_status=row["reg_status"],
        kind=kind,
        latency_ms=latency_ms(row["reg_status"]),
        since=_since(kind, row["state_status"], row["since"]),
        last_seen=_last_seen(kind, row["last_seen"], row["last_success"]),
        unreachable_since=row["unreachable_since"],
        ip=row["ip"],
        port=row["port"],
        last_run=row["last_run"],
        last_success=row["last_success"],
        run_result=row["result"],
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
class Transition:
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
    before: Optional[Transition]
    transitions: list[Transition]
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


def fleet_server(
    row: Mapping[Any, Any], live: Optional[list[tuple[Optional[str], int]]]
) -> FleetServer:
    """A fleet row; counts as of the last run, or from ``devices`` before the first one."""
    if live is None:
        counts = {kind: int(row[column] or 0) for kind, column in schema.COUNT_COLUMNS.items()}
    else:
        counts = count_kinds(live)
    connected = row["listener_connected"]
    return FleetServer(
        server_id=row["id"],
        hostname=row["hostname"],
        server_ip=row["server_ip"],
        last_run=row["last_run"],
        last_success=row["last_success"],
        result=row["result"],
        duration_ms=row["duration_ms"],
        asterisk_version=row["asterisk_version"],
        counts=counts,
        wrong_server=row["n_wrong_server"],
        flapping=None if row["n_flapping"] is None else int(row["n_flapping"]),
        listener_connected=None if connected is None else bool(connected),
        listener_seen=row["listener_seen"],
        listener_since=row["listener_since"],
    )


_NO_STATE_COLUMNS = (null().label("since"), null().label("last_seen"), null().label("state_status"))


def device_list_statements(status: Optional[str], tier: Optional[str]) -> tuple[Any, Any]:
    """(rows, count) statements for a server's device list with the tables of ``tier``."""
    if status == WRONG_SERVER_FILTER:
        # registered on this server, assigned to another: as seen here
        columns: tuple[Any, ...] = (
            *(c for c in _LIST_COLUMNS if c.name != "reg_status"),
            _ws.c.reg_status,
            _ws.c.first_seen.label("since"),
            _ws.c.last_seen,
            literal(None).label("state_status"),
        )
        source: Any = _d.join(_ws, _ws.c.device_id == _d.c.id)
        where: Any = (_ws.c.seen_on_server_id == bindparam("server_id")) & (
            _d.c.device_type == "SIP"
        )
        if tier is None:
            where = false()
            source = _d
            columns = (*_LIST_COLUMNS, *_NO_STATE_COLUMNS)
    else:
        where = _on_server
        if status in KINDS:
            where = and_(where, kind_condition(status))
        if tier is None:
            source = _d
            columns = (*_LIST_COLUMNS, *_NO_STATE_COLUMNS)
            if status == FLAPPING_FILTER:
                where = false()
        else:
            source = _d.outerjoin(_st, _st.c.device_id == _d.c.id)
            columns = (
                *_LIST_COLUMNS,
                _st.c.since,
                _st.c.last_seen,
                _st.c.status.label("state_status"),
            )
            if status == FLAPPING_FILTER:
                where = and_(where, _st.c.flapping == true()) if tier == HISTORY else false()
    rows = select(*columns).select_from(source).where(where).order_by(_d.c.id)
    count = select(func.count()).select_from(source).where(where)
    return rows, count


def listed_device(row: Mapping[Any, Any]) -> ListedDevice:
    kind = kind_of(row["reg_status"])
    state_status = row["state_status"]
    return ListedDevice(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        user_id=row["user_id"],
        server_id=row["server_id"],
        reg_status=row["reg_status"],
        kind=kind,
        # "since" belongs to the colour the collector recorded (see device_status)
        since=row["since"] if state_status is None or state_status == kind else None,
        last_seen=row["last_seen"],
    )


T = TypeVar("T")


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


def _is_missing_table(error: DBAPIError) -> bool:
    args = getattr(error.orig, "args", ())
    if args and args[0] in MISSING_TABLE_CODES:
        return True
    message = str(error.orig)
    return "no such table" in message or "no such column" in message


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
        #: tier (OWN, HISTORY) -> when a query found its tables missing (monotonic)
        self._missing_since: dict[str, float] = {}

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

    def _first_available(self, *variants: tuple[Optional[str], Callable[[Connection], T]]) -> T:
        """The first variant whose tables exist; each names the tier it needs (None: MOR's only).

        A tier found missing is skipped for ``RECHECK_MISSING`` s, then tried again.
        """
        for tier, query in variants:
            if tier is not None:
                missing_since = self._missing_since.get(tier)
                if missing_since is not None and (
                    time.monotonic() - missing_since < RECHECK_MISSING
                ):
                    continue
            try:
                result = self._run(query)
            except DBAPIError as error:
                if tier is None or not _is_missing_table(error):
                    raise
                if tier not in self._missing_since:
                    log.warning(
                        "the collector's %s tables are missing (has it run yet?): %s",
                        tier,
                        str(error.orig).splitlines()[0],
                    )
                self._missing_since[tier] = time.monotonic()
                continue
            if tier is not None:
                self._missing_since.pop(tier, None)
            return result
        raise LookupError("every query variant needs tables that are missing")

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

    def _with_own_tables(
        self, with_state: Callable[[Connection], T], without: Callable[[Connection], T]
    ) -> T:
        return self._first_available((OWN, with_state), (None, without))

    def ping(self) -> None:
        self._run(lambda conn: conn.execute(text("SELECT 1")))

    def _by_id(
        self, ids: Sequence[int], with_state: Any, without: Any, make: Callable[[Row[Any]], T]
    ) -> dict[int, T]:
        """The devices among ``ids`` that exist, each row made into a value, by id (the
        statements' first column); ``without`` while the collector's tables are missing."""
        if not ids:
            return {}

        def run(statement: Any) -> Callable[[Connection], dict[int, T]]:
            def query(conn: Connection) -> dict[int, T]:
                return {row[0]: make(row) for row in conn.execute(statement, {"ids": list(ids)})}

            return query

        return self._with_own_tables(run(with_state), run(without))

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

        def query(conn: Connection) -> Optional[dict[int, tuple[Any, ...]]]:
            return {
                server_id: (last_success, observed_at, wrote_at)
                for server_id, last_success, observed_at, wrote_at, connected in conn.execute(
                    CHANGE_MARKS
                )
                # a listener that is connected and never marked a write may be of a version
                # before schema 5, which writes without marking: this server has no mark
                if wrote_at is not None or not connected
            }

        return self._first_available((MARKS, query), (None, lambda conn: None))

    def wrong_server(self, device_id: int) -> list[WrongServerSighting]:
        def with_state(conn: Connection) -> list[WrongServerSighting]:
            rows = conn.execute(WRONG_SERVER, {"device_id": device_id}).mappings()
            return [WrongServerSighting(**row) for row in rows]

        return self._with_own_tables(with_state, lambda conn: [])

    def user_counts(self, user_id: Optional[int]) -> Counts:
        """The SIP devices of one user per kind; of every user when ``user_id`` is None."""

        def run(statement: Any) -> Callable[[Connection], Counts]:
            def query(conn: Connection) -> Counts:
                rows = conn.execute(statement, {"user_id": user_id}).all()
                oldest = [row.oldest_success for row in rows if row.oldest_success is not None]
                return Counts(
                    counts=count_kinds((row.reg_status, row.n) for row in rows),
                    oldest_success=min(oldest) if oldest else None,
                    never_collected=sum(int(row.never or 0) for row in rows),
                )

            return query

        if user_id is None:
            return self._with_own_tables(run(ALL_COUNTS_WITH_STATE), run(ALL_COUNTS_ONLY))
        return self._with_own_tables(run(USER_COUNTS_WITH_STATE), run(USER_COUNTS_ONLY))

    def server_summary(self, server_id: int) -> Optional[ServerSummary]:
        """The collector's last run on a server and its counts; None for an unknown server."""

        def run(statement: Any) -> Callable[[Connection], Optional[ServerSummary]]:
            def query(conn: Connection) -> Optional[ServerSummary]:
                row = conn.execute(statement, {"server_id": server_id}).mappings().first()
                if row is None:
                    return None
                if row["last_run"] is not None:
                    counts = {
                        kind: int(row[column]) for kind, column in schema.COUNT_COLUMNS.items()
                    }
                else:  # the collector never ran here: count what devices says now
                    live = conn.execute(SERVER_LIVE_COUNTS, {"server_id": server_id}).all()
                    counts = count_kinds((r.reg_status, r.n) for r in live)
                return ServerSummary(
                    server_id=row["id"],
                    hostname=row["hostname"],
                    last_run=row["last_run"],
                    last_success=row.get("last_success"),
                    result=row.get("result"),
                    asterisk_version=row.get("asterisk_version"),
                    wrong_server=row.get("n_wrong_server"),
                    counts=counts,
                )

            return query

        return self._with_own_tables(run(SERVER_WITH_STATE), run(SERVER_ONLY))

    def history(self, device_id: int, start: datetime, end: datetime) -> History:
        """Changes and latency samples of one device between ``start`` and ``end``."""
        window = {"device_id": device_id, "start": start, "end": end}

        def query(conn: Connection) -> History:
            before = conn.execute(TRANSITION_BEFORE, window).first()
            rows = conn.execute(TRANSITIONS_IN_WINDOW, window).all()
            first_hour = start.replace(minute=0, second=0, microsecond=0)
            latency = [
                (at, ms)
                for row in conn.execute(LATENCY_IN_WINDOW, {**window, "first_hour": first_hour})
                for at, ms in parse_samples(row.hour, row.samples)
                if start <= at <= end
            ]
            latency.sort()
            flap = conn.execute(FLAPPING, window).first()
            return History(
                start=start,
                end=end,
                before=Transition(*before) if before is not None else None,
                transitions=[Transition(*row) for row in rows],
                latency=latency,
                flapping=bool(flap and flap.flapping),
                flapping_since=flap.flapping_since if flap and flap.flapping else None,
            )

        def empty(conn: Connection) -> History:
            return History(start, end, None, [], [], False, None, available=False)

        return self._first_available((HISTORY, query), (None, empty))

    def contacts(self, device_id: int) -> list[ContactRow]:
        """Every PJSIP contact of a device (none for chan_sip devices, or before schema 3)."""

        def query(conn: Connection) -> list[ContactRow]:
            rows = conn.execute(CONTACTS_OF_DEVICE, {"device_id": device_id}).all()
            return [ContactRow(*row) for row in rows]

        return self._first_available((CONTACTS, query), (None, lambda conn: []))

    def fleet(self) -> list[FleetServer]:
        """Every server in MOR's ``servers``, with its collector's state, by id."""

        def run(statement: Any) -> Callable[[Connection], list[FleetServer]]:
            def query(conn: Connection) -> list[FleetServer]:
                rows = conn.execute(statement).mappings().all()
                never = [row["id"] for row in rows if row["last_run"] is None]
                live: dict[int, list[tuple[Optional[str], int]]] = {sid: [] for sid in never}
                if never:
                    for r in conn.execute(LIVE_COUNTS_OF_SERVERS, {"server_ids": never}):
                        live[r.server_id].append((r.reg_status, r.n))
                return [fleet_server(row, live.get(row["id"])) for row in rows]

            return query

        return self._first_available(
            (HISTORY, run(FLEET_WITH_HISTORY)),
            (OWN, run(FLEET_WITH_STATE)),
            (None, run(FLEET_ONLY)),
        )

    def server_devices(
        self, server_id: int, status: Optional[str], offset: int, limit: int
    ) -> Optional[DevicePage]:
        """A page of a server's SIP devices, optionally of one kind (or flapping, or
        registered here though assigned elsewhere); None for an unknown server."""

        def run(tier: Optional[str]) -> Callable[[Connection], Optional[DevicePage]]:
            def query(conn: Connection) -> Optional[DevicePage]:
                if conn.execute(SERVER_EXISTS, {"server_id": server_id}).first() is None:
                    return None
                rows_q, count_q = device_list_statements(status, tier)
                params = {"server_id": server_id}
                total = int(conn.execute(count_q, params).scalar_one())
                rows = conn.execute(rows_q.limit(limit).offset(offset), params).mappings()
                return DevicePage(total=total, devices=[listed_device(row) for row in rows])

            return query

        return self._first_available((HISTORY, run(HISTORY)), (OWN, run(OWN)), (None, run(None)))
