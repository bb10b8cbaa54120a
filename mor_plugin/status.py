"""The rules: from what Asterisk lists to what MOR's devices should show.

Pure functions over small frozen values, no I/O. The stored strings keep
Asterisk's exact format (``OK (23 ms)``, ``LAGGED (2345 ms)``, ``UNREACHABLE``,
``UNKNOWN``, ``Unmonitored``) because MOR's GUI colours a device by prefix.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Optional

OK = "ok"
LAGGED = "lagged"
UNREACHABLE = "unreachable"
UNKNOWN = "unknown"
UNMONITORED = "unmonitored"
NONE = "none"
#: Every status kind, in the order the GUI's legend shows them.
KINDS = (OK, LAGGED, UNREACHABLE, UNKNOWN, UNMONITORED, NONE)
#: Kinds in which Asterisk has an answering (or at least registered) device.
SEEN_KINDS = frozenset({OK, LAGGED, UNMONITORED})

#: Frozen values; with __slots__ where Python has them (3.10+): 100k peers and
#: device states are the bulk of a large run's memory.
_VALUE: dict[str, Any] = {
    "frozen": True,
    **({"slots": True} if sys.version_info >= (3, 10) else {}),
}

_TIMED = re.compile(r"^(OK|LAGGED) \((\d{1,9}) ms\)$")


@dataclass(**_VALUE)
class Peer:
    """One SIP peer as Asterisk lists it (one ``PeerEntry``)."""

    name: str
    status: str
    ip: Optional[str] = None
    port: Optional[int] = None


@dataclass(**_VALUE)
class Device:
    """One of MOR's SIP devices assigned to this server, as stored."""

    id: int
    name: str
    reg_status: Optional[str]


@dataclass(**_VALUE)
class DeviceState:
    """What the project keeps per device beyond ``devices.reg_status``."""

    device_id: int
    server_id: int
    status: str
    since: datetime
    last_seen: Optional[datetime] = None
    unreachable_since: Optional[datetime] = None
    ip: Optional[str] = None
    port: Optional[int] = None


@dataclass(**_VALUE)
class ElsewhereDevice:
    """A MOR SIP device assigned to another server, found by peer name."""

    id: int
    name: str
    server_id: int


@dataclass(**_VALUE)
class WrongServer:
    """A device registered here although MOR assigns it to another server."""

    device_id: int
    assigned_server_id: int
    peer_name: str
    reg_status: str
    ip: Optional[str]
    port: Optional[int]


@dataclass(**_VALUE)
class Plan:
    """Everything one collector run should write, and nothing more."""

    reg_status_changes: tuple[tuple[int, Optional[str]], ...]
    state_changes: tuple[DeviceState, ...]
    counts: Mapping[str, int]
    unmatched_peers: tuple[Peer, ...]
    # kept states of devices no longer assigned to this server (deleted, re-homed)
    forgotten_device_ids: tuple[int, ...] = ()
    peers_listed: int = 0


def kind_of(reg_status: Optional[str]) -> str:
    """The bullet MOR's GUI draws for a stored ``reg_status`` (by its prefix rules)."""
    if not reg_status:
        return NONE
    if reg_status.startswith("OK"):
        return OK
    if reg_status.startswith("LAGGED"):
        return LAGGED
    if reg_status == "UNREACHABLE":
        return UNREACHABLE
    if reg_status == "UNKNOWN":
        return UNKNOWN
    if reg_status == "Unmonitored":
        return UNMONITORED
    return NONE


def latency_ms(reg_status: Optional[str]) -> Optional[int]:
    """The qualify round trip in ``OK (N ms)`` / ``LAGGED (N ms)``, else None."""
    match = _TIMED.match(reg_status or "")
    return int(match.group(2)) if match else None


