"""Asterisk Manager Interface: log in, list the SIP peers, read version and uptime.

Built on panoramisk, with three things panoramisk does not do by itself:

* hard timeouts: panoramisk never times out, so every await here has one;
* no retries: a refused login or a dropped connection fails the run at once
  (panoramisk would reconnect and log in again forever);
* streaming: ``SIPpeers`` entries are parsed as they arrive instead of being
  kept in the action's list of messages (100k peers would cost ~500 MB); so are
  PJSIP's contact lists (``PJSIPShowContacts`` on 16+; ``PJSIPShowEndpoints`` plus
  one pipelined ``PJSIPShowEndpoint`` per endpoint with contacts on 13-15).

``peer_source`` picks the channel driver: ``sip`` (chan_sip's ``SIPpeers``),
``pjsip``, ``both`` (a server running both drivers; a missing one is skipped) or
``auto`` (``SIPpeers``, and PJSIP when Asterisk does not know ``SIPpeers`` --
Asterisk 21+ or chan_sip not loaded -- or when chan_sip lists no peer at all).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import logging
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, Protocol, TypeVar

from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from .pjsip import Contact, contact_from_fields
from .status import Peer, ascii_int, format_uptime, normalize_status, peer_from_fields

log = logging.getLogger(__name__)
#: Every AMI message, at DEBUG level only when mor.conf says ``debug = 1``.
wire_log = logging.getLogger("mor_plugin.ami.wire")

T = TypeVar("T")


class AmiError(Exception):
    """A failed AMI conversation; ``str()`` is one line that says what to fix."""


class AmiAuthError(AmiError):
    """Asterisk refused the login."""


class NoChanSipError(AmiError):
    """Asterisk has no chan_sip (``SIPpeers`` is an unknown command: Asterisk 21 and later)."""


class NoPjsipError(AmiError):
    """Asterisk has no res_pjsip (its manager actions are unknown commands)."""


#: The values of mor.conf's ``peer_source``.
PEER_SOURCES = ("auto", "sip", "pjsip", "both")


@dataclass(frozen=True)
class AmiEndpoint:
    host: str
    port: int
    username: str
    secret: str
    connect_timeout: float = 5.0
    timeout: float = 10.0
    list_timeout: float = 60.0


@dataclass(frozen=True)
class ServerInfo:
    """What ``CoreSettings`` and ``CoreStatus`` say; None where Asterisk did not say."""

    ami_version: Optional[str]
    asterisk_version: Optional[str]
    uptime: Optional[str]


@dataclass(frozen=True)
class PeerList:
    #: chan_sip's peers (empty when chan_sip was not read)
    peers: list[Peer]
    info: ServerInfo
    #: every PJSIP contact; None when PJSIP was not read
    contacts: Optional[list[Contact]] = None
    #: the drivers read: "sip", "pjsip" or "sip+pjsip"
    source: str = "sip"


class _Protocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's AMI protocol with a fast path for the entries of a running peer list.

    panoramisk turns every message into a case-insensitive ``Message`` before
    routing it; for 100k ``PeerEntry`` events that is most of the run's AMI
    time. While a ``SIPpeers`` list runs, its entries are split into fields here
    and handed straight to the list; every other message takes panoramisk's path.
    """

    peer_list: Optional[_PeerListAction] = None
    stream: Optional[_PjsipStream] = None
    version: Optional[str]  # set by panoramisk on connect; the banner's AMI version

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # One decoder for the whole connection: TCP splits the stream anywhere, also
        # inside a character, and a chunk decoded on its own would lose it (the name no
        # longer matches; its device would be blanked). Bytes that are not UTF-8 at all
        # become U+FFFD, visibly, instead of vanishing.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def data_received(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if self.version is None and text.startswith("Asterisk Call Manager/"):
            self.version = text.partition("\r\n")[0].partition("/")[2].strip()
        if self.queue:
            text = self.queue.popleft() + text
        blocks = text.split("\r\n\r\n")
        self.queue.append(blocks.pop())  # an incomplete message waits for more data
        for block in blocks:
            block = block.strip()
            if wire_log.isEnabledFor(logging.DEBUG):
                wire_log.debug("received %r", _SECRET_LINE.sub(r"\1: ***", block))
            peer_list = self.peer_list
            if peer_list is not None and block.startswith("Event: PeerEntry"):
                peer_list.add_entry(_fields(block))
                continue
            stream = self.stream
            if stream is not None and stream.take(block):
                continue
            message = Message.from_line(block)
            if message is not None:
                self.handle_message(message)


