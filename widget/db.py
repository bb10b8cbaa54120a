"""Read-only queries: MOR's ``devices`` joined with the collector's own tables.

One statement per request on the hot paths (JSON status, bullets), built once
with SQLAlchemy Core so the compiled form is cached. The collector creates its
own tables on its first run; until then they are missing and every query
falls back to a variant without them (re-checked every ``RECHECK_MISSING`` s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy import bindparam, case, create_engine, func, literal, null, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

from mor_plugin import schema
from mor_plugin.status import KINDS, SEEN_KINDS, kind_of, latency_ms

log = logging.getLogger(__name__)

RECHECK_MISSING = 30.0
POOL_RECYCLE = 1800  # below MySQL's default wait_timeout of 8 h, and below most proxies'
MISSING_TABLE_CODES = (1146,)  # MySQL/MariaDB ER_NO_SUCH_TABLE

_d = schema.devices
_srv = schema.servers
_st = schema.device_state
_run = schema.server_state
_ws = schema.wrong_server

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

DEVICES_WITH_STATE = (
    select(*_DEVICE_COLUMNS, *_STATE_COLUMNS)
    .select_from(
        _d.outerjoin(_st, _st.c.device_id == _d.c.id).outerjoin(
            _run, _run.c.server_id == _d.c.server_id
        )
    )
    .where(_d.c.id.in_(bindparam("ids", expanding=True)))
)
DEVICES_ONLY = select(*_DEVICE_COLUMNS, *(null().label(name) for name in _STATE_NAMES)).where(
    _d.c.id.in_(bindparam("ids", expanding=True))
)

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

_user_sip = (_d.c.user_id == bindparam("user_id")) & (_d.c.device_type == "SIP")
USER_COUNTS_WITH_STATE = (
    select(
        _d.c.reg_status,
        func.count().label("n"),
        func.min(_run.c.last_success).label("oldest_success"),
        func.sum(case((_run.c.last_success.is_(None), 1), else_=0)).label("never"),
    )
    .select_from(_d.outerjoin(_run, _run.c.server_id == _d.c.server_id))
    .where(_user_sip)
    .group_by(_d.c.reg_status)
)
USER_COUNTS_ONLY = (
    select(
        _d.c.reg_status,
        func.count().label("n"),
        null().label("oldest_success"),
        func.count().label("never"),
    )
    .where(_user_sip)
    .group_by(_d.c.reg_status)
)

SERVER_WITH_STATE = (
    select(_srv.c.id, _srv.c.hostname, *(c for c in _run.c if c.name != "server_id"))
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


def device_status(row: Mapping[Any, Any]) -> DeviceStatus:
    """A joined row as the user should read it.

    ``since`` belongs to the colour the collector recorded; when ``devices``
    says otherwise (another writer, a legacy run) it is not shown. A device
    still seen is as fresh as its server's last successful run, because the
    collector does not rewrite rows that did not change.
    """
    kind = kind_of(row["reg_status"])
    last_seen = row["last_seen"]
    if kind in SEEN_KINDS and row["last_success"] is not None:
        last_seen = max(last_seen, row["last_success"]) if last_seen else row["last_success"]
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
        since=row["since"] if row["state_status"] == kind else None,
        last_seen=last_seen,
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


T = TypeVar("T")


def _is_missing_table(error: DBAPIError) -> bool:
    args = getattr(error.orig, "args", ())
    if args and args[0] in MISSING_TABLE_CODES:
        return True
    return "no such table" in str(error.orig)


class Database:
    """The engine (made on first use) and the queries; one per app."""

    def __init__(self, url: str, connect_timeout: int, read_timeout: int) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._engine: Optional[Engine] = None
        self._lock = threading.Lock()
        self._own_missing_since: Optional[float] = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        url = make_url(self._url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": POOL_RECYCLE}
        if url.get_backend_name() == "mysql":
            # a dead or firewalled server must answer 503 quickly, not hang the worker
            kwargs["connect_args"] = {
                "connect_timeout": self._connect_timeout,
                "read_timeout": self._read_timeout,
                "write_timeout": self._read_timeout,
            }
        log.info("database engine for %s", url.render_as_string(hide_password=True))
        return create_engine(url, **kwargs)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _with_own_tables(
        self, with_state: Callable[[Connection], T], without: Callable[[Connection], T]
    ) -> T:
        missing_since = self._own_missing_since
        if missing_since is not None and time.monotonic() - missing_since < RECHECK_MISSING:
            with self.engine.connect() as conn:
                return without(conn)
        try:
            with self.engine.connect() as conn:
                result = with_state(conn)
        except DBAPIError as error:
            if not _is_missing_table(error):
                raise
            if missing_since is None:
                log.warning("the collector's tables are missing (has it run yet?): %s", error.orig)
            self._own_missing_since = time.monotonic()
            with self.engine.connect() as conn:
                return without(conn)
        self._own_missing_since = None
        return result

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def devices(self, ids: Sequence[int]) -> dict[int, DeviceStatus]:
        """The devices among ``ids`` that exist, by id."""
        if not ids:
            return {}

        def run(statement: Any) -> Callable[[Connection], dict[int, DeviceStatus]]:
            def query(conn: Connection) -> dict[int, DeviceStatus]:
                rows = conn.execute(statement, {"ids": list(ids)}).mappings()
                return {row["id"]: device_status(row) for row in rows}

            return query

        return self._with_own_tables(run(DEVICES_WITH_STATE), run(DEVICES_ONLY))

    def wrong_server(self, device_id: int) -> list[WrongServerSighting]:
        def with_state(conn: Connection) -> list[WrongServerSighting]:
            rows = conn.execute(WRONG_SERVER, {"device_id": device_id}).mappings()
            return [WrongServerSighting(**row) for row in rows]

        return self._with_own_tables(with_state, lambda conn: [])

    def user_counts(self, user_id: int) -> Counts:
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