def normalize_status(raw: str) -> str:
    """Asterisk's Status field as the GUI expects it.

    chan_sip only ever prints the five forms below; anything else (a garbled
    line, a future format) is stored as ``UNKNOWN`` rather than as a string the
    GUI could not colour.
    """
    value = raw.strip()
    if _TIMED.match(value) or value in ("UNREACHABLE", "UNKNOWN", "Unmonitored"):
        return sys.intern(value)  # a few hundred distinct strings for 100k peers
    return "UNKNOWN"


def parse_address(ip_field: str, port_field: str) -> tuple[Optional[str], Optional[int]]:
    """IP and port of a ``PeerEntry``; ``-none-`` and port 0 mean no address.

    Asterisk 1.8.0 put ``ip:port`` into ``IPaddress``; later versions split it.
    """
    ip = ip_field.strip()
    port_text = port_field.strip()
    if ip.startswith("[") and "]" in ip:  # [v6]:port
        host, _, rest = ip[1:].partition("]")
        ip = host
        if rest.startswith(":") and not port_text:
            port_text = rest[1:]
    elif ip.count(":") == 1:  # v4:port
        ip, _, embedded_port = ip.partition(":")
        if not port_text or port_text == "0":
            port_text = embedded_port
    if ip in ("", "-none-", "(null)", "0.0.0.0"):  # noqa: S104 - Asterisk's "no address"
        return None, None
    port = int(port_text) if port_text.isdigit() and int(port_text) > 0 else None
    return ip, port


def peer_from_fields(fields: Mapping[str, str]) -> Optional[Peer]:
    """A ``Peer`` from the fields of one ``PeerEntry`` (keys in any case).

    Asterisk spells the keys as below, so those are looked up first; a mapping
    with other spellings is lower-cased once. This runs once per peer.
    """
    if "ObjectName" not in fields:
        lowered = {key.lower(): value for key, value in fields.items()}
        fields = {
            "ObjectName": lowered.get("objectname", ""),
            "Status": lowered.get("status", ""),
            "IPaddress": lowered.get("ipaddress", ""),
            "IPport": lowered.get("ipport", ""),
        }
    name = fields.get("ObjectName", "").strip()
    if not name:
        return None
    ip, port = parse_address(fields.get("IPaddress", ""), fields.get("IPport", ""))
    return Peer(name=name, status=normalize_status(fields.get("Status", "")), ip=ip, port=port)


def effective_status(
    peer: Peer, previous: Optional[DeviceState], now: datetime, unknown_after: float
) -> tuple[str, Optional[datetime]]:
    """The string to store for a listed peer, and since when it is unreachable.

    A peer UNREACHABLE for ``unknown_after`` seconds or more shows UNKNOWN (the
    black bullet). UNKNOWN from Asterisk itself (a restart, an expired
    registration) keeps the unreachable clock running; anything else stops it.
    """
    earlier = previous.unreachable_since if previous else None
    if peer.status == "UNREACHABLE":
        since = earlier or now
        if now - since >= timedelta(seconds=unknown_after):
            return "UNKNOWN", since
        return "UNREACHABLE", since
    if peer.status == "UNKNOWN":
        return "UNKNOWN", earlier
    return peer.status, None