#: Lines of an answer that carry a credential: PJSIPShowEndpoint lists each auth object
#: with its password in clear (Asterisk 16), and the wire log must not keep it.
_SECRET_LINE = re.compile(r"(?im)^(password|secret|md5cred): [^\r\n]*")


def _fields(block: str) -> dict[str, str]:
    fields = {}
    for line in block.split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep:
            fields[key] = value
    return fields


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager without its reconnect loop and keep-alive pings."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.closed_by_peer: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        # A failed connect is reported to whoever awaits the task; never retry it.
        if f.cancelled() or f.exception() is not None:
            return
        super().connection_made(f)
        pinger = getattr(self, "pinger", None)
        if pinger is not None:
            pinger.cancel()
            self.pinger = None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._connected = False
        if not self.closed_by_peer.done():
            self.closed_by_peer.set_result(None)


class _PeerListAction(Action):  # type: ignore[misc]
    """``SIPpeers`` whose ``PeerEntry`` events are parsed as they arrive, not kept."""

    def __init__(self) -> None:
        super().__init__({"Action": "SIPpeers"})
        self.peers: list[Peer] = []
        self.first: Optional[Mapping[str, str]] = None
        self.complete: Optional[Mapping[str, str]] = None
        self.received = 0
        self.last_activity = time.monotonic()

    def add_entry(self, fields: Mapping[str, str]) -> None:
        self.last_activity = time.monotonic()
        self.received += 1
        peer = peer_from_fields(fields)
        if peer is not None:
            self.peers.append(peer)

    def add_message(self, message: Any) -> bool:
        """panoramisk's hook for the messages carrying this action's ActionID."""
        self.last_activity = time.monotonic()
        if self.first is None:
            self.first = message
            if message.get("Response", "") != "Success":
                self.future.set_result(message)
                return True
            return False
        event = message.get("Event", "")
        if event == "PeerEntry":
            self.add_entry(message)
            return False
        if event == "PeerlistComplete":
            self.complete = message
            if not self.future.done():
                self.future.set_result(message)
            return True
        return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


async def _wait(manager: _Manager, awaitable: Awaitable[T], timeout: float, what: str) -> T:
    """Await an AMI answer; fail on timeout or on the connection closing first."""
    future = asyncio.ensure_future(awaitable)
    waiting: set[asyncio.Future[Any]] = {future, manager.closed_by_peer}
    done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if future in done:
        return future.result()
    future.cancel()
    if manager.closed_by_peer in done:
        raise AmiError(f"Asterisk closed the AMI connection while waiting for {what}")
    raise AmiError(f"no answer from Asterisk within {timeout:g} s while waiting for {what}")


def _send(manager: _Manager, action: Mapping[str, str] | Action) -> Awaitable[Any]:
    if wire_log.isEnabledFor(logging.DEBUG):
        shown = {k: ("***" if k.lower() == "secret" else v) for k, v in dict(action).items()}
        wire_log.debug("sent %r", shown)
    return manager.send_action(action)  # type: ignore[no-any-return]


async def _connect(endpoint: AmiEndpoint) -> _Manager:
    loop = asyncio.get_running_loop()
    manager = _Manager(
        protocol_factory=_Protocol,
        host=endpoint.host,
        port=endpoint.port,
        loop=loop,
        events="off",
        ping_delay=3600,
        log=wire_log,
    )
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        await asyncio.wait_for(manager.connect(), endpoint.connect_timeout)
    except asyncio.TimeoutError:
        raise AmiError(
            f"cannot connect to Asterisk AMI at {where} within {endpoint.connect_timeout:g} s"
        ) from None
    except OSError as err:
        raise AmiError(
            f"cannot connect to Asterisk AMI at {where}: {err.strerror or err} "
            "-- is Asterisk running and manager.conf enabled?"
        ) from None
    return manager


