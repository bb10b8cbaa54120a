"""The rules: from what Asterisk lists to what MOR's devices should show.

Pure functions over small frozen values, no I/O. The stored strings keep
Asterisk's exact format (``OK (23 ms)``, ``LAGGED (2345 ms)``, ``UNREACHABLE``,
``UNKNOWN``, ``Unmonitored``) because MOR's GUI colours a device by prefix.
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Optional, Union

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

#: The round trip's digits are ASCII and at most 9 (chan_sip's ``lastms`` is an int), so
#: the longest string, ``LAGGED (999999999 ms)``, fits ``devices.reg_status``.
_TIMED = re.compile(r"(OK|LAGGED) \(([0-9]{1,9}) ms\)")
#: The longest round trip a status carries, in ms.
MAX_MS = 999_999_999
#: An address as Asterisk prints one: an IPv4/IPv6 literal or a host name, ASCII only and
#: no longer than the address columns (45). Anything else (a NUL, a space, 300
#: characters) is no address.
_ADDRESS = re.compile(r"[0-9A-Za-z.:_-]{1,45}")
#: Control characters, which no text from Asterisk should bring into MOR's pages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_digits(text: str, max_digits: int = 10) -> Optional[int]:
    """``text`` as an int when it is 1 to ``max_digits`` ASCII digits ``0-9`` and nothing
    else (ten: any id of MOR's 32-bit columns), else None.

    ``int()`` also takes ``" 12"``, ``"+12"``, ``"1_2"`` and other scripts' digits
    (``"١٢"``), ``str.isdigit`` takes ``"²"`` (which ``int()`` then refuses), and a
    regular expression ending in ``$`` also matches before a final newline.
    """
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def ascii_int(text: str, low: int, high: int) -> Optional[int]:
    """``text`` (spaces around it aside) as an int when it is plain ASCII digits within
    ``low..high``, else None. Every number that Asterisk (or a peer) sends goes through
    here: a 20-digit port would not fit any column."""
    value = plain_digits(text.strip(), 19)
    return value if value is not None and low <= value <= high else None


def clean_text(text: str) -> str:
    """``text`` without control characters (a NUL or a line break from the wire)."""
    return text if text.isprintable() else _CONTROL.sub("", text)


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
    #: ``devices.qualify``; read by the event listener only (the poll reads Asterisk's view).
    qualify: Optional[str] = None


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
    #: >= flap_changes transitions within flap_window, and since when.
    flapping: bool = False
    flapping_since: Optional[datetime] = None
    #: When what the row says was observed (the poll's list or the event); the writer
    #: whose observation is older leaves the device alone.
    observed_at: Optional[datetime] = None


@dataclass(**_VALUE)
class Transition:
    """A change of a device's bullet colour (one ``mor_regstatus_history`` row)."""

    device_id: int
    server_id: int
    at: datetime
    from_status: str
    to_status: str
    reg_status: Optional[str]
    latency_ms: Optional[int]
    source: str  # "poll" or "event"


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
    transitions: tuple[Transition, ...] = ()
    #: device_id, ms, device_id, ms, ... of every OK/LAGGED device when the caller asked
    #: for latency samples (a flat array: 100k pairs as tuples would cost ~8 MB)
    latency_samples: Sequence[int] = ()
    #: ids of the devices the poll left alone because a newer observation (an event) is
    #: stored: their rows, contacts included, are the newer writer's
    left_alone: frozenset[int] = frozenset()
    #: observations ignored because what is stored is newer: the poll's devices left
    #: alone, or an event batch's (event, device) pairs
    skipped_newer: int = 0


def observed_later(state: Optional[DeviceState], at: datetime) -> bool:
    """Whether ``state`` holds an observation newer than one made at ``at``. The last
    observation wins: whoever observed earlier leaves the device alone."""
    return state is not None and state.observed_at is not None and state.observed_at > at


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
    match = _TIMED.fullmatch(reg_status or "")
    return int(match.group(2)) if match else None


def normalize_status(raw: str) -> str:
    """Asterisk's Status field as the GUI expects it.

    chan_sip only ever prints the five forms below; anything else (a garbled
    line, a future format) is stored as ``UNKNOWN`` rather than as a string the
    GUI could not colour.
    """
    value = raw.strip()
    if _TIMED.fullmatch(value) or value in ("UNREACHABLE", "UNKNOWN", "Unmonitored"):
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
    if ip in ("", "-none-", "(null)", "0.0.0.0") or not _ADDRESS.fullmatch(ip):  # noqa: S104
        return None, None  # Asterisk's "no address", or something that is none
    return ip, ascii_int(port_text, 1, 65535)


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
    *,
    recent_counts: Optional[Mapping[int, int]] = None,
    flap: Optional[FlapRule] = None,
    sample_latency: bool = False,
) -> Plan:
    """Diff what Asterisk lists (observed at ``now``) against what is stored for this
    server's devices, the only ones in ``devices``: an unlisted device gets NULL, one with
    a newer stored observation (an event) is left alone, a peer of no device here is
    unmatched (for the wrong-server check). ``recent_counts`` holds each device's stored
    transitions within ``flap.window`` before ``now`` (counts, not times: an outage moves
    30 % of 100k devices); with ``flap`` the plan also sets and clears the flapping flag."""
    # one pass, no per-device maps besides the plan: 100k devices are most of a run's memory
    peer_by_name, listed = _peers_by_name(peers)
    counts = dict.fromkeys(KINDS, 0)
    reg_changes: list[tuple[int, Optional[str]]] = []
    state_changes: list[DeviceState] = []
    transitions: list[Transition] = []
    samples = array("q")
    left_alone: list[int] = []
    with_state = 0
    for device in devices:
        previous = states.get(device.id)
        with_state += previous is not None
        if observed_later(previous, now):
            left_alone.append(device.id)
            counts[kind_of(device.reg_status)] += 1
            continue
        peer = peer_by_name.get(device.name)
        value, state, transition = _poll_step(
            server_id, device, peer, previous, now, unknown_after, recent_counts, flap
        )
        counts[state.status] += 1
        if value != device.reg_status:
            reg_changes.append((device.id, value))
        if transition is not None:
            transitions.append(transition)
        if state != previous:
            state_changes.append(state)
        ms = latency_ms(value) if sample_latency else None  # OK and LAGGED have one
        if ms is not None:
            samples.extend((device.id, ms))
    return Plan(
        reg_status_changes=tuple(reg_changes),
        state_changes=tuple(state_changes),
        counts=counts,
        unmatched_peers=_unmatched(peer_by_name, devices),
        forgotten_device_ids=_forgotten(states, devices) if with_state != len(states) else (),
        peers_listed=listed,
        transitions=tuple(transitions),
        latency_samples=samples,
        left_alone=frozenset(left_alone),
        skipped_newer=len(left_alone),
    )


