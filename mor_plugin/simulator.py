"""A protocol-faithful fake Asterisk Manager Interface (AMI) server.

It speaks just enough AMI for the collector, its tests, the demo and the
benchmarks: the banner, ``Login`` (plain and MD5 challenge), ``Logoff``,
``Ping``, ``CoreSettings``, ``CoreStatus``, ``SIPpeers`` and ``SIPshowpeer``,
byte for byte as chan_sip and manager.c of the chosen Asterisk version write
them (CRLF lines, an empty line after each message, ``ActionID`` echoed where
Asterisk echoes it, empty values with their trailing space). Fault switches
(:class:`Faults`) reproduce what breaks in the field: wrong credentials,
dropped or hung connections, slow lists, junk in the stream, a lying
``ListItems``, a missing ``PeerlistComplete``, Asterisk 21+ without chan_sip,
and a Ping that is never answered. Sessions that log in with system events get
chan_sip's ``PeerStatus`` events from :meth:`AmiSimulator.emit_peer_status`
(and :meth:`AmiSimulator.flap`); :meth:`AmiSimulator.drop_event_sessions` cuts
them.

Field names and orders were read from asterisk/asterisk at the tags named in
``_VERSIONS`` (``channels/chan_sip.c``: ``manager_sip_show_peers``,
``_sip_show_peers``, ``_sip_show_peer``; ``main/manager.c``:
``astman_send_response_full``, ``astman_send_list_complete_start_common``,
``process_message``, ``action_login``, ``action_ping``, ``action_coresettings``,
``action_corestatus``). Values that a client never interprets (codec lists,
session-timer settings, ...) are plausible defaults, not measured ones.

PJSIP (Asterisk 13+): :class:`SimEndpoint` values with several
:class:`SimContact` each answer ``PJSIPShowContacts`` (16+: ``ContactList``
events whose fields come in an order that differs per version, as sorcery's
hash order does), ``PJSIPShowEndpoints`` (``EndpointList``) and
``PJSIPShowEndpoint`` (``EndpointDetail`` ... ``ContactStatusDetail``), read from
``res/res_pjsip/pjsip_options.c``, ``location.c`` and ``pjsip_configuration.c``
at the same tags; :meth:`AmiSimulator.emit_contact_status` sends
``ContactStatus`` events (``main/stasis_endpoints.c``). 13-15 label a contact
without qualify ``Created``, 16+ ``NonQualified``.

It listens on loopback only: it answers to a well-known user and secret.
Run it with ``mor-ami-simulator`` or ``python -m mor_plugin.simulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Callable, NoReturn, Optional, TypeVar

from . import __version__

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class SimPeer:
    """One chan_sip peer as the simulator lists it."""

    name: str
    #: Exactly as chan_sip's ``peer_status()`` prints it: ``OK (N ms)``,
    #: ``LAGGED (N ms)``, ``UNREACHABLE``, ``UNKNOWN`` or ``Unmonitored``.
    status: str = "OK (20 ms)"
    #: ``None``: no address (never registered, or registration expired).
    ip: Optional[str] = None
    port: int = 0
    dynamic: bool = True
    description: str = ""
    #: Only ``SIPshowpeer`` shows it (``SIP-Useragent``).
    useragent: str = ""
    #: ``ACL: yes`` once the peer has a permit/deny list (MOR's devices always have one)
    acl: bool = False
    #: chan_sip prints ``Accountcode`` in PeerEntry (13+) always, in SIPshowpeer only when set
    accountcode: str = ""


@dataclass
class Faults:
    """Switches that make the simulator misbehave the way real servers do."""

    #: Every Login fails: after ``auth_fail_delay`` seconds ``Authentication
    #: failed``, then the server closes the socket (Asterisk sleeps 1 s).
    bad_auth: bool = False
    #: Close the TCP connection after N ``PeerEntry`` events of a list.
    drop_after: Optional[int] = None
    #: After N ``PeerEntry`` events send nothing more, keep the socket open.
    hang_after: Optional[int] = None
    #: Seconds of sleep between ``PeerEntry`` events.
    slow: float = 0.0
    #: Junk in the list stream: binary bytes, lines without ``": "``, a
    #: truncated ``PeerEntry``. Never counted in ``ListItems``.
    garbage: bool = False
    #: ``ListItems`` of ``PeerlistComplete`` is one more than was sent.
    wrong_count: bool = False
    #: All ``PeerEntry`` events, then no ``PeerlistComplete``, then close.
    no_complete: bool = False
    #: ``SIPpeers``/``SIPshowpeer`` are unknown commands (Asterisk 21+).
    no_chan_sip: bool = False
    #: How long a failed Login waits before answering.
    auth_fail_delay: float = 1.0
    #: ``Ping`` gets no answer at all; the connection stays open (a silent hang).
    no_pong: bool = False
    #: res_pjsip is not loaded: its manager actions are unknown commands.
    no_pjsip: bool = False


@dataclass
class SimContact:
    """One PJSIP contact (a registration of an AOR)."""

    uri: str
    #: 16+ labels: Reachable, Unreachable, Unknown, NonQualified (13-15 print Created)
    status: str = "Reachable"
    rtt_usec: int = 20000
    user_agent: str = ""
    via_addr: str = ""
    via_port: int = 0
    call_id: str = ""
    #: the AOR; None: the endpoint's name (MOR names both after the device)
    aor: Optional[str] = None
    qualify_frequency: int = 60
    #: the AOR's qualify_timeout in seconds
    qualify_timeout: float = 3.0


@dataclass
class SimEndpoint:
    """One PJSIP endpoint with its AOR's contacts."""

    name: str
    contacts: list[SimContact] = field(default_factory=list)


@dataclass(frozen=True)
class _Version:
    key: str
    rank: tuple[int, int]
    ami: str  # AMI_VERSION, the banner's and CoreSettings' AMIversion
    asterisk: str  # the release modelled, CoreSettings' AsteriskVersion
    chan_sip: bool


# AMI_VERSION verified per tag in include/asterisk/manager.h (main/manager.c
# for 1.4, which hard-codes "1.0" in the banner). chan_sip was removed in 21.
_VERSIONS = {
    v.key: v
    for v in (
        _Version("1.4", (1, 4), "1.0", "1.4.44", True),
        _Version("1.6", (1, 6), "1.1", "1.6.2.24", True),
        _Version("1.8", (1, 8), "1.1", "1.8.32.3", True),
        _Version("10", (10, 0), "1.2", "10.12.4", True),
        _Version("11", (11, 0), "1.3", "11.25.3", True),
        _Version("13", (13, 0), "2.10.6", "13.38.3", True),
        # 16 and 22: what Debian's packages answer (recorded in tests/data/ami)
        _Version("16", (16, 0), "5.0.4", "16.28.0~dfsg-0+deb11u4", True),
        _Version("18", (18, 0), "7.0.3", "18.24.2", True),
        _Version("20", (20, 0), "9.0.0", "20.10.0", True),
        _Version("21", (21, 0), "10.0.0", "21.10.2", False),
        _Version("22", (22, 0), "11.0.0", "22.10.1+dfsg+~cs6.17.60671434-1", False),
    )
}
#: The Asterisk versions the simulator can be.
VERSIONS = tuple(_VERSIONS)

# Canonical spelling of the actions we implement, so that ``actions`` counts
# "sippeers" and "SIPpeers" alike (AMI action names are case-insensitive).
_CANONICAL = {
    name.lower(): name
    for name in (
        "Login",
        "Logoff",
        "Challenge",
        "Ping",
        "SIPpeers",
        "SIPshowpeer",
        "CoreSettings",
        "CoreStatus",
        "PJSIPShowContacts",
        "PJSIPShowEndpoints",
        "PJSIPShowEndpoint",
    )
}