async def _login(manager: _Manager, endpoint: AmiEndpoint, events: str = "off") -> None:
    login = {
        "Action": "Login",
        "Username": endpoint.username,
        "Secret": endpoint.secret,
        "Events": events,
    }
    answer = await _wait(manager, _send(manager, login), endpoint.timeout, "the login answer")
    if answer.get("Response", "") != "Success":
        reason = _one_line(answer.get("Message", ""))
        if "shutting down" in reason.lower():  # a restart, not a wrong secret: try again
            raise AmiError(f"Asterisk refused the AMI login: {reason}")
        raise AmiAuthError(
            f"Asterisk refused AMI login for user {endpoint.username!r}: "
            f"{_one_line(answer.get('Message', 'no reason given'))} "
            "-- check ami_username/ami_secret or manager.conf"
        )


async def _server_info(manager: _Manager, endpoint: AmiEndpoint) -> ServerInfo:
    """Version and uptime; an Asterisk too old (1.4) or a user without rights gives None."""
    version = uptime = None
    try:
        settings = await _wait(
            manager, _send(manager, {"Action": "CoreSettings"}), endpoint.timeout, "CoreSettings"
        )
        if settings.get("Response", "") == "Success":
            version = settings.get("AsteriskVersion", "").strip() or None
        status = await _wait(
            manager, _send(manager, {"Action": "CoreStatus"}), endpoint.timeout, "CoreStatus"
        )
        if status.get("Response", "") == "Success":
            uptime = uptime_from_core_status(status, datetime.now())
    except AmiError as err:
        log.warning("no Asterisk version/uptime: %s", err)
    ami_version = getattr(manager.protocol, "version", None)
    return ServerInfo(ami_version=ami_version, asterisk_version=version, uptime=uptime)


