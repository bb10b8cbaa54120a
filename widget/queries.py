"""The widget's statements: MOR's ``devices`` joined with the collector's own tables.

Each is built once with SQLAlchemy Core, so its compiled form is cached. The collector
creates its tables on its first run and adds to them in later migrations
(``mor_plugin.store.MIGRATIONS``); a read whose tables a database does not have yet has
a variant that reads what is there and gives NULL for the rest under the same names, so
every variant of a read yields rows of one shape. ``widget.db.Database`` picks them by the
schema version it read, against the constants below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from sqlalchemy import and_, bindparam, case, false, func, not_, null, or_, select, true
from sqlalchemy.sql import ColumnElement, Select

from mor_plugin import schema
from mor_plugin.status import KINDS, LAGGED, NONE, OK, UNKNOWN, UNMONITORED, UNREACHABLE

#: the first schema version that has what a statement reads; below OWN (0: the collector
#: has not run yet) there are only MOR's own tables
OWN = 1  # device state, server runs, wrong-server sightings
HISTORY = 2  # history, latency samples, flapping, listener state
CONTACTS = 3  # PJSIP contacts
MARKS = 5  # the listener's mark of a server's changes

_d = schema.devices
_srv = schema.servers
_st = schema.device_state
_run = schema.server_state
_ws = schema.wrong_server
_hist = schema.history
_lat = schema.latency
_con = schema.contacts


def _nulls(columns: Iterable[ColumnElement[Any]]) -> tuple[ColumnElement[Any], ...]:
    """NULL under the name of each column: the same row shape without its table."""
    return tuple(null().label(column.name) for column in columns)


_ids = _d.c.id.in_(bindparam("ids", expanding=True))
_sip = _d.c.device_type == "SIP"

# --- one device, a few devices -----------------------------------------------------

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
    _run.c.result.label("run_result"),
)
#: a device with its state and its server's last run
_WITH_STATE = _d.outerjoin(_st, _st.c.device_id == _d.c.id).outerjoin(
    _run, _run.c.server_id == _d.c.server_id
)
DEVICES_WITH_STATE = select(*_DEVICE_COLUMNS, *_STATE_COLUMNS).select_from(_WITH_STATE).where(_ids)
DEVICES_ONLY = select(*_DEVICE_COLUMNS, *_nulls(_STATE_COLUMNS)).where(_ids)
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
    select(*_BRIEF_COLUMNS, *_BRIEF_STATE_COLUMNS).select_from(_WITH_STATE).where(_ids)
)
BRIEFS_ONLY = select(*_BRIEF_COLUMNS, *_nulls(_BRIEF_STATE_COLUMNS)).where(_ids)

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

# --- the legend: devices per status -----------------------------------------------


def _counts_with_state(where: ColumnElement[bool]) -> Select[Any]:
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


def _counts_only(where: ColumnElement[bool]) -> Select[Any]:
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

# --- one server's summary -----------------------------------------------------------

_SERVER_COLUMNS = (_srv.c.id.label("server_id"), _srv.c.hostname)
#: the columns of mor_regstatus_servers in schema 1 (later ones may be missing)
_RUN_V1_COLUMNS = (
    *(
        _run.c[name]
        for name in (
            "last_run",
            "last_success",
            "result",
            "duration_ms",
            "peers",
            "changed",
            *schema.COUNT_COLUMNS.values(),
            "asterisk_version",
        )
    ),
    _run.c.n_wrong_server.label("wrong_server"),
)
_of_server = _srv.c.id == bindparam("server_id")
SERVER_WITH_STATE = (
    select(*_SERVER_COLUMNS, *_RUN_V1_COLUMNS)
    .select_from(_srv.outerjoin(_run, _run.c.server_id == _srv.c.id))
    .where(_of_server)
)
SERVER_ONLY = select(*_SERVER_COLUMNS, *_nulls(_RUN_V1_COLUMNS)).where(_of_server)
SERVER_LIVE_COUNTS = (
    select(_d.c.reg_status, func.count().label("n"))
    .where((_d.c.server_id == bindparam("server_id")) & _sip)
    .group_by(_d.c.reg_status)
)

# --- schema 2: history of one device -------------------------------------------------

_HISTORY_ENTRY_COLUMNS = (
    _hist.c.at,
    _hist.c.from_status,
    _hist.c.to_status,
    _hist.c.reg_status,
    _hist.c.latency_ms,
    _hist.c.source,
)
_of_device = _hist.c.device_id == bindparam("device_id")
HISTORY_IN_WINDOW = (
    select(*_HISTORY_ENTRY_COLUMNS)
    .where(_of_device & _hist.c.at.between(bindparam("start"), bindparam("end")))
    .order_by(_hist.c.at, _hist.c.id)
)
#: the last change before the window: the colour the window starts with
HISTORY_BEFORE = (
    select(*_HISTORY_ENTRY_COLUMNS)
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

# --- schema 3: the PJSIP contacts of one device -------------------------------------

CONTACTS_OF_DEVICE = (
    select(_con.c.uri, _con.c.user_agent, _con.c.roundtrip_usec, _con.c.status, _con.c.via)
    .where(_con.c.device_id == bindparam("device_id"))
    .order_by(_con.c.seq)
)

# --- the fleet: every Asterisk server ------------------------------------------------

_FLEET_COLUMNS = (*_SERVER_COLUMNS, _srv.c.server_ip, *_RUN_V1_COLUMNS)
_LISTENER_COLUMNS = (_run.c.listener_connected, _run.c.listener_seen, _run.c.listener_since)
_flapping_per_server = (
    select(_st.c.server_id, func.count().label("n_flapping"))
    .where(_st.c.flapping == true())
    .group_by(_st.c.server_id)
    .subquery("flapping_per_server")
)
_n_flapping = func.coalesce(_flapping_per_server.c.n_flapping, 0).label("n_flapping")
_servers_with_state = _srv.outerjoin(_run, _run.c.server_id == _srv.c.id)
FLEET_WITH_HISTORY = (
    select(*_FLEET_COLUMNS, *_LISTENER_COLUMNS, _n_flapping)
    .select_from(
        _servers_with_state.outerjoin(
            _flapping_per_server, _flapping_per_server.c.server_id == _srv.c.id
        )
    )
    .order_by(_srv.c.id)
)
FLEET_WITH_STATE = (
    select(*_FLEET_COLUMNS, *_nulls((*_LISTENER_COLUMNS, _n_flapping)))
    .select_from(_servers_with_state)
    .order_by(_srv.c.id)
)
FLEET_ONLY = select(
    *_SERVER_COLUMNS,
    _srv.c.server_ip,
    *_nulls((*_RUN_V1_COLUMNS, *_LISTENER_COLUMNS, _n_flapping)),
).order_by(_srv.c.id)
#: counts of servers whose collector never ran, from what ``devices`` says now
LIVE_COUNTS_OF_SERVERS = (
    select(_d.c.server_id, _d.c.reg_status, func.count().label("n"))
    .where(_d.c.server_id.in_(bindparam("server_ids", expanding=True)) & _sip)
    .group_by(_d.c.server_id, _d.c.reg_status)
)


def fleet_statement(version: int) -> Select[Any]:
    """Every server in MOR's ``servers`` with what schema ``version`` keeps of it."""
    if version >= HISTORY:
        return FLEET_WITH_HISTORY
    return FLEET_WITH_STATE if version >= OWN else FLEET_ONLY