# The write classes each action needs (``ast_manager_register_xml``'s authority; one of
# them suffices). Asterisk authorises actions by the user's ``write``, not ``read``:
# a user with ``read = system,reporting`` and no write gets ``Permission denied``.
_SYSTEM_REPORTING = frozenset({"system", "reporting"})
_AUTHORITY = {
    "SIPpeers": _SYSTEM_REPORTING,
    "SIPshowpeer": _SYSTEM_REPORTING,
    "CoreSettings": _SYSTEM_REPORTING,
    "CoreStatus": _SYSTEM_REPORTING,
    "PJSIPShowContacts": frozenset({"system"}),
    "PJSIPShowEndpoints": frozenset({"system"}),
    "PJSIPShowEndpoint": frozenset({"system"}),
}

# Peers rendered and written per chunk: ~450 KB, few syscalls, bounded memory.
_CHUNK = 1000
_TIMED = re.compile(r"^(OK|LAGGED) \((\d+) ms\)$")


def _resolve_version(version: str) -> _Version:
    """Accept "11" as well as "11.25.3" or "1.8.32.3"."""
    if version in _VERSIONS:
        return _VERSIONS[version]
    parts = version.split(".")
    for key in (".".join(parts[:2]), parts[0]):
        if key in _VERSIONS:
            return _VERSIONS[key]
    raise ValueError(f"unsupported Asterisk version {version!r}; use one of {', '.join(VERSIONS)}")


def _peer_entry_template(v: _Version) -> str:
    """The body of one ``PeerEntry`` after its ActionID line, as a %-template.

    Arguments: name, IPaddress, IPport, Dynamic, ACL, Status, Description, Accountcode.
    """
    lines = [
        "Channeltype: SIP",
        "ObjectName: %s",
        "ChanObjectType: peer",
        # 1.8.0 printed "ip:port" here; 1.8.x later and all others the bare IP.
        "IPaddress: %s",
        "IPport: %s",
        "Dynamic: %s",
    ]
    if v.rank >= (11, 0):
        lines += ["AutoForcerport: no", "Forcerport: no", "AutoComedia: no", "Comedia: no"]
    elif v.rank >= (1, 8):
        lines.append("Forcerport: no")
    else:
        lines.append("Natsupport: no")
    lines.append("VideoSupport: no")
    if v.rank >= (1, 6):
        lines.append("TextSupport: no")
    # MOR loads its devices from realtime (rtcachefriends), hence "yes".
    lines += ["ACL: %s", "Status: %s", "RealtimeDevice: yes"]
    if v.rank >= (10, 0):
        lines.append("Description: %s")
    if v.rank >= (13, 0):
        # 13.13+; chan_sip prints "Accountcode: %s" even when it is empty.
        lines.append("Accountcode: %s")
    # "%.0s" swallows the arguments a version does not print: one code path, no output.
    tail = "" if v.rank >= (10, 0) else "%.0s"
    tail += "" if v.rank >= (13, 0) else "%.0s"
    return "".join(line + "\r\n" for line in lines) + "\r\n" + tail


def _message(*pairs: tuple[str, str]) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n").encode()


def _show_peer_fields(v: _Version, p: SimPeer) -> _Headers:
    """The manager branch of chan_sip's ``_sip_show_peer`` (SIPshowpeer)."""
    return _show_peer_account(v, p) + _show_peer_sip_options(v, p) + _show_peer_address(v, p)


def _registered(p: SimPeer) -> bool:
    return p.ip is not None and p.dynamic


_YN = {True: "Y", False: "N"}


def _show_peer_account(v: _Version, p: SimPeer) -> _Headers:
    """SIPshowpeer from ``Channeltype`` to ``Busy-level``: the peer's account settings."""
    f: _Headers = [
        ("Channeltype", "SIP"),
        ("ObjectName", p.name),
        ("ChanObjectType", "peer"),
        ("SecretExist", "Y"),
    ]
    if v.rank >= (1, 6):
        f.append(("RemoteSecretExist", "N"))
    f += [("MD5SecretExist", "N"), ("Context", "mor_local"), ("Language", "en")]
    if v.rank >= (11, 0):
        f.append(("ToneZone", "<Not set>"))
    if p.accountcode:
        f.append(("Accountcode", p.accountcode))
    f += [("AMAflags", "Unknown"), ("CID-CallingPres", "Presentation Allowed, Not Screened")]
    f += [("Callgroup", ""), ("Pickupgroup", "")]
    if v.rank >= (11, 0):
        f += [("Named Callgroup", ""), ("Named Pickupgroup", "")]
    if v.rank >= (1, 8):
        f.append(("MOHSuggest", ""))
    f += [("VoiceMailbox", ""), ("TransferMode", "open"), ("LastMsgsSent", "0")]
    if v.rank >= (1, 8):
        f.append(("Maxforwards", "70"))
    f.append(("Call-limit", "2147483647"))
    if v.rank >= (1, 6):
        f.append(("Busy-level", "0"))
    return f


def _show_peer_sip_options(v: _Version, p: SimPeer) -> _Headers:
    """SIPshowpeer from ``MaxCallBR`` to ``SIP-DTMFmode`` (1.4: ``SIPLastMsg``):
    registration and SIP options."""
    f: _Headers = [
        ("MaxCallBR", "384 kbps"),
        ("Dynamic", _YN[p.dynamic]),
        ("Callerid", ""),
        ("RegExpire", "3587 seconds" if _registered(p) else "-1 seconds"),
        ("SIP-AuthInsecure", "no"),
    ]
    if v.rank >= (1, 8):
        f.append(("SIP-Forcerport", "N"))
    else:
        f.append(("SIP-NatSupport", "RFC3581"))
    if v.rank >= (11, 0):
        f.append(("SIP-Comedia", "N"))
    f += [("ACL", _YN[p.acl]), ("SIP-CanReinvite", "N")]
    if v.rank >= (1, 6):
        f.append(("SIP-DirectMedia", "N"))
    f += [("SIP-PromiscRedir", "N"), ("SIP-UserPhone", "N"), ("SIP-VideoSupport", "N")]
    if v.rank >= (1, 6):
        f += [
            ("SIP-TextSupport", "N"),
            ("SIP-T.38Support", "N"),
            ("SIP-T.38EC", "Unknown"),
            ("SIP-T.38MaxDtgrm", "4294967295" if v.rank >= (1, 8) else "-1"),
            ("SIP-Sess-Timers", "Accept"),
            ("SIP-Sess-Refresh", "uas"),
            ("SIP-Sess-Expires", "1800"),
            ("SIP-Sess-Min", "90"),
        ]
    if v.rank >= (1, 8):
        f += [("SIP-RTP-Engine", "asterisk"), ("SIP-Encryption", "N")]
    if v.rank >= (13, 0):
        f.append(("SIP-RTCP-Mux", "N"))
    f.append(("SIP-DTMFmode", "rfc2833"))
    if v.rank < (1, 6):
        f.append(("SIPLastMsg", "0"))
    return f


def _show_peer_address(v: _Version, p: SimPeer) -> _Headers:
    """SIPshowpeer from ``ToHost`` to ``Description``: address, codecs, status, contact."""
    old = v.rank < (1, 8)  # sockaddr_in era: "" for no address, not "(null)"
    none_ip = "" if old else "(null)"
    f: _Headers = [
        ("ToHost", ""),
        ("Address-IP", p.ip if p.ip is not None else none_ip),
        ("Address-Port", str(p.port if p.ip is not None else 0)),
        ("Default-addr-IP", "0.0.0.0" if old else "(null)"),  # noqa: S104 - text, not a bind
        ("Default-addr-port", "0"),
        ("Default-Username", p.name if p.dynamic else ""),
        ("Codecs", "0xc (ulaw|alaw)" if v.rank < (10, 0) else "(ulaw|alaw)"),
    ]
    if v.rank < (13, 0):
        f.append(("CodecOrder", "ulaw,alaw"))
    contact = f"sip:{p.name}@{p.ip}:{p.port}" if _registered(p) else ""
    f += [
        ("Status", p.status),
        ("SIP-Useragent", p.useragent),
        # 1.4 really wrote a space before this colon.
        ("Reg-Contact " if v.rank < (1, 6) else "Reg-Contact", contact),
    ]
    if v.rank >= (1, 6):
        f += [("QualifyFreq", "60000 ms"), ("Parkinglot", "")]
    if v.rank >= (1, 8):
        f.append(("SIP-Use-Reason-Header", "N"))
    if v.rank >= (10, 0):
        f.append(("Description", p.description))
    return f