def uptime_from_core_status(fields: Mapping[str, str], now: datetime) -> Optional[str]:
    """``CoreStartupDate``/``CoreStartupTime`` (Asterisk's local time) as an uptime text."""
    date = fields.get("CoreStartupDate", "").strip()
    clock = fields.get("CoreStartupTime", "").strip()
    try:
        started = datetime.strptime(f"{date} {clock}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return format_uptime((now - started).total_seconds())


async def _sip_peers(manager: _Manager, endpoint: AmiEndpoint) -> list[Peer]:
    action = _PeerListAction()
    manager.protocol.peer_list = action
    try:
        _send(manager, action)
        await _await_stream(manager, endpoint, action, "the SIPpeers list", "PeerlistComplete")
    finally:
        manager.protocol.peer_list = None
    _check_list(endpoint, action)
    return action.peers


def _not_permitted(endpoint: AmiEndpoint, action: str) -> AmiError:
    """Asterisk refused an action: it authorises actions by the user's *write* classes
    (``read`` only decides which events the user gets)."""
    return AmiError(
        f"AMI user {endpoint.username!r} may not run {action} "
        "-- Asterisk authorises actions by the user's write classes: give it "
        "'write = system,reporting' in manager.conf"
    )


def _check_list(endpoint: AmiEndpoint, action: _PeerListAction) -> None:
    """A refused or inconsistent list fails the run."""
    first = action.first or {}
    if first.get("Response", "") != "Success":
        message = _one_line(first.get("Message", ""))
        if "invalid/unknown command" in message.lower():
            raise NoChanSipError(
                "Asterisk does not know SIPpeers: chan_sip is not loaded "
                "(removed in Asterisk 21) -- set peer_source = auto or pjsip in mor.conf"
            )
        if "permission denied" in message.lower():
            raise _not_permitted(endpoint, "SIPpeers")
        raise AmiError(f"SIPpeers failed: {message or 'no reason given'}")
    complete = action.complete or {}
    listed = complete.get("ListItems", "").strip()
    if listed and ascii_int(listed, 0, 2**31) != action.received:
        raise AmiError(
            f"SIPpeers list is inconsistent: Asterisk announced ListItems {listed} "
            f"but sent {action.received} peers"
        )


# --- PJSIP ----------------------------------------------------------------------

#: PJSIPShowEndpoint actions in flight at once (13-15): enough to keep Asterisk busy,
#: few enough that a slow server is not flooded.
PJSIP_WINDOW = 32


@dataclass
class _PjsipList:
    """One list action of the PJSIP stream and what came back for it."""

    action: str
    endpoint: str = ""
    first: Optional[dict[str, str]] = None
    complete: Optional[dict[str, str]] = None
    items: int = 0
    done: bool = False


class _PjsipStream:
    """The PJSIP list actions of one run, written and read here, not by panoramisk.

    Every message carrying one of this stream's ActionIDs (the second line of
    every response and list event) is taken out of panoramisk's path: list
    events are parsed as they arrive (only ``ContactList``, ``ContactStatusDetail``
    and ``EndpointList``; the other detail events of ``PJSIPShowEndpoint`` are
    counted and dropped) and no message is kept.
    """

    def __init__(self, write: Callable[[bytes], None], loop: asyncio.AbstractEventLoop) -> None:
        self.prefix = f"mor-pjsip-{os.getpid()}-{id(self):x}-"
        self._marker = "\r\nActionID: " + self.prefix
        self._write = write
        self._loop = loop
        self._ids = itertools.count(1)
        self.lists: dict[str, _PjsipList] = {}
        self.contacts: list[Contact] = []
        #: endpoints whose EndpointList names at least one contact (13-15)
        self.with_contacts: list[str] = []
        self.received = 0
        self.last_activity = time.monotonic()
        self.future: asyncio.Future[None] = loop.create_future()
        self._queue: deque[str] = deque()
        self._in_flight = 0

    def send(self, action: str, endpoint: str = "") -> str:
        action_id = f"{self.prefix}{next(self._ids)}"
        self.lists[action_id] = _PjsipList(action, endpoint)
        text = f"Action: {action}\r\nActionID: {action_id}\r\n"
        if endpoint:
            text += f"Endpoint: {endpoint}\r\n"
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("sent %r", text)
        self._write((text + "\r\n").encode("utf-8"))
        return action_id

    def phase(self) -> None:
        """Start waiting for the lists sent next."""
        self.future = self._loop.create_future()
        self.last_activity = time.monotonic()

    def show_endpoints(self, names: list[str]) -> None:
        """``PJSIPShowEndpoint`` for each name, at most PJSIP_WINDOW in flight."""
        self._queue.extend(names)
        self._pump()
        self._maybe_done()

    def _pump(self) -> None:
        while self._queue and self._in_flight < PJSIP_WINDOW:
            self._in_flight += 1
            self.send("PJSIPShowEndpoint", self._queue.popleft())

    def _maybe_done(self) -> None:
        if self._queue or self._in_flight or self.future.done():
            return
        if all(state.done for state in self.lists.values()):
            self.future.set_result(None)

    def _finish(self, state: _PjsipList) -> None:
        state.done = True
        if state.action == "PJSIPShowEndpoint":
            self._in_flight -= 1
            self._pump()
        self._maybe_done()

    def take(self, block: str) -> bool:
        """Handle ``block`` if it carries one of this stream's ActionIDs."""
        at = block.find(self._marker, 0, 200)
        if at < 0:
            return False
        start = at + 12
        end = block.find("\r\n", start)
        state = self.lists.get(block[start:] if end < 0 else block[start:end])
        if state is None or state.done:
            return True
        self.last_activity = time.monotonic()
        first_line = block[: block.find("\r\n")]
        if first_line.startswith("Response:"):
            state.first = _fields(block)
            if state.first.get("Response", "").strip() != "Success":
                self._finish(state)
            return True
        event = first_line[7:].strip()
        if event == "ContactList" or event == "ContactStatusDetail":
            state.items += 1
            self.received += 1
            contact = contact_from_fields(_fields(block), state.endpoint)
            if contact is not None:
                self.contacts.append(contact)
        elif event == "EndpointList":
            state.items += 1
            self.received += 1
            self._endpoint_entry(block)
        elif event.endswith("Complete"):
            state.complete = _fields(block)
            self._finish(state)
        return True

    def _endpoint_entry(self, block: str) -> None:
        name, has_contacts = "", False
        for line in block.split("\r\n"):
            if line.startswith("ObjectName: "):
                name = line[12:].strip()
            elif line.startswith("Contacts: ") and line[10:].strip(" ,"):
                has_contacts = True  # one "Contacts:" line per AOR: "aor/uri,aor/uri,"
        if name and has_contacts:
            self.with_contacts.append(name)


class _Streaming(Protocol):
    """A list being received: its end, its entries so far, when the last one came."""

    future: asyncio.Future[Any]
    received: int
    last_activity: float


async def _await_stream(
    manager: _Manager, endpoint: AmiEndpoint, stream: _Streaming, what: str, end: str
) -> None:
    """Wait for a list's ``end`` event: ``list_timeout`` in all, ``timeout`` of silence."""
    deadline = time.monotonic() + endpoint.list_timeout
    while not stream.future.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AmiError(
                f"{what} not complete within {endpoint.list_timeout:g} s "
                f"({stream.received} entries received) -- raise ami_list_timeout for large servers"
            )
        silent_for = time.monotonic() - stream.last_activity
        if silent_for >= endpoint.timeout:
            raise AmiError(
                f"Asterisk went silent for {endpoint.timeout:g} s in the middle of {what} "
                f"({stream.received} entries received)"
            )
        done, _ = await asyncio.wait(
            {stream.future, manager.closed_by_peer},
            timeout=min(remaining, max(0.01, endpoint.timeout - silent_for)),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if manager.closed_by_peer in done and not stream.future.done():
            raise AmiError(
                f"Asterisk closed the AMI connection in the middle of {what} "
                f"({stream.received} entries received, no {end})"
            )


def _pjsip_refusal(endpoint: AmiEndpoint, state: _PjsipList) -> Optional[str]:
    """None when the list action succeeded; else Asterisk's message, or an AmiError."""
    first = state.first or {}
    if first.get("Response", "").strip() == "Success":
        complete = state.complete or {}
        listed = complete.get("ListItems", "").strip()
        if state.action != "PJSIPShowEndpoint" and listed and listed != str(state.items):
            raise AmiError(
                f"{state.action} list is inconsistent: Asterisk announced ListItems {listed} "
                f"but sent {state.items} entries"
            )
        return None
    message = _one_line(first.get("Message", ""))
    if "permission denied" in message.lower():
        raise _not_permitted(endpoint, state.action)
    return message or "no reason given"


async def _pjsip_contacts(manager: _Manager, endpoint: AmiEndpoint) -> list[Contact]:
    """Every PJSIP contact: ``PJSIPShowContacts`` (16+), else (13-15) ``PJSIPShowEndpoints``
    and ``PJSIPShowEndpoint`` for each endpoint that has contacts."""
    stream = _PjsipStream(manager.protocol.transport.write, asyncio.get_running_loop())
    manager.protocol.stream = stream
    try:
        first = stream.send("PJSIPShowContacts")
        await _await_stream(
            manager, endpoint, stream, "the PJSIPShowContacts list", "ContactListComplete"
        )
        refused = _pjsip_refusal(endpoint, stream.lists[first])
        if refused is None or "no contacts found" in refused.lower():
            return stream.contacts
        if "invalid/unknown command" not in refused.lower():
            raise AmiError(f"PJSIPShowContacts failed: {refused}")
        # Asterisk 13-15: no PJSIPShowContacts
        stream.phase()
        listing = stream.send("PJSIPShowEndpoints")
        await _await_stream(
            manager, endpoint, stream, "the PJSIPShowEndpoints list", "EndpointListComplete"
        )
        refused = _pjsip_refusal(endpoint, stream.lists[listing])
        if refused is not None:
            if "no endpoints found" in refused.lower():
                return []
            if "invalid/unknown command" in refused.lower():
                raise NoPjsipError(
                    "Asterisk does not know PJSIPShowEndpoints: res_pjsip is not loaded"
                )
            raise AmiError(f"PJSIPShowEndpoints failed: {refused}")
        stream.phase()
        stream.show_endpoints(stream.with_contacts)
        await _await_stream(
            manager, endpoint, stream, "the PJSIPShowEndpoint answers", "EndpointDetailComplete"
        )
        for state in stream.lists.values():
            if state.action == "PJSIPShowEndpoint":
                refused = _pjsip_refusal(endpoint, state)
                if refused is not None:  # removed since it was listed
                    log.debug("PJSIPShowEndpoint %s: %s", state.endpoint, refused)
        return stream.contacts
    finally:
        manager.protocol.stream = None


async def _read_sources(
    manager: _Manager, endpoint: AmiEndpoint, source: str
) -> tuple[list[Peer], Optional[list[Contact]], str]:
    """chan_sip's peers and/or PJSIP's contacts, as ``source`` says."""
    peers: list[Peer] = []
    contacts: Optional[list[Contact]] = None
    used = []
    if source in ("sip", "auto", "both"):
        try:
            peers = await _sip_peers(manager, endpoint)
            used.append("sip")
        except NoChanSipError:
            if source == "sip":
                raise
            log.debug("no chan_sip on this Asterisk; reading PJSIP")
    # auto: chan_sip absent, or loaded but empty (16-20 load it by default even where every
    # device moved to PJSIP)
    if source in ("pjsip", "both") or not used or (source == "auto" and not peers):
        try:
            contacts = await _pjsip_contacts(manager, endpoint)
            used.append("pjsip")
        except NoPjsipError as err:
            if not used:
                raise NoPjsipError(
                    f"{err} and chan_sip is not loaded either -- nothing to read"
                    if source != "pjsip"
                    else f"{err} -- set peer_source = sip or auto in mor.conf"
                ) from None
            if source == "both":
                log.warning("peer_source = both, but %s; chan_sip only", err)
    return peers, contacts, "+".join(used)


async def _logoff(manager: _Manager) -> None:
    with contextlib.suppress(asyncio.TimeoutError, OSError, AttributeError):
        await asyncio.wait_for(asyncio.shield(_send(manager, {"Action": "Logoff"})), 1.0)


async def fetch_peer_list(endpoint: AmiEndpoint, source: str = "sip") -> PeerList:
    """One AMI conversation: login, version and uptime, the SIP peer list and/or the PJSIP
    contacts (``source``: one of PEER_SOURCES), logoff."""
    manager = await _connect(endpoint)
    try:
        await _login(manager, endpoint)
        info = await _server_info(manager, endpoint)
        peers, contacts, used = await _read_sources(manager, endpoint, source)
        if not manager.closed_by_peer.done():
            await _logoff(manager)
        return PeerList(peers=peers, info=info, contacts=contacts, source=used)
    finally:
        manager.close()


async def open_event_session(
    endpoint: AmiEndpoint, on_event: Callable[[Mapping[str, str]], None]
) -> _Manager:
    """Connect and log in with ``Events: system`` (chan_sip's PeerStatus and PJSIP's
    ContactStatus are system events); ``on_event`` gets the fields of every ``PeerStatus``
    and ``ContactStatus``. The caller closes it.

    Raises AmiAuthError for a refused login (the caller must not retry it blindly).
    """
    manager = await _connect(endpoint)
    try:
        manager.register_event("PeerStatus", lambda _manager, message: on_event(message))
        manager.register_event("ContactStatus", lambda _manager, message: on_event(message))
        await _login(manager, endpoint, events="system")
    except BaseException:
        manager.close()
        raise
    return manager


async def ping(manager: _Manager, endpoint: AmiEndpoint) -> None:
    """One ``Ping``; AmiError when no answer comes within ``endpoint.timeout`` or the
    connection closes first."""
    answer = await _wait(manager, _send(manager, {"Action": "Ping"}), endpoint.timeout, "Pong")
    if answer.get("Response", "") not in ("Success", "Pong"):
        raise AmiError(f"Ping failed: {_one_line(answer.get('Message', 'no reason given'))}")


async def sip_peer_status(manager: _Manager, endpoint: AmiEndpoint, name: str) -> Optional[str]:
    """``SIPshowpeer``'s ``Status`` of one chan_sip peer -- exactly the string ``sip show
    peers`` prints -- or None when Asterisk does not know the peer."""
    answer = await _wait(
        manager,
        _send(manager, {"Action": "SIPshowpeer", "Peer": name}),
        endpoint.timeout,
        f"SIPshowpeer {name}",
    )
    if answer.get("Response", "") != "Success":
        message = _one_line(answer.get("Message", ""))
        if "permission denied" in message.lower():
            raise _not_permitted(endpoint, "SIPshowpeer")
        return None
    return normalize_status(str(answer.get("Status", "")))


def connection_closed(manager: _Manager) -> asyncio.Future[None]:
    """A future that resolves when Asterisk closes the connection."""
    return manager.closed_by_peer


def close(manager: _Manager) -> None:
    manager.close()


def get_peer_list(endpoint: AmiEndpoint, source: str = "sip") -> PeerList:
    """``fetch_peer_list`` for synchronous callers (the cron collector)."""
    return asyncio.run(fetch_peer_list(endpoint, source))