# --- one server's devices, by status --------------------------------------------------

#: device-list filters beyond the six kinds
FLAPPING_FILTER = "flapping"
WRONG_SERVER_FILTER = "wrong_server"
DEVICE_FILTERS = (*KINDS, FLAPPING_FILTER, WRONG_SERVER_FILTER)


def kind_condition(kind: str) -> ColumnElement[bool]:
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
_LIST_STATE_COLUMNS = (_st.c.since, _st.c.last_seen, _st.c.status.label("state_status"))
_on_server = (_d.c.server_id == bindparam("server_id")) & _sip
SERVER_EXISTS = select(_srv.c.id).where(_of_server)


def device_list_statements(status: Optional[str], version: int) -> tuple[Select[Any], Select[Any]]:
    """(rows, count) statements for a server's device list at schema ``version``."""
    if status == WRONG_SERVER_FILTER and version >= OWN:
        # registered on this server, assigned to another: as seen here
        columns: tuple[ColumnElement[Any], ...] = (
            *(c for c in _LIST_COLUMNS if c.name != "reg_status"),
            _ws.c.reg_status,
            _ws.c.first_seen.label("since"),
            _ws.c.last_seen,
            null().label("state_status"),
        )
        source: Any = _d.join(_ws, _ws.c.device_id == _d.c.id)
        where: ColumnElement[bool] = (_ws.c.seen_on_server_id == bindparam("server_id")) & _sip
    else:
        if version >= OWN:
            source = _d.outerjoin(_st, _st.c.device_id == _d.c.id)
            columns = (*_LIST_COLUMNS, *_LIST_STATE_COLUMNS)
        else:
            source = _d
            columns = (*_LIST_COLUMNS, *_nulls(_LIST_STATE_COLUMNS))
        where = _on_server
        if status in KINDS:
            where = and_(where, kind_condition(status))
        elif status == FLAPPING_FILTER:
            where = and_(where, _st.c.flapping == true()) if version >= HISTORY else false()
        elif status == WRONG_SERVER_FILTER:  # nothing sighted before the collector's first run
            where = false()
    rows = select(*columns).select_from(source).where(where).order_by(_d.c.id)
    count = select(func.count()).select_from(source).where(where)
    return rows, count