def plan_cycle(
    server_id: int,
    peers: Iterable[Peer],
    devices: Sequence[Device],
    states: Mapping[int, DeviceState],
    now: datetime,
    unknown_after: float,
) -> Plan:
    """Diff what Asterisk lists against what is stored for this server's devices.

    Only devices assigned to this server are considered (``devices`` holds no
    others); a device that Asterisk does not list gets NULL. Peers without a
    device here are returned as ``unmatched_peers`` for the wrong-server check.
    """
    # One entry per name; a list only for the rare names that several devices share.
    by_name: dict[str, Device] = {}
    shared_names: dict[str, list[Device]] = {}
    for device in devices:
        if device.name in by_name:
            shared_names.setdefault(device.name, [by_name[device.name]]).append(device)
        else:
            by_name[device.name] = device

    new_status: dict[int, Optional[str]] = {}
    new_states: dict[int, DeviceState] = {}
    unmatched: list[Peer] = []
    listed = 0
    for peer in peers:
        listed += 1
        single = by_name.get(peer.name)
        if single is None:
            unmatched.append(peer)
            continue
        for device in shared_names.get(peer.name) or (single,):
            reg_status, unreachable_since = effective_status(
                peer, states.get(device.id), now, unknown_after
            )
            new_status[device.id] = reg_status
            new_states[device.id] = _next_state(
                server_id,
                device.id,
                states.get(device.id),
                reg_status,
                unreachable_since,
                peer.ip,
                peer.port,
                now,
            )

    counts = dict.fromkeys(KINDS, 0)
    reg_changes: list[tuple[int, Optional[str]]] = []
    state_changes: list[DeviceState] = []
    for device in devices:
        if device.id not in new_status:
            new_status[device.id] = None
            new_states[device.id] = _next_state(
                server_id, device.id, states.get(device.id), None, None, None, None, now
            )
        value = new_status[device.id]
        counts[kind_of(value)] += 1
        if value != device.reg_status:
            reg_changes.append((device.id, value))
        state = new_states[device.id]
        if state != states.get(device.id):
            state_changes.append(state)

    return Plan(
        reg_status_changes=tuple(reg_changes),
        state_changes=tuple(state_changes),
        counts=counts,
        unmatched_peers=tuple(unmatched),
        forgotten_device_ids=tuple(sorted(set(states) - {device.id for device in devices})),
        peers_listed=listed,
    )


def _next_state(
    server_id: int,
    device_id: int,
    previous: Optional[DeviceState],
    reg_status: Optional[str],
    unreachable_since: Optional[datetime],
    ip: Optional[str],
    port: Optional[int],
    now: datetime,
) -> DeviceState:
    """The device's kept state after this run; equal to ``previous`` when nothing moved.

    ``since`` moves only when the bullet's colour changes (latency jitter is not
    a change of status); ``last_seen`` is written when the row is written for
    another reason while the device is seen, so a steady device costs no write.
    """
    kind = kind_of(reg_status)
    seen = kind in SEEN_KINDS and ip is not None
    if previous is None:
        return DeviceState(
            device_id=device_id,
            server_id=server_id,
            status=kind,
            since=now,
            last_seen=now if seen else None,
            unreachable_since=unreachable_since,
            ip=ip,
            port=port,
        )
    candidate = replace(
        previous,
        server_id=server_id,
        status=kind,
        since=previous.since if previous.status == kind else now,
        unreachable_since=unreachable_since,
        ip=ip if ip is not None else previous.ip,
        port=port if ip is not None else previous.port,
    )
    if candidate == previous:
        return previous
    return replace(candidate, last_seen=now if seen else previous.last_seen)


def wrong_server_records(
    unmatched: Iterable[Peer], elsewhere: Iterable[ElsewhereDevice], server_id: int
) -> list[WrongServer]:
    """Peers registered here whose device MOR assigns to another server."""
    by_name: dict[str, list[ElsewhereDevice]] = {}
    for device in elsewhere:
        if device.server_id != server_id:
            by_name.setdefault(device.name, []).append(device)
    records = []
    for peer in unmatched:
        for device in by_name.get(peer.name, ()):
            records.append(
                WrongServer(
                    device_id=device.id,
                    assigned_server_id=device.server_id,
                    peer_name=peer.name,
                    reg_status=peer.status,
                    ip=peer.ip,
                    port=peer.port,
                )
            )
    return records


def format_uptime(seconds: float) -> str:
    """Uptime in the words of Asterisk's ``core show uptime``: ``2 days, 3 hours, 4 minutes``."""
    remaining = max(0, int(seconds))
    parts = []
    for unit, size in (
        ("year", 31536000),
        ("week", 604800),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ):
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    return ", ".join(parts) if parts else "0 seconds"