def _peers_by_name(peers: Iterable[Peer]) -> tuple[dict[str, Peer], int]:
    """The listed peers by name (the last of a name wins), and how many were listed."""
    by_name: dict[str, Peer] = {}
    listed = 0
    for peer in peers:
        listed += 1
        by_name[peer.name] = peer
    return by_name, listed


def _unmatched(peer_by_name: Mapping[str, Peer], devices: Sequence[Device]) -> tuple[Peer, ...]:
    """The listed peers that no device of this server is named after."""
    names = {device.name for device in devices}
    return tuple(peer for name, peer in peer_by_name.items() if name not in names)


def _forgotten(states: Mapping[int, DeviceState], devices: Sequence[Device]) -> tuple[int, ...]:
    """Ids of kept states whose device is no longer this server's (deleted, re-homed);
    usually none, so the caller asks only when fewer devices than states had one."""
    return tuple(sorted(set(states) - {device.id for device in devices}))


def _poll_step(
    server_id: int,
    device: Device,
    peer: Optional[Peer],
    previous: Optional[DeviceState],
    now: datetime,
    unknown_after: float,
    recent_counts: Optional[Mapping[int, int]],
    flap: Optional[FlapRule],
) -> tuple[Optional[str], DeviceState, Optional[Transition]]:
    """One device after the poll: the string to store (None: not listed), its kept
    state, and the transition when its bullet changed colour."""
    if peer is None:
        value: Optional[str] = None
        state = _next_state(server_id, device.id, previous, None, None, None, None, now)
    else:
        value, unreachable_since = effective_status(peer, previous, now, unknown_after)
        state = _next_state(
            server_id, device.id, previous, value, unreachable_since, peer.ip, peer.port, now
        )
    transition = None
    if previous is not None and previous.status != state.status:
        transition = _transition(previous, state, value, now, "poll")
    was_flapping = previous is not None and previous.flapping
    if flap is not None and (transition is not None or was_flapping):
        count = (recent_counts or {}).get(device.id, 0) + (transition is not None)
        state = flap_set(state, count >= flap.changes, now)
    return value, state, transition