def _loopback_host(host: str) -> str:
    """``host`` if it is a loopback address (``localhost``: 127.0.0.1), else ValueError."""
    if host == "localhost":
        return "127.0.0.1"  # one socket, one port (localhost may also be ::1)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the AMI simulator listens on a loopback address only, not on {host}")
    return host


#: How long the simulated Asterisk has been up, unless told when it started.
_UPTIME = timedelta(days=3, hours=4, minutes=5)


class _Closed(Exception):
    """The client connection must end (Logoff, failed login, fault)."""


class _Session:
    """What one AMI connection has negotiated."""

    __slots__ = ("authenticated", "challenge", "events")

    def __init__(self) -> None:
        self.authenticated = False
        self.challenge = ""
        self.events = True


_Headers = list[tuple[str, str]]
_Handler = Callable[[_Session, _Headers, asyncio.StreamWriter], Awaitable[None]]


class AmiSimulator:
    """A fake Asterisk AMI server on 127.0.0.1 (asyncio).

    ``peers`` and ``faults`` may be replaced or mutated between client runs;
    ``logins`` and ``actions`` record what clients did.
    """

    def __init__(
        self,
        peers: Sequence[SimPeer] = (),
        *,
        version: str = "11",
        username: str = "mor",
        secret: str = "morsecret",  # noqa: S107 - the documented demo secret
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Optional[Faults] = None,
        endpoints: Sequence[SimEndpoint] = (),
        drift: bool = False,
        seed: int = 0,
        startup: Optional[datetime] = None,
        write: str = "all",
    ) -> None:
        self.host = _loopback_host(host)
        self._version = _resolve_version(version)
        self.version = self._version.key
        self.peers: list[SimPeer] = list(peers)
        #: PJSIP endpoints (Asterisk 13+); may be replaced or mutated between runs
        self.endpoints: list[SimEndpoint] = list(endpoints)
        self._index: dict[str, SimEndpoint] = {}
        self._index_key: Optional[tuple[int, int]] = None
        self.username = username
        self.secret = secret
        self.port = port
        self.faults = faults if faults is not None else Faults()
        #: the user's ``write`` classes in manager.conf ("all", "system,reporting", "" ...)
        self.write = write
        self.drift = drift
        #: when this Asterisk started (CoreStatus), local time; by default 3 days 4 h 5 min ago
        self.startup = startup or datetime.now().replace(microsecond=0) - _UPTIME
        #: Successful logins, failed logins, and every action received.
        self.logins = 0
        self.login_failures = 0
        self.actions: Counter[str] = Counter()
        #: Complete ``SIPpeers`` (and ``PJSIPShowContacts``) lists started so far.
        self.lists_served = 0
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self._server: Optional[asyncio.AbstractServer] = None
        self._stopping = False
        self._tasks: set[asyncio.Task[object]] = set()
        self._transports: set[asyncio.WriteTransport] = set()
        self._entry_template = _peer_entry_template(self._version)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        #: Connections whose login asked for system events (they get PeerStatus).
        self._event_writers: set[asyncio.StreamWriter] = set()
        #: PeerStatus events written, counted once per receiving session.
        self.events_sent = 0

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Listen; ``port`` holds the bound port afterwards."""
        if self._server is not None:
            return
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "AMI simulator (Asterisk %s) listening on %s:%d with %d peers",
            self._version.asterisk,
            self.host,
            self.port,
            len(self.peers),
        )

    async def stop(self) -> None:
        """Stop listening and close every client connection, hung ones too."""
        self._stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.abort()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if server is not None:
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("AMI simulator: listener did not close within 5 s")

    def set_status(self, name: str, status: str) -> None:
        """Change one peer's status (``KeyError`` if there is no such peer)."""
        for peer in self.peers:
            if peer.name == name:
                peer.status = status
                return
        raise KeyError(name)

    # -- PeerStatus events ---------------------------------------------------

    @property
    def event_sessions(self) -> int:
        """Open connections that receive system events."""
        return len(self._event_writers)

    def emit_peer_status(
        self,
        name: str,
        status: str,
        time_ms: Optional[int] = None,
        *,
        address: Optional[tuple[str, int]] = None,
        cause: Optional[str] = None,
    ) -> None:
        """Send chan_sip's ``PeerStatus`` event to every session with system events on,
        and update the peer's listed status the way chan_sip's state would move.

        ``status``: Registered, Unregistered, Reachable, Lagged, Unreachable or
        Rejected. ``time_ms=None`` leaves the ``Time`` line out (an event without
        Time); Asterisk 16 never writes one for Reachable and Lagged (only
        ``Unreachable`` carries ``Time: -1``, as recorded from 16.28), whatever
        ``time_ms`` says. ``address`` is the (ip, port) of Registered and Rejected;
        ``cause`` e.g. ``Expired`` for an Unregistered. Safe to call from any thread;
        the event is written on the simulator's loop.
        """
        self._in_loop(lambda: self._emit(name, status, time_ms, address, cause))

    def flap(self, name: str, changes: int, *, interval: float = 0.05, time_ms: int = 20) -> None:
        """Scripted flapping: ``changes`` events alternating Unreachable and Reachable,
        ``interval`` seconds apart, starting with Unreachable."""

        async def script() -> None:
            for i in range(changes):
                if i:
                    await asyncio.sleep(interval)
                if i % 2 == 0:
                    self._emit(name, "Unreachable", -1, None, None)
                else:
                    self._emit(name, "Reachable", time_ms, None, None)

        def start() -> None:
            task = asyncio.ensure_future(script())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._in_loop(start)

    def emit_contact_status(
        self, endpoint: str, uri: str, status: str, rtt_usec: Optional[int] = None
    ) -> None:
        """Send res_pjsip's ``ContactStatus`` event to every session with system events on,
        and move the listed contact the same way (a new URI is added, ``Removed`` drops it).

        When the change takes the endpoint online (its first available contact) or
        offline (its last), a ``PeerStatus`` event with ``ChannelType: PJSIP`` and
        ``Peer: PJSIP/<endpoint>`` (Reachable or Unreachable, no Time) comes first, as
        res_pjsip updates the endpoint's state before it publishes the contact's.
        Available: Reachable, or NonQualified on an AOR without qualify. A new contact
        that arrives NonQualified waits for its first qualify (not available); a known
        one that turns NonQualified had its qualify turned off (available).

        ``status``: Reachable, Unreachable, Unknown, NonQualified (``Created`` on 13-15),
        Removed or Updated. Safe to call from any thread.
        """
        self._in_loop(lambda: self._emit_contact(endpoint, uri, status, rtt_usec))

    def _emit_contact(self, name: str, uri: str, status: str, rtt_usec: Optional[int]) -> None:
        ep = next((e for e in self.endpoints if e.name == name), None)
        if ep is None:
            ep = SimEndpoint(name)
            self.endpoints.append(ep)
        contact = next((c for c in ep.contacts if c.uri == uri), None)
        was_online = _endpoint_online(ep)
        if status == "Removed":
            ep.contacts = [c for c in ep.contacts if c.uri != uri]
        elif contact is None:
            contact = SimContact(uri, status if status != "Updated" else "Unknown", rtt_usec or 0)
            ep.contacts.append(contact)
        elif status != "Updated":
            contact.status = status
            contact.rtt_usec = rtt_usec if status == "Reachable" and rtt_usec else 0
            if status == "NonQualified":  # a known contact no longer qualified: qualify is off
                contact.qualify_frequency = 0
        label = _contact_label(self._version, status)
        aor = (contact.aor if contact is not None else None) or name
        # ast_sip_persistent_endpoint_publish_contact_state(): rtt always, 0 when unknown
        pairs = [
            ("Event", "ContactStatus"),
            ("Privilege", "system,all"),
            ("URI", uri),
            ("ContactStatus", label),
            ("AOR", aor),
            ("EndpointName", name),
            ("RoundtripUsec", str(rtt_usec if status == "Reachable" and rtt_usec else 0)),
        ]
        data = _message(*pairs)
        online = _endpoint_online(ep)
        if online != was_online:
            data = (
                _message(
                    ("Event", "PeerStatus"),
                    ("Privilege", "system,all"),
                    ("ChannelType", "PJSIP"),
                    ("Peer", f"PJSIP/{name}"),
                    ("PeerStatus", "Reachable" if online else "Unreachable"),
                )
                + data
            )
        self._write_event(data, 2 if online != was_online else 1)

    def _write_event(self, data: bytes, events: int = 1) -> None:
        for writer in list(self._event_writers):
            if not writer.is_closing():
                writer.write(data)
                self.events_sent += events

    def drop_event_sessions(self) -> None:
        """Fault: cut the TCP connection of every session that receives events."""

        def drop() -> None:
            for writer in list(self._event_writers):
                writer.transport.abort()

        self._in_loop(drop)

    def _in_loop(self, work: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the AMI simulator is not running")
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            work()
        else:
            loop.call_soon_threadsafe(work)

    def _emit(
        self,
        name: str,
        status: str,
        time_ms: Optional[int],
        address: Optional[tuple[str, int]],
        cause: Optional[str],
    ) -> None:
        peer = next((p for p in self.peers if p.name == name), None)
        if peer is not None:
            _apply_peer_status(peer, status, time_ms, address)
        v = self._version
        pairs = [("Event", "PeerStatus"), ("Privilege", "system,all")]
        if v.rank >= (1, 6):
            pairs.append(("ChannelType", "SIP"))
        pairs += [("Peer", f"SIP/{name}"), ("PeerStatus", status)]
        if time_ms is not None and not (v.key == "16" and status in ("Reachable", "Lagged")):
            pairs.append(("Time", str(time_ms)))
        if cause is not None:
            pairs.append(("Cause", cause))
        if address is not None:
            if v.rank >= (1, 8):
                pairs.append(("Address", f"{address[0]}:{address[1]}"))
            else:
                pairs += [("Address", address[0]), ("Port", str(address[1]))]
        self._write_event(_message(*pairs))

    # -- connection ---------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        transport = writer.transport
        self._transports.add(transport)
        session = _Session()
        try:
            log.debug("AMI simulator: client %s connected", writer.get_extra_info("peername"))
            writer.write(f"Asterisk Call Manager/{self._version.ami}\r\n".encode())
            while True:
                headers = await _read_message(reader)
                if headers is None:  # the client is done: flush, then close
                    await _close(writer)
                if not headers:
                    continue
                await self._dispatch(session, headers, writer)
                await writer.drain()
        except _Closed:
            pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("AMI simulator: client connection ended: %r", exc)
        except asyncio.CancelledError:
            # stop() cancels us; ending normally spares asyncio's stream
            # callback (3.9-3.11) a "CancelledError" traceback on stderr.
            if not self._stopping:
                raise
        finally:
            self._event_writers.discard(writer)
            transport.abort()
            self._transports.discard(transport)
            if task is not None:
                self._tasks.discard(task)

    async def _dispatch(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        action = _header(headers, "action")
        if not action:
            writer.write(_error(headers, "Missing action in request"))
            return
        name = _CANONICAL.get(action.lower(), action)
        self.actions[name] += 1
        if not session.authenticated:
            if name == "Login":
                await self._login(session, headers, writer)
            elif name == "Challenge":
                await self._challenge(session, headers, writer)
            elif name == "Logoff":
                if v.rank < (1, 6):
                    writer.write(_response(headers, "Success", "See ya"))
                else:
                    writer.write(_response(headers, "Goodbye", "Thanks for all the fish."))
                await _close(writer)
            elif v.rank < (1, 6):
                writer.write(_error(headers, "Authentication Required"))
            else:
                writer.write(_error(headers, "Permission denied"))
            return
        handler = self._handlers().get(name)
        if handler is None:
            writer.write(_error(headers, self._unknown(action)))
            return
        if not self._may(name):
            writer.write(_error(headers, "Permission denied"))
            return
        await handler(session, headers, writer)

    def _may(self, action: str) -> bool:
        """Whether the user's write classes allow the action (process_message)."""
        needed = _AUTHORITY.get(action)
        if not needed:
            return True
        granted = {c.strip().lower() for c in self.write.split(",")}
        return "all" in granted or bool(granted & needed)

    def _handlers(self) -> dict[str, _Handler]:
        v = self._version
        table: dict[str, _Handler] = {
            "Login": self._login,
            "Logoff": self._logoff,
            "Challenge": self._challenge,
            "Ping": self._ping,
        }
        if v.chan_sip and not self.faults.no_chan_sip:
            table["SIPpeers"] = self._sippeers
            table["SIPshowpeer"] = self._sipshowpeer
        if v.rank >= (13, 0) and not self.faults.no_pjsip:
            table["PJSIPShowEndpoints"] = self._pjsip_show_endpoints
            table["PJSIPShowEndpoint"] = self._pjsip_show_endpoint
            if v.rank >= (16, 0):
                table["PJSIPShowContacts"] = self._pjsip_show_contacts
        if v.rank >= (1, 6):
            table["CoreSettings"] = self._coresettings
            table["CoreStatus"] = self._corestatus
        return table

    def _unknown(self, action: str) -> str:
        if self._version.rank < (1, 6):
            return "Invalid/unknown command"
        return (
            f"Invalid/unknown command: {action}. "
            "Use Action: ListCommands to show available commands."
        )

    # -- authentication -----------------------------------------------------

    async def _challenge(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        if (_header(headers, "authtype") or "").lower() != "md5":
            writer.write(_error(headers, "Must specify AuthType"))
            return
        if not session.challenge:
            session.challenge = str(self._rng.randrange(10**8, 10**9))
        pairs = [("Response", "Success")]
        pairs += _id(headers)
        pairs.append(("Challenge", session.challenge))
        writer.write(_message(*pairs))

    def _credentials_ok(self, session: _Session, headers: _Headers) -> bool:
        user = _header(headers, "username") or ""
        if user.lower() != self.username.lower() or self.faults.bad_auth:
            return False
        if (_header(headers, "authtype") or "").lower() == "md5":
            if not session.challenge:
                return False
            digest = hashlib.md5(
                (session.challenge + self.secret).encode(), usedforsecurity=False
            ).hexdigest()
            return (_header(headers, "key") or "").lower() == digest
        return _header(headers, "secret") == self.secret

    async def _login(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        if session.authenticated:
            if v.rank < (1, 6):
                writer.write(_response(headers, "Success", "Already logged in"))
                return
            if v.rank >= (1, 8):
                writer.write(_response(headers, "Success", "Already authenticated"))
                return
        if not self._credentials_ok(session, headers):
            self.login_failures += 1
            # Asterisk sleep(1)s before answering, to slow down guessing.
            await asyncio.sleep(self.faults.auth_fail_delay)
            writer.write(_error(headers, "Authentication failed"))
            await _close(writer)
        session.authenticated = True
        self.logins += 1
        session.events = _events_on(_header(headers, "events"))
        if session.events:
            self._event_writers.add(writer)
        writer.write(_response(headers, "Success", "Authentication accepted"))
        # 11+ send FullyBooted to sessions that receive system events; older
        # versions only with the non-default "sendfullybooted" option.
        if v.rank >= (11, 0) and session.events:
            pairs = [("Event", "FullyBooted"), ("Privilege", "system,all")]
            if v.rank >= (14, 0):
                now = datetime.now()
                up = str(max(0, int((now - self.startup).total_seconds())))
                pairs += [("Uptime", up), ("LastReload", up)]
            pairs.append(("Status", "Fully Booted"))
            writer.write(_message(*pairs))

    async def _logoff(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(_response(headers, "Goodbye", "Thanks for all the fish."))
        await _close(writer)

    # -- simple actions -----------------------------------------------------

    async def _ping(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        if self.faults.no_pong:
            return  # hung: the socket stays open, nothing comes back
        if v.rank < (1, 6):
            writer.write(_response(headers, "Pong", None))
            return
        pairs = [("Response", "Success")] + _id(headers) + [("Ping", "Pong")]
        if v.rank >= (1, 8):
            pairs.append(("Timestamp", f"{time.time():.6f}"))
        writer.write(_message(*pairs))

    async def _coresettings(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        pairs = [("Response", "Success")] + _id(headers)
        pairs += [
            ("AMIversion", v.ami),
            ("AsteriskVersion", v.asterisk),
            ("SystemName", ""),
            ("CoreMaxCalls", "0"),
            ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""),
            ("CoreRunGroup", ""),
            ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "Yes"),
            ("CoreCDRenabled", "Yes"),
            ("CoreHTTPenabled", "No"),
        ]
        if v.rank >= (18, 0):  # present in 18.24.2, 20.10.0, 21.x, 22.x
            pairs.append(("SoundsSearchCustomDir", "No"))
        writer.write(_message(*pairs))

    async def _corestatus(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        # Asterisk prints local time; ``startup`` is taken as local time.
        day, clock = self.startup.strftime("%Y-%m-%d"), self.startup.strftime("%H:%M:%S")
        pairs = [("Response", "Success")] + _id(headers)
        if self._version.rank >= (1, 8):
            pairs += [
                ("CoreStartupDate", day),
                ("CoreStartupTime", clock),
                ("CoreReloadDate", day),
                ("CoreReloadTime", clock),
            ]
        else:
            pairs += [("CoreStartupTime", clock), ("CoreReloadTime", clock)]
        pairs.append(("CoreCurrentCalls", "0"))
        if self._version.rank >= (22, 0):  # recorded from 22.10; later 20/21 releases unknown
            pairs.append(("CoreProcessedCalls", "0"))
        writer.write(_message(*pairs))

    # -- res_pjsip ------------------------------------------------------------

    def _listack(self, headers: _Headers, message: str) -> bytes:
        """astman_send_listack(): Response, ActionID, EventList: start, Message."""
        return _message(
            ("Response", "Success"), *_id(headers), ("EventList", "start"), ("Message", message)
        )

    def _list_complete(self, headers: _Headers, event: str, items: int) -> bytes:
        """astman_send_list_complete_start() + _end() (13.2+: ActionID second)."""
        return _message(
            ("Event", event), *_id(headers), ("EventList", "Complete"), ("ListItems", str(items))
        )

    async def _pjsip_show_contacts(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        if self.drift and self.lists_served:
            self._apply_contact_drift()
        self.lists_served += 1
        pairs = [(ep, c) for ep in self.endpoints for c in ep.contacts]
        if not pairs:
            # astman_send_error(s, m, "No Contacts found\n"): the LF stays in the message
            writer.write(_error(headers, "No Contacts found\n"))
            return
        pairs.sort(key=lambda pair: _contact_id(pair[1].aor or pair[0].name, pair[1].uri))
        writer.write(
            self._listack(headers, "A listing of Contacts follows, presented as ContactList events")
        )
        idtext = _idtext(headers)
        order = _contact_field_order(v)
        await _write_events(
            writer, pairs, lambda pair: _contact_list_event(v, order, idtext, *pair)
        )
        writer.write(self._list_complete(headers, "ContactListComplete", len(pairs)))

    async def _pjsip_show_endpoints(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        if not self.endpoints:
            writer.write(_error(headers, "No endpoints found\n"))
            return
        writer.write(
            self._listack(
                headers, "A listing of Endpoints follows, presented as EndpointList events"
            )
        )
        idtext = _idtext(headers)
        active = _active_channels(self._version)
        endpoints = _endpoint_list_order(self._version, self.endpoints)
        await _write_events(writer, endpoints, lambda ep: _endpoint_list_event(idtext, ep, active))
        writer.write(self._list_complete(headers, "EndpointListComplete", len(endpoints)))

    def _apply_contact_drift(self) -> None:
        """Move every reachable contact's round trip by up to 3 ms, as qualify results do."""
        rng = self._rng
        for ep in self.endpoints:
            for c in ep.contacts:
                if c.status == "Reachable":
                    c.rtt_usec = max(500, c.rtt_usec + rng.randint(-3000, 3000))

    def _endpoint_named(self, name: str) -> Optional[SimEndpoint]:
        """By name, through an index rebuilt when ``endpoints`` was replaced or resized."""
        key = (id(self.endpoints), len(self.endpoints))
        if self._index_key != key:
            self._index = {ep.name: ep for ep in self.endpoints}
            self._index_key = key
        ep = self._index.get(name)
        return ep if ep is not None and ep.name == name else None

    async def _pjsip_show_endpoint(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        name = _header(headers, "endpoint") or ""
        if not name:
            writer.write(_error(headers, "PJSIPShowEndpoint requires an endpoint name\n"))
            return
        if name.lower().startswith("pjsip/"):
            name = name[6:]
        ep = self._endpoint_named(name)
        if ep is None:
            writer.write(_error(headers, f"Unable to retrieve endpoint {name}\n"))
            return
        writer.write(
            self._listack(
                headers, "Following are Events for each object associated with the Endpoint"
            )
        )
        idtext = _idtext(headers)
        state = "Not in use" if ep.contacts else "Unavailable"
        # the AOR's list has no trailing comma (EndpointList's has one)
        contacts = ",".join(f"{c.aor or ep.name}/{c.uri}" for c in ep.contacts)
        frequency = ep.contacts[0].qualify_frequency if ep.contacts else 60
        # A few of each object's many fields (a client reads ContactStatusDetail only), in
        # the order a real 16.28 and 22.10 print them among the others; the empty Realm
        # and Password are the defaults (Asterisk 16 shows a set password in clear).
        parts = [
            "Event: EndpointDetail\r\n" + idtext + f"ObjectType: endpoint\r\nObjectName: {name}"
            f"\r\nAors: {name}\r\nContext: mor_local\r\nAllow: (ulaw|alaw)\r\nAuth: {name}"
            f"\r\nDtmfMode: rfc4733\r\nDeviceState: {state}\r\n"
            f"ActiveChannels: {_active_channels(v)}\r\n\r\n",
            "Event: AuthDetail\r\n" + idtext + f"ObjectType: auth\r\nObjectName: {name}\r\n"
            f"Username: {name}\r\nRealm: \r\nAuthType: userpass\r\nPassword: \r\n"
            f"EndpointName: {name}\r\n\r\n",
            "Event: AorDetail\r\n" + idtext + f"ObjectType: aor\r\nObjectName: {name}\r\n"
            f"MaxContacts: 5\r\nContacts: {contacts}\r\nQualifyFrequency: {frequency}\r\n"
            f"TotalContacts: {len(ep.contacts)}\r\nContactsRegistered: {len(ep.contacts)}\r\n"
            f"EndpointName: {name}\r\n\r\n",
        ]
        parts += [_contact_status_detail(v, idtext, ep, c) for c in ep.contacts]
        writer.write("".join(parts).encode("utf-8", "replace"))
        writer.write(self._list_complete(headers, "EndpointDetailComplete", len(parts)))

    # -- chan_sip -----------------------------------------------------------

    async def _sipshowpeer(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v = self._version
        wanted = _header(headers, "peer")
        # manager_sip_show_peer() appends "\r\n" (1.4: "\r\n\r\n") to whatever
        # _sip_show_peer() wrote: the end of a found peer's reply, or stray
        # blank lines after the already complete "not found" error.
        tail = b"\r\n\r\n" if v.rank < (1, 6) else b"\r\n"
        if not wanted:
            writer.write(_error(headers, "Peer: <name> missing."))
            return
        peer = next((p for p in self.peers if p.name == wanted), None)
        if peer is None:
            writer.write(_error(headers, f"Peer {wanted} not found.") + tail)
            return
        pairs = [("Response", "Success")] + _id(headers) + _show_peer_fields(v, peer)
        writer.write("".join(f"{k}: {val}\r\n" for k, val in pairs).encode() + tail)

    def _apply_drift(self) -> None:
        """Move every OK/LAGGED latency by a few ms, as qualify results do."""
        rng = self._rng
        for peer in self.peers:
            m = _TIMED.match(peer.status)
            if m is not None:
                ms = max(1, int(m.group(2)) + rng.randint(-3, 3))
                peer.status = f"{m.group(1)} ({ms} ms)"

    async def _sippeers(
        self, session: _Session, headers: _Headers, writer: asyncio.StreamWriter
    ) -> None:
        v, faults = self._version, self.faults
        if self.drift and self.lists_served:
            self._apply_drift()
        self.lists_served += 1
        idtext = _idtext(headers)

        if v.rank >= (1, 6):
            writer.write(
                _message(
                    ("Response", "Success"),
                    *_id(headers),
                    ("EventList", "start"),
                    ("Message", "Peer status list will follow"),
                )
            )
            # chan_sip >= 1.6 sorts by name with strcmp(); 1.4 walks its list.
            peers = sorted(self.peers, key=attrgetter("name"))  # UTF-8 order = code point order
        else:
            writer.write(_response(headers, "Success", "Peer status list will follow"))
            peers = list(self.peers)

        cut = len(peers)
        for limit in (faults.drop_after, faults.hang_after):
            if limit is not None:
                cut = min(cut, max(0, limit))
        sent = await self._stream_entries(peers[:cut], idtext, writer)

        if faults.hang_after is not None and (
            faults.drop_after is None or faults.hang_after <= faults.drop_after
        ):
            log.info("AMI simulator: hanging after %d PeerEntry events", sent)
            await writer.drain()
            await asyncio.Event().wait()  # until stop() cancels this task
        if faults.drop_after is not None or faults.no_complete:
            log.info("AMI simulator: closing after %d PeerEntry events", sent)
            await _close(writer)

        items = sent + 1 if faults.wrong_count else sent
        if v.rank >= (13, 0):  # 13.2+: ActionID second (astman_send_list_complete_start)
            complete = [("Event", "PeerlistComplete"), *_id(headers)]
            complete += [("EventList", "Complete"), ("ListItems", str(items))]
        elif v.rank >= (1, 6):
            complete = [("Event", "PeerlistComplete"), ("EventList", "Complete")]
            complete += [("ListItems", str(items)), *_id(headers)]
        else:
            complete = [("Event", "PeerlistComplete"), ("ListItems", str(items)), *_id(headers)]
        writer.write(_message(*complete))

    async def _stream_entries(
        self,
        peers: Sequence[SimPeer],
        idtext: str,
        writer: asyncio.StreamWriter,
    ) -> int:
        """Write one PeerEntry per peer; returns how many were written."""
        template = "Event: PeerEntry\r\n" + idtext.replace("%", "%%") + self._entry_template
        faults = self.faults
        junk = _garbage(idtext, len(peers)) if faults.garbage else {}
        step = 1 if faults.slow > 0 or junk else _CHUNK
        sent = 0
        for start in range(0, len(peers), step):
            batch = peers[start : start + step]
            text = "".join(
                [
                    template
                    % (
                        p.name,
                        p.ip if p.ip is not None else "-none-",
                        p.port if p.ip is not None else 0,
                        "yes" if p.dynamic else "no",
                        "yes" if p.acl else "no",
                        p.status,
                        p.description,
                        p.accountcode,
                    )
                    for p in batch
                ]
            )
            if start in junk:
                writer.write(junk[start])
            writer.write(text.encode("utf-8", "replace"))
            sent += len(batch)
            await writer.drain()
            if faults.slow > 0:
                await asyncio.sleep(faults.slow)
        if len(peers) in junk:
            writer.write(junk[len(peers)])
        return sent


# --- PJSIP ------------------------------------------------------------------------

#: The sorcery fields of a contact as ``ContactList`` prints them (after ObjectType and
#: ObjectName, before Status and RoundtripUsec), in the order a real Asterisk 16.28 printed
#: them (tests/data/ami/ast16-pjsipshowcontacts.txt): the hash order of the field container.
_CONTACT_FIELDS_16 = (
    "ViaAddr",
    "QualifyTimeout",
    "CallId",
    "RegServer",
    "PruneOnBoot",
    "Path",
    "Endpoint",
    "ViaPort",
    "AuthenticateQualify",
    "Uri",
    "QualifyFrequency",
    "UserAgent",
    "ExpirationTime",
    "OutboundProxy",
)
#: 22.10 adds qualify_2xx_only, which lands third (tests/data/ami/ast22-pjsipshowcontacts.txt)
_CONTACT_FIELDS_22 = (*_CONTACT_FIELDS_16[:2], "Qualify2xxOnly", *_CONTACT_FIELDS_16[2:])


def _contact_field_order(v: _Version) -> tuple[str, ...]:
    """sorcery prints an object's fields in the hash order of its field container, which
    changes when fields are added (22: ``qualify_2xx_only``): one fixed order per version.
    16 and 22 as recorded; 18-21 (not recorded) a fixed permutation of 16's, so that
    clients are kept parsing by key."""
    if v.rank >= (22, 0):
        return _CONTACT_FIELDS_22
    names = list(_CONTACT_FIELDS_16)
    if v.rank > (16, 0):
        random.Random(v.key).shuffle(names)  # noqa: S311 - a fixed permutation, not security
    return tuple(names)


def _active_channels(v: _Version) -> str:
    """An idle endpoint's ActiveChannels: empty on 16.28, ``0`` on 22.10 (both recorded)."""
    return "0" if v.rank >= (22, 0) else ""


def _str_hash(text: str) -> int:
    """Asterisk's ``ast_str_hash()`` (djb2 with xor), restricted to a non-negative int."""
    value = 5381
    for byte in text.encode():
        value = ((value * 33) ^ byte) & 0xFFFFFFFF
    return value & 0x7FFFFFFF


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _endpoint_list_order(v: _Version, endpoints: Sequence[SimEndpoint]) -> list[SimEndpoint]:
    """The order PJSIPShowEndpoints lists endpoints in. 22.10 sorts them by name. 16.28 (and
    the res_sorcery_config of 13) walks the hash container of pjsip.conf's endpoints: as
    many buckets as the largest prime not above their count, bucket by ``ast_str_hash``,
    in configuration order within a bucket (``endpoints`` stands for that order)."""
    if not (13, 0) <= v.rank < (17, 0):
        return sorted(endpoints, key=attrgetter("name"))
    buckets = len(endpoints)
    while buckets > 1 and not _is_prime(buckets):
        buckets -= 1
    buckets = max(1, buckets)
    order = sorted(range(len(endpoints)), key=lambda i: (_str_hash(endpoints[i].name) % buckets, i))
    return [endpoints[i] for i in order]


def _endpoint_online(ep: SimEndpoint) -> bool:
    """Whether res_pjsip counts the endpoint online: a contact is available."""
    return any(
        c.status == "Reachable" or (c.status == "NonQualified" and c.qualify_frequency == 0)
        for c in ep.contacts
    )


def _contact_label(v: _Version, status: str) -> str:
    """``ast_sip_get_contact_status_label()``: CREATED reads Created before 16."""
    if status == "NonQualified" and v.rank < (16, 0):
        return "Created"
    return status


def _contact_id(aor: str, uri: str) -> str:
    """A registered contact's sorcery id: ``<aor>;@<hash of the URI>``."""
    return f"{aor};@{hashlib.md5(uri.encode(), usedforsecurity=False).hexdigest()}"


def _contact_list_event(
    v: _Version, order: tuple[str, ...], idtext: str, ep: SimEndpoint, c: SimContact
) -> str:
    aor = c.aor or ep.name
    values = {
        "ViaAddr": c.via_addr,
        "ViaPort": str(c.via_port),
        "QualifyTimeout": f"{c.qualify_timeout:.6f}",
        "CallId": c.call_id,
        "RegServer": "",
        "PruneOnBoot": "no",
        "Path": "",
        "Endpoint": ep.name,
        "AuthenticateQualify": "no",
        "Uri": c.uri,
        "QualifyFrequency": str(c.qualify_frequency),
        "UserAgent": c.user_agent,
        "ExpirationTime": "1764410000",
        "OutboundProxy": "",
        "Qualify2xxOnly": "false",
    }
    rtt = str(c.rtt_usec) if c.status == "Reachable" else "N/A"
    return (
        "Event: ContactList\r\n"
        + idtext
        + f"ObjectType: contact\r\nObjectName: {_contact_id(aor, c.uri)}\r\n"
        + "".join(f"{name}: {values[name]}\r\n" for name in order)
        + f"Status: {_contact_label(v, c.status)}\r\nRoundtripUsec: {rtt}\r\n\r\n"
    )


def _endpoint_list_event(idtext: str, ep: SimEndpoint, active_channels: str) -> str:
    contacts = "".join(f"{c.aor or ep.name}/{c.uri}," for c in ep.contacts)
    state = "Not in use" if ep.contacts else "Unavailable"
    return (
        "Event: EndpointList\r\n"
        + idtext
        + f"ObjectType: endpoint\r\nObjectName: {ep.name}\r\n"
        + f"Transport: \r\nAor: {ep.name}\r\nAuths: {ep.name}\r\n"
        + f"OutboundAuths: \r\nContacts: {contacts}\r\n"
        + f"DeviceState: {state}\r\nActiveChannels: {active_channels}\r\n\r\n"
    )


def _contact_status_detail(v: _Version, idtext: str, ep: SimEndpoint, c: SimContact) -> str:
    """``ast_sip_format_contact_ami()``: fixed order; ViaAddress and CallID only when set."""
    aor = c.aor or ep.name
    lines = [("AOR", aor), ("URI", c.uri), ("UserAgent", c.user_agent), ("RegExpire", "1764410000")]
    if c.via_addr:
        lines.append(("ViaAddress", f"{c.via_addr}:{c.via_port}" if c.via_port else c.via_addr))
    if c.call_id:
        lines.append(("CallID", c.call_id))
    # 13: N/A only for Unknown; 16+: N/A for anything but Reachable
    shown = c.status == "Reachable" if v.rank >= (16, 0) else c.status != "Unknown"
    rtt = str(c.rtt_usec if c.status == "Reachable" else 0) if shown else "N/A"
    lines += [
        ("Status", _contact_label(v, c.status)),
        ("RoundtripUsec", rtt),
        ("EndpointName", ep.name),
        ("ID", _contact_id(aor, c.uri)),
        ("AuthenticateQualify", "0"),
        ("OutboundProxy", ""),
        ("Path", ""),
        ("QualifyFrequency", str(c.qualify_frequency)),
        ("QualifyTimeout", f"{c.qualify_timeout:.3f}"),
    ]
    if v.rank >= (22, 0):
        lines.append(("Qualify2xxOnly", "0"))
    return (
        "Event: ContactStatusDetail\r\n"
        + idtext
        + "".join(f"{k}: {val}\r\n" for k, val in lines)
        + "\r\n"
    )


def _apply_peer_status(
    peer: SimPeer, status: str, time_ms: Optional[int], address: Optional[tuple[str, int]]
) -> None:
    """Move a peer's listed state as chan_sip does on the event it announces."""
    latency = _TIMED.match(peer.status)
    known = int(latency.group(2)) if latency else None
    ms = time_ms if time_ms is not None and time_ms > 0 else known
    if status == "Reachable":
        peer.status = f"OK ({ms or 1} ms)"
    elif status == "Lagged":
        peer.status = f"LAGGED ({ms or 2001} ms)"
    elif status == "Unreachable":
        peer.status = "UNREACHABLE"
    elif status == "Unregistered":
        peer.ip, peer.port = None, 0
        if peer.status != "Unmonitored":
            peer.status = "UNKNOWN"  # no address: lastms 0
    elif status == "Registered" and address is not None:
        peer.ip, peer.port = address


def _garbage(idtext: str, count: int) -> dict[int, bytes]:
    """Junk blocks keyed by the entry index they precede."""
    binary = b"\x00\x01\xff\xfe\xc3\x28 binary\x80\x81 junk\x1b[0m\r\n\r\n"
    no_colon = b"this line has no separator\r\nAnotherJunkLine\r\nKey:NoSpace\r\n\r\n"
    # A PeerEntry cut off mid-key, as after a lost segment; the name is not a peer.
    half = (
        "Event: PeerEntry\r\n" + idtext + "Channeltype: SIP\r\nObjectName: garbage-half\r\nChanObje"
    ).encode() + b"\r\n\r\n"
    positions = [min(1, count), count // 2, max(0, count - 1)]
    out: dict[int, bytes] = {}
    for pos, blob in zip(positions, (binary, no_colon, half)):
        out[pos] = out.get(pos, b"") + blob
    return out


async def _write_events(
    writer: asyncio.StreamWriter, items: Sequence[T], event: Callable[[T], str]
) -> None:
    """One event per item, written ``_CHUNK`` at a time."""
    for start in range(0, len(items), _CHUNK):
        text = "".join([event(item) for item in items[start : start + _CHUNK]])
        writer.write(text.encode("utf-8", "replace"))
        await writer.drain()


async def _read_message(reader: asyncio.StreamReader) -> Optional[_Headers]:
    """Headers of the next client message (lower-cased keys), None at EOF."""
    headers: _Headers = []
    while True:
        raw = await reader.readline()
        if not raw:
            return None
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            return headers
        key, sep, value = line.partition(":")
        if sep:
            headers.append((key.strip().lower(), value.lstrip(" \t")))


def _header(headers: _Headers, key: str) -> Optional[str]:
    # Like astman_get_header with GET_HEADER_SKIP_EMPTY: first non-empty one.
    for k, value in headers:
        if k == key and value:
            return value
    return None


def _id(headers: _Headers) -> _Headers:
    action_id = _header(headers, "actionid")
    return [("ActionID", action_id)] if action_id else []


def _idtext(headers: _Headers) -> str:
    """The ActionID line Asterisk puts in each event of a list (``idtext``), or ""."""
    return "".join(f"{k}: {val}\r\n" for k, val in _id(headers))


def _response(headers: _Headers, response: str, message: Optional[str]) -> bytes:
    """astman_send_response(): Response, ActionID (if any), Message (if any)."""
    pairs = [("Response", response)] + _id(headers)
    if message is not None:
        pairs.append(("Message", message))
    return _message(*pairs)


def _error(headers: _Headers, message: str) -> bytes:
    return _response(headers, "Error", message)


def _events_on(value: Optional[str]) -> bool:
    """Whether a Login's ``Events:`` lets system events (FullyBooted) through."""
    if value is None:
        return True  # a session starts with every event class
    v = value.strip().lower()
    if v in ("on", "yes", "true", "y", "t", "1"):
        return True
    if v in ("off", "no", "false", "n", "f", "0", ""):
        return False
    return any(part.strip() in ("system", "all") for part in v.split(","))


async def _close(writer: asyncio.StreamWriter) -> NoReturn:
    """End the connection after what is buffered has reached the client."""
    writer.close()
    with suppress(ConnectionError, asyncio.TimeoutError):
        # Bounded: a client that stopped reading must not keep us here.
        await asyncio.wait_for(writer.wait_closed(), timeout=5)
    raise _Closed


@contextmanager
def run_in_thread(sim: AmiSimulator) -> Iterator[AmiSimulator]:
    """Run ``sim`` on its own event loop in a daemon thread (for sync tests).

    Yields once it listens (``sim.port`` set); stops it cleanly on exit.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(sim.start())
        except BaseException as exc:  # reported to the caller's thread
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=serve, name="ami-simulator", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("AMI simulator did not start within 10 s")
    if failure:
        raise failure[0]
    try:
        yield sim
    finally:
        try:
            asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(timeout=15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


_USERAGENTS = (
    "Yealink SIP-T46S 66.86.0.15",
    "Grandstream GXP1625 1.0.4.152",
    "Linksys/SPA942-6.1.5(a)",
    "Cisco/SPA504G-7.6.2f",
    "PolycomVVX-VVX_411-UA/6.4.3.5018",
    "Zoiper rv2.10.19.6",
    "MicroSIP/3.21.3",
    "Fanvil X4U 2.12.1",
)


def realistic_peers(n: int, *, seed: int = 0, prefix: str = "") -> list[SimPeer]:
    """``n`` peers with a deterministic, field-like mix of statuses.

    About 72 % OK with varied latency, 5 % LAGGED, 9 % UNREACHABLE, 8 %
    UNKNOWN without address, 6 % Unmonitored; a few static (provider) peers.
    Names are ``f"{prefix}{100000 + i}"``; addresses are only strings.
    """
    rng = random.Random(seed)  # noqa: S311 - simulation, not security
    peers: list[SimPeer] = []
    for i in range(n):
        roll = rng.random()
        if rng.random() < 0.6:
            ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        else:
            ip = f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        port = rng.randrange(5060, 5100)
        dynamic = rng.random() >= 0.02
        peer_ip: Optional[str] = ip
        if roll < 0.72:
            status = f"OK ({max(1, int(rng.lognormvariate(3.3, 0.8)))} ms)"
        elif roll < 0.77:
            status = f"LAGGED ({rng.randrange(2001, 4500)} ms)"
        elif roll < 0.86:
            status = "UNREACHABLE"
        elif roll < 0.94:
            status, peer_ip, port = "UNKNOWN", None, 0
        else:
            status = "Unmonitored"
            if rng.random() < 0.3:
                peer_ip, port = None, 0
        peers.append(
            SimPeer(
                name=f"{prefix}{100000 + i}",
                status=status,
                ip=peer_ip,
                port=port,
                dynamic=dynamic,
                description=f"Desk {i % 500}" if rng.random() < 0.1 else "",
                useragent=rng.choice(_USERAGENTS) if peer_ip is not None else "",
            )
        )
    return peers


def realistic_endpoints(n: int, *, seed: int = 0, prefix: str = "") -> list[SimEndpoint]:
    """``n`` PJSIP endpoints with the status mix of :func:`realistic_peers` (LAGGED ones
    answer slower than 2000 ms; those without an address have no contact) and about one
    in ten with a second contact (a softphone beside the desk phone)."""
    rng = random.Random(seed + 1)  # noqa: S311 - simulation, not security
    status_of = {"OK": "Reachable", "LAGGED": "Reachable", "UNREACHABLE": "Unreachable"}
    endpoints = []
    for peer in realistic_peers(n, seed=seed, prefix=prefix):
        ep = SimEndpoint(peer.name)
        if peer.ip is not None:
            m = _TIMED.match(peer.status)
            status = status_of.get(peer.status.split(" ")[0], "NonQualified")
            if peer.status == "UNKNOWN":
                status = "Unknown"
            ep.contacts.append(
                SimContact(
                    uri=f"sip:{peer.name}@{peer.ip}:{peer.port};transport=udp",
                    status=status,
                    rtt_usec=int(m.group(2)) * 1000 + rng.randrange(-400, 400) if m else 0,
                    user_agent=peer.useragent,
                    via_addr=peer.ip,
                    via_port=peer.port,
                    call_id=f"{rng.getrandbits(64):016x}@{peer.ip}",
                )
            )
            if rng.random() < 0.1:
                ep.contacts.append(
                    SimContact(
                        uri=f"sip:{peer.name}@10.99.{rng.randrange(256)}.7:5062;ob",
                        status=rng.choice(("Reachable", "Unreachable")),
                        rtt_usec=rng.randrange(5000, 90000),
                        user_agent="Zoiper rv2.10.19.6",
                        call_id=f"{rng.getrandbits(64):016x}",
                    )
                )
        endpoints.append(ep)
    return endpoints


async def _serve_forever(sim: AmiSimulator) -> None:
    await sim.start()
    endpoints = f" and {len(sim.endpoints)} PJSIP endpoints" if sim.endpoints else ""
    print(
        f"AMI simulator (Asterisk {sim.version}) listening on {sim.host}:{sim.port}"
        f" with {len(sim.peers)} peers{endpoints}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):  # not on this platform/thread
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mor-ami-simulator",
        description="A fake Asterisk Manager Interface for tests and demos. It serves chan_sip"
        " peers (SIPpeers, SIPshowpeer: Asterisk 1.4 to 20) and PJSIP endpoints"
        " (PJSIPShowEndpoints and PJSIPShowEndpoint from 13, PJSIPShowContacts from 16),"
        " each as the chosen Asterisk version answers it; 21 and 22 have no chan_sip, so"
        " their --peers are not listed.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=5038, help="TCP port, 0 for any free one (default %(default)s)"
    )
    parser.add_argument(
        "--peers", type=int, default=100, help="chan_sip peers (default %(default)s)"
    )
    parser.add_argument(
        "--endpoints",
        type=int,
        default=0,
        help="PJSIP endpoints, Asterisk 13 and later (default %(default)s)",
    )
    parser.add_argument(
        "--asterisk",
        default="11",
        metavar="VERSION",
        help=f"the Asterisk version to imitate: {', '.join(VERSIONS)}, or a release such as"
        " 16.28.0 (default %(default)s)",
    )
    parser.add_argument("--username", default="mor", help="AMI user (default %(default)s)")
    parser.add_argument("--secret", default="morsecret", help="AMI secret (default %(default)s)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the peers and their drift (default %(default)s)",
    )
    parser.add_argument(
        "--drift", action="store_true", help="latencies change between lists (default: fixed)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="log every connection (default: warnings only)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """``mor-ami-simulator``: serve a fake Asterisk AMI until Ctrl-C/SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        sim = AmiSimulator(
            realistic_peers(args.peers, seed=args.seed),
            version=args.asterisk,
            username=args.username,
            secret=args.secret,
            host=args.host,
            port=args.port,
            drift=args.drift,
            seed=args.seed,
            endpoints=realistic_endpoints(args.endpoints, seed=args.seed, prefix="pj"),
        )
    except ValueError as exc:
        print(f"mor-ami-simulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(_serve_forever(sim))
    except OSError as exc:
        print(
            f"mor-ami-simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