def _transition(
    previous: DeviceState, state: DeviceState, reg_status: Optional[str], at: datetime, source: str
) -> Transition:
    return Transition(
        device_id=state.device_id,
        server_id=state.server_id,
        at=at,
        from_status=previous.status,
        to_status=state.status,
        reg_status=reg_status,
        latency_ms=latency_ms(reg_status),
        source=source,
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
    a change of status); ``last_seen`` and ``observed_at`` are written when the
    row is written for another reason, so a steady device costs no write.
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
            observed_at=now,
        )
    if (
        previous.status == kind
        and previous.server_id == server_id
        and previous.unreachable_since == unreachable_since
        and (ip is None or (ip == previous.ip and port == previous.port))
    ):
        return previous  # the common case, checked without building a copy
    return replace(
        previous,
        server_id=server_id,
        status=kind,
        since=previous.since if previous.status == kind else now,
        unreachable_since=unreachable_since,
        ip=ip if ip is not None else previous.ip,
        port=port if ip is not None else previous.port,
        last_seen=now if seen else previous.last_seen,
        observed_at=now,
    )


# --- flapping -------------------------------------------------------------------


@dataclass(**_VALUE)
class FlapRule:
    """``changes`` transitions or more within ``window`` make a device flap."""

    changes: int = 4
    window: timedelta = timedelta(minutes=10)


def is_flapping(times: Iterable[datetime], now: datetime, rule: FlapRule) -> bool:
    """Whether the transitions at ``times`` put ``rule.changes`` or more into the window
    ending at ``now`` (a transition exactly ``window`` ago has left it)."""
    start = now - rule.window
    return sum(1 for at in times if start < at <= now) >= rule.changes


def flap_update(
    state: DeviceState, stored: Iterable[datetime], moved: bool, now: datetime, rule: FlapRule
) -> DeviceState:
    """``state`` with its flapping flag for the stored transition times, plus one at
    ``now`` when the device has just ``moved``. ``reg_status`` is never touched."""
    times = list(stored)
    if moved:
        times.append(now)
    return flap_set(state, is_flapping(times, now, rule), now)


def flap_set(state: DeviceState, flapping: bool, now: datetime) -> DeviceState:
    """``state`` flagged (since ``now``, or since it started) or cleared."""
    if flapping == state.flapping:
        return state
    return replace(state, flapping=flapping, flapping_since=now if flapping else None)


# --- PeerStatus events --------------------------------------------------------------

#: chan_sip's ``PeerStatus`` values (``manager_event(EVENT_FLAG_SYSTEM, "PeerStatus", ...)``).
EVENT_STATUSES = frozenset(
    {"Registered", "Unregistered", "Reachable", "Lagged", "Unreachable", "Rejected"}
)
#: chan_sip's default qualify limit (``qualify=yes``).
DEFAULT_MAXMS = 2000


@dataclass(**_VALUE)
class PeerEvent:
    """One ``PeerStatus`` event for a SIP peer, as the listener received it."""

    name: str  # without the "SIP/" prefix
    status: str  # one of EVENT_STATUSES
    at: datetime  # when it was received (UTC): its observation time
    time_ms: Optional[int] = None  # the qualify round trip; None when absent or -1
    ip: Optional[str] = None  # Registered only
    port: Optional[int] = None


@dataclass(**_VALUE)
class KnownStatus:
    """An observation that brings the device's string itself, so no event rule applies:
    Asterisk's answer to ``SIPshowpeer``, or a PJSIP device's contacts combined after a
    ``ContactStatus`` event (mor_plugin.pjsip)."""

    name: str  # the device (peer, endpoint) name
    at: datetime  # when it was observed (UTC)
    reg_status: Optional[str]  # in chan_sip's format; None: no contact left (NULL)
    source: str  # what said it, "SIPshowpeer" or "ContactStatus"
    ip: Optional[str] = None
    port: Optional[int] = None


#: What the event listener applies to a device (``plan_events``).
Observation = Union[PeerEvent, KnownStatus]


def peer_event_from_fields(fields: Mapping[str, str], at: datetime) -> Optional[PeerEvent]:
    """A ``PeerEvent`` from the fields of one ``Event: PeerStatus`` (keys in any case).

    Returns None for other channel types (IAX2, PJSIP), unknown statuses and
    malformed events. ``Address`` is ``ip:port`` from Asterisk 1.8 on, ``Address``
    plus ``Port`` before.
    """
    lowered = {key.lower(): value.strip() for key, value in fields.items()}
    peer = lowered.get("peer", "")
    channel_type = lowered.get("channeltype", "SIP")
    prefix, slash, name = peer.partition("/")
    if not slash or prefix.upper() != "SIP" or channel_type.upper() != "SIP" or not name:
        return None
    status = lowered.get("peerstatus", "")
    if status not in EVENT_STATUSES:
        return None
    time_text = lowered.get("time", "")
    time_ms = ascii_int(time_text, 1, MAX_MS)
    ip = port = None
    if status == "Registered" and lowered.get("address"):
        ip, port = parse_address(lowered["address"], lowered.get("port", ""))
    return PeerEvent(name=name, status=status, at=at, time_ms=time_ms, ip=ip, port=port)


def needs_peer_lookup(event: Observation) -> bool:
    """Whether the event leaves the status string unknown, so that Asterisk must be asked
    for it (``SIPshowpeer``): a Reachable/Lagged without ``Time``, and a Registered,
    whose qualify answer follows without an event of its own. A ``KnownStatus`` never
    does: it brings the string."""
    if isinstance(event, KnownStatus):
        return False
    if event.status in ("Reachable", "Lagged"):
        return event.time_ms is None
    return event.status == "Registered"


def qualify_limit(qualify: Optional[str]) -> Optional[int]:
    """chan_sip's ``maxms`` for ``devices.qualify``: None when qualify is off."""
    value = (qualify or "").strip().lower()
    if value in ("no", "0", "false", "off", "n"):
        return None
    number = ascii_int(value, 0, MAX_MS)
    if number is not None:
        return number or None  # chan_sip: a limit of 0 is qualify off
    return DEFAULT_MAXMS  # "yes" (and anything MOR did not write) is chan_sip's default


def event_status(
    status: str, time_ms: Optional[int], qualify: Optional[str], stored: Optional[str]
) -> Optional[str]:
    """What chan_sip's ``peer_status()`` prints after a ``PeerStatus`` event; None: unchanged.

    * ``Reachable``/``Lagged``: ``OK (N ms)``/``LAGGED (N ms)`` with ``Time``. Without
      ``Time`` (chan_sip's Reachable after Unreachable carries none) unchanged: no
      figure is made up; the listener asks Asterisk for the peer's status instead
      (``needs_peer_lookup``).
    * ``Unreachable``: ``UNREACHABLE`` (the hour rule to UNKNOWN applies later).
    * ``Registered``: qualify off: ``Unmonitored``. Qualify on: a device not
      seen before (NULL, or Unmonitored) reads ``UNKNOWN`` -- chan_sip knows an
      address but no qualify answer yet (``lastms`` 0); otherwise unchanged, the
      qualify answer follows as its own event.
    * ``Unregistered`` (expired or unregistered): qualify off ``Unmonitored``,
      else ``UNKNOWN`` (chan_sip clears the address and ``lastms``).
    * ``Rejected`` (failed authentication): unchanged -- the registered device
      keeps its status; a stranger's bad password must not change it.
    """
    limit = qualify_limit(qualify)
    if status in ("Reachable", "Lagged"):
        if time_ms is None or time_ms <= 0:
            return None
        return f"OK ({time_ms} ms)" if status == "Reachable" else f"LAGGED ({time_ms} ms)"
    if status == "Unreachable":
        return "UNREACHABLE"
    if status == "Registered":
        if limit is None:
            return "Unmonitored"
        return "UNKNOWN" if kind_of(stored) in (NONE, UNMONITORED) else None
    if status == "Unregistered":
        return "Unmonitored" if limit is None else "UNKNOWN"
    return None


def plan_events(
    server_id: int,
    observations: Sequence[Observation],
    devices: Sequence[Device],
    states: Mapping[int, DeviceState],
    unknown_after: float,
    *,
    recent_times: Optional[Mapping[int, Sequence[datetime]]] = None,
    flap: Optional[FlapRule] = None,
    not_before: Optional[datetime] = None,
) -> Plan:
    """Apply a batch of observations, in order, to this server's devices with those names,
    by the poll's rules (chan_sip's strings, the hour rule). An observation older than what
    is stored is ignored: older than the last poll's list (``not_before``: that poll saw
    every device after it) or than the device's own ``observed_at``. A device it changes
    gets its time as ``observed_at``, so that a poll whose list is older leaves it alone.
    ``recent_times`` holds each device's stored transition times within ``flap.window``
    before the batch; with ``flap`` the plan also sets and clears the flapping flag.
    ``counts`` stays empty: the counts are the poll's.
    """
    by_name = devices_by_name(devices)
    original = {device.id: device.reg_status for device in devices}
    current = dict(original)
    current_states: dict[int, DeviceState] = {}
    times: dict[int, list[datetime]] = {}
    transitions: list[Transition] = []
    skipped = 0
    for observation in observations:
        at = observation.at
        for device in by_name.get(observation.name, ()):
            previous = current_states.get(device.id) or states.get(device.id)
            if (not_before is not None and at < not_before) or observed_later(previous, at):
                skipped += 1
                continue
            reading = _reading(observation, device, current[device.id], previous, unknown_after)
            if reading is None:
                continue
            stored = times.setdefault(device.id, list((recent_times or {}).get(device.id, ())))
            state, transition = _event_step(
                server_id, device, previous, current[device.id], observation, reading, stored, flap
            )
            if transition is not None:
                transitions.append(transition)
            current[device.id] = reading[0]
            current_states[device.id] = state
    return Plan(
        reg_status_changes=tuple(
            (device_id, value)
            for device_id, value in current.items()
            if value != original[device_id]
        ),
        state_changes=tuple(
            state for device_id, state in current_states.items() if state != states.get(device_id)
        ),
        counts={},
        unmatched_peers=(),
        transitions=tuple(transitions),
        skipped_newer=skipped,
    )


def devices_by_name(devices: Iterable[Device]) -> dict[str, list[Device]]:
    """The devices by name; MOR may hold several devices of one name."""
    by_name: dict[str, list[Device]] = {}
    for device in devices:
        by_name.setdefault(device.name, []).append(device)
    return by_name


def _reading(
    observation: Observation,
    device: Device,
    reg_status: Optional[str],
    previous: Optional[DeviceState],
    unknown_after: float,
) -> Optional[tuple[Optional[str], Optional[datetime]]]:
    """The string ``observation`` gives a device whose string is ``reg_status``, and since
    when the device is unreachable; None when it changes nothing."""
    if isinstance(observation, KnownStatus):
        raw = observation.reg_status
        if raw is None:
            return None, None  # no contact left: NULL, as for a peer the poll does not list
    else:
        raw = event_status(observation.status, observation.time_ms, device.qualify, reg_status)
        if raw is None:
            if observation.ip is None:
                return None
            # only the address is new: the string and the unreachable clock stay
            return reg_status, previous.unreachable_since if previous else None
    return effective_status(Peer(observation.name, raw), previous, observation.at, unknown_after)


def _event_step(
    server_id: int,
    device: Device,
    previous: Optional[DeviceState],
    reg_status_before: Optional[str],
    observation: Observation,
    reading: tuple[Optional[str], Optional[datetime]],
    stored_times: list[datetime],
    flap: Optional[FlapRule],
) -> tuple[DeviceState, Optional[Transition]]:
    """One device after one observation: its kept state, and the transition when its
    bullet changed colour. ``stored_times`` (its transition times) gains this one."""
    reg_status, unreachable_since = reading
    at = observation.at
    ip: Optional[str] = observation.ip
    port = observation.port
    if ip is None:
        ip, port = (previous.ip, previous.port) if previous else (None, None)
    state = _next_state(server_id, device.id, previous, reg_status, unreachable_since, ip, port, at)
    transition = None
    if previous is not None and previous.status != state.status:
        transition = _transition(previous, state, reg_status, at, "event")
    if flap is not None and (transition is not None or state.flapping):
        state = flap_update(state, stored_times, transition is not None, at, flap)
        if transition is not None:
            stored_times.append(at)
    if reg_status != reg_status_before or (previous is not None and state != previous):
        state = replace(state, observed_at=at)
    return state, transition


# --- notifications ------------------------------------------------------------------

#: Bullets that alert, and those that end an alert.
DOWN_KINDS = frozenset({UNREACHABLE, UNKNOWN})
UP_KINDS = frozenset({OK, LAGGED})


def alert_of(kind: str) -> Optional[str]:
    """``"down"``, ``"up"`` or None (Unmonitored, no status: nothing to say)."""
    if kind in DOWN_KINDS:
        return "down"
    if kind in UP_KINDS:
        return "up"
    return None


@dataclass(**_VALUE)
class Notified:
    """What was last sent for a device (``mor_regstatus_notified``)."""

    device_id: int
    last_status: str
    last_sent: datetime
    window_start: datetime
    sent_in_window: int


def should_notify(
    previous: Optional[Notified], kind: str, now: datetime, window: timedelta
) -> bool:
    """Whether a device now showing ``kind`` earns a message.

    Only a change between down (UNREACHABLE/UNKNOWN) and up (OK/LAGGED) counts;
    the first message for a device is a "down". At most one message per
    ``window``: a flapping device sends one, and when its window has passed the
    poll (or the listener's heartbeat) sends where it ended up, if that differs.
    """
    alert = alert_of(kind)
    if alert is None:
        return False
    if previous is None:
        return alert == "down"
    if alert_of(previous.last_status) == alert:
        return False
    return now - previous.last_sent >= window


def notified_after(
    previous: Optional[Notified], device_id: int, kind: str, now: datetime, window: timedelta
) -> Notified:
    """The dampening row after a message about ``kind`` was sent at ``now``."""
    if previous is None or now - previous.window_start >= window:
        return Notified(device_id, kind, now, now, 1)
    return Notified(device_id, kind, now, previous.window_start, previous.sent_in_window + 1)


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
