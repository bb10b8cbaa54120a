"""Asterisk Manager Interface: log in, list the SIP peers, read version and uptime.

Built on panoramisk, with three things panoramisk does not do by itself:

* hard timeouts: panoramisk never times out, so every await here has one;
* no retries: a refused login or a dropped connection fails the run at once
  (panoramisk would reconnect and log in again forever);
* streaming: the actions answered with a list (``SIPpeers``; PJSIP's
  ``PJSIPShowContacts`` on 16+, ``PJSIPShowEndpoints`` plus one pipelined
  ``PJSIPShowEndpoint`` per endpoint with contacts on 13-15) are sent and read by
  ``_Protocol`` itself, each entry parsed as it arrives instead of being kept in
  panoramisk's list of messages (100k peers would cost ~500 MB).

Everything else goes through panoramisk as it is: ``Manager.send_action`` for the
other actions, ``Manager.register_event`` for events (tests/test_panoramisk_seams.py
checks the parts of panoramisk this relies on).

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
import re
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, Protocol, TypeVar

from panoramisk import Manager
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


class _MessageReader:
    """Cuts the bytes Asterisk sends into messages: the text between two empty lines.

    One incremental decoder for the whole connection: TCP splits the stream anywhere, also
    inside a character, and a chunk decoded on its own would lose it (the name no longer
    matches; its device would be blanked). Bytes that are not UTF-8 at all become U+FFFD,
    visibly, instead of vanishing.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._rest = ""
        #: the stream's first line once it is complete: Asterisk's banner
        self.first_line: Optional[str] = None

    def feed(self, data: bytes) -> list[str]:
        """The messages that ``data`` completes, without their surrounding blank space."""
        text = self._rest + self._decoder.decode(data)
        if self.first_line is None:
            line, sep, _ = text.partition("\r\n")
            if sep:
                self.first_line = line
        messages = text.split("\r\n\r\n")
        self._rest = messages.pop()  # an incomplete message waits for more data
        return [message.strip() for message in messages]


class _Protocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's AMI protocol, reading the byte stream itself and the lists in full.

    panoramisk's own ``data_received`` decodes every TCP chunk on its own (a
    character split between two chunks is lost) and turns every message into a
    case-insensitive ``Message``; an action answered with a list keeps every
    message of it until the list ends (100k ``PeerEntry`` events: ~4 s and
    ~500 MB). So here ``_MessageReader`` cuts the stream into messages, and:

    * every message carrying the ActionID of a list action sent with
      ``send_list`` goes to that action as text, and none of them to panoramisk;
    * every other message takes panoramisk's own route: ``Message.from_line``,
      then ``handle_message``, which resolves the future that ``send_action``
      returned and hands events to the manager's ``register_event`` callbacks.

    ``connection_made`` extends panoramisk's; no other method of it is replaced.
    """

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._reader = _MessageReader()
        #: when Asterisk last sent anything (``time.monotonic()``)
        self.last_received = time.monotonic()
        #: the list actions being read, by ActionID
        self._lists: dict[str, _ListAction] = {}
        self._list_ids = itertools.count(1)
        #: the first two lines of the last list entry read, and its list
        self._last_head = "\r\n\r\n"  # no message starts so: they are stripped
        self._last_list: Optional[_ListAction] = None

    @property
    def ami_version(self) -> Optional[str]:
        """The AMI version of Asterisk's banner (``Asterisk Call Manager/5.0.4``)."""
        banner = self._reader.first_line or ""
        if not banner.startswith("Asterisk Call Manager/"):
            return None
        return banner.partition("/")[2].strip()

    def send_list(self, action: _ListAction) -> None:
        """Send a list action: every message with its ActionID goes to ``action.read``.

        Not through panoramisk's ``send``: that would register the action to collect
        answers, and none of them reaches panoramisk.
        """
        action_id = f"mor-list-{next(self._list_ids)}"
        self._lists[action_id] = action
        lines = [f"Action: {action.name}", f"ActionID: {action_id}"]
        lines += [f"{key}: {value}" for key, value in action.fields.items()]
        text = "\r\n".join(lines) + "\r\n\r\n"
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("sent %r", text)
        self.transport.write(text.encode("utf-8"))

    def stop_lists(self) -> None:
        """Read no more lists: what still comes for them is left to panoramisk (which
        drops it: it knows none of their ActionIDs)."""
        self._lists.clear()
        self._last_head, self._last_list = "\r\n\r\n", None

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        logged = wire_log.isEnabledFor(logging.DEBUG)
        for block in self._reader.feed(data):
            if logged:
                wire_log.debug("received %r", _SECRET_LINE.sub(r"\1: ***", block))
            if self._lists:
                action = self._list_of(block)
                if action is not None:
                    action.read(block)
                    continue
            message = Message.from_line(block)
            if message is not None:
                self.handle_message(message)

    def _list_of(self, block: str) -> Optional[_ListAction]:
        """The list action whose ActionID ``block`` carries, if any.

        Asterisk echoes the ActionID on the second line of every answer and list
        event (last in PeerlistComplete before 13.2). The entries of one list all
        start with the same two lines: the last ones seen are tried first, which
        spares the search in 100k entries.
        """
        if block.startswith(self._last_head):
            return self._last_list
        at = block.find("\r\nActionID: ")
        if at < 0:
            return None
        end = block.find("\r\n", at + 12)
        action = self._lists.get(block[at + 12 :] if end < 0 else block[at + 12 : end])
        if (
            action is not None
            and end > 0
            and block.startswith("Event: ")
            and block.find("\r\n") == at
        ):
            self._last_head, self._last_list = block[: end + 2], action
        return action


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


class _ListAction:
    """An action Asterisk answers with a list of events (``Response``, the entries, a
    final ``...Complete`` event), read as they arrive and never kept.

    ``_Protocol.send_list`` sends it and hands it every message carrying its ActionID;
    a subclass reads the entries (``add_entry``) and may watch for the end
    (``finished``).
    """

    def __init__(self, name: str, **fields: str) -> None:
        self.name = name
        #: the action's fields after Action and ActionID
        self.fields = fields
        #: the answer (``Response: Success``, or why not), once it came
        self.first: Optional[dict[str, str]] = None
        #: the list's final event, once it came
        self.complete: Optional[dict[str, str]] = None
        self.done = False

    def read(self, block: str) -> None:
        """One message carrying this action's ActionID, as Asterisk sent it."""
        if self.done:
            return
        if block.startswith("Event: "):
            end = block.find("\r\n")
            event = (block[7:] if end < 0 else block[7:end]).strip()
            if not event.endswith("Complete"):
                self.add_entry(event, block)
                return
            self.complete = _fields(block)
        elif block.startswith("Response: "):
            self.first = _fields(block)
            if self.first.get("Response", "").strip() == "Success":
                return
        else:
            return  # neither an answer nor an event: nothing to read
        self.done = True
        self.finished()

    def add_entry(self, event: str, block: str) -> None:
        """One event of the list before its end, as the lines Asterisk sent."""
        raise NotImplementedError

    def finished(self) -> None:
        """The list is over: refused, or its final event came."""


class _PeerListAction(_ListAction):
    """``SIPpeers``: chan_sip's peers, one ``PeerEntry`` each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__("SIPpeers")
        self.peers: list[Peer] = []
        self.received = 0
        self.future: asyncio.Future[None] = loop.create_future()

    def add_entry(self, event: str, block: str) -> None:
        if event == "PeerEntry":
            self.received += 1
            peer = peer_from_fields(_fields(block))
            if peer is not None:
                self.peers.append(peer)

    def finished(self) -> None:
        self.future.set_result(None)


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


def _send(manager: _Manager, action: Mapping[str, str]) -> Awaitable[Any]:
    if wire_log.isEnabledFor(logging.DEBUG):
        shown = {k: ("***" if k.lower() == "secret" else v) for k, v in action.items()}
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
    ami_version = manager.protocol.ami_version
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
    action = _PeerListAction(asyncio.get_running_loop())
    try:
        manager.protocol.send_list(action)
        await _await_stream(manager, endpoint, action, "the SIPpeers list", "PeerlistComplete")
    finally:
        manager.protocol.stop_lists()
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


class _PjsipListAction(_ListAction):
    """One PJSIP list action; what comes back for it goes to the stream that sent it."""

    def __init__(self, stream: _PjsipStream, name: str, endpoint: str = "") -> None:
        super().__init__(name, **({"Endpoint": endpoint} if endpoint else {}))
        self.stream = stream
        #: the endpoint PJSIPShowEndpoint asks about ("" for the other actions)
        self.endpoint = endpoint
        #: the list's entries that name a contact or an endpoint
        self.entries = 0

    def add_entry(self, event: str, block: str) -> None:
        self.stream.add_entry(self, event, block)

    def finished(self) -> None:
        self.stream.finished(self)


class _PjsipStream:
    """The PJSIP list actions of one run and what they bring: every contact and (13-15)
    the endpoints that have contacts.

    Only ``ContactList``, ``ContactStatusDetail`` and ``EndpointList`` entries are
    read; the other detail events of ``PJSIPShowEndpoint`` are dropped.
    """

    def __init__(
        self, send: Callable[[_ListAction], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._send = send
        self._loop = loop
        self.lists: list[_PjsipListAction] = []
        self.contacts: list[Contact] = []
        #: endpoints whose EndpointList names at least one contact (13-15)
        self.with_contacts: list[str] = []
        self.received = 0
        self.future: asyncio.Future[None] = loop.create_future()
        self._queue: deque[str] = deque()
        self._in_flight = 0

    def send(self, name: str, endpoint: str = "") -> _PjsipListAction:
        action = _PjsipListAction(self, name, endpoint)
        self.lists.append(action)
        self._send(action)
        return action

    def phase(self) -> None:
        """Start waiting for the lists sent next."""
        self.future = self._loop.create_future()

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
        if all(action.done for action in self.lists):
            self.future.set_result(None)

    def finished(self, action: _PjsipListAction) -> None:
        if action.name == "PJSIPShowEndpoint":
            self._in_flight -= 1
            self._pump()
        self._maybe_done()

    def add_entry(self, action: _PjsipListAction, event: str, block: str) -> None:
        if event == "ContactList" or event == "ContactStatusDetail":
            action.entries += 1
            self.received += 1
            contact = contact_from_fields(_fields(block), action.endpoint)
            if contact is not None:
                self.contacts.append(contact)
        elif event == "EndpointList":
            action.entries += 1
            self.received += 1
            self._endpoint_entry(block)

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
    """A list being received: its end, and its entries so far."""

    future: asyncio.Future[Any]
    received: int


async def _await_stream(
    manager: _Manager, endpoint: AmiEndpoint, stream: _Streaming, what: str, end: str
) -> None:
    """Wait for a list's ``end`` event: ``list_timeout`` in all, ``timeout`` of silence."""
    started = time.monotonic()
    deadline = started + endpoint.list_timeout
    while not stream.future.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AmiError(
                f"{what} not complete within {endpoint.list_timeout:g} s "
                f"({stream.received} entries received) -- raise ami_list_timeout for large servers"
            )
        silent_for = time.monotonic() - max(started, manager.protocol.last_received)
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


def _pjsip_refusal(endpoint: AmiEndpoint, action: _PjsipListAction) -> Optional[str]:
    """None when the list action succeeded; else Asterisk's message, or an AmiError."""
    first = action.first or {}
    if first.get("Response", "").strip() == "Success":
        complete = action.complete or {}
        listed = complete.get("ListItems", "").strip()
        if action.name != "PJSIPShowEndpoint" and listed and listed != str(action.entries):
            raise AmiError(
                f"{action.name} list is inconsistent: Asterisk announced ListItems {listed} "
                f"but sent {action.entries} entries"
            )
        return None
    message = _one_line(first.get("Message", ""))
    if "permission denied" in message.lower():
        raise _not_permitted(endpoint, action.name)
    return message or "no reason given"


async def _pjsip_contacts(manager: _Manager, endpoint: AmiEndpoint) -> list[Contact]:
    """Every PJSIP contact: ``PJSIPShowContacts`` (16+), else (13-15) ``PJSIPShowEndpoints``
    and ``PJSIPShowEndpoint`` for each endpoint that has contacts."""
    stream = _PjsipStream(manager.protocol.send_list, asyncio.get_running_loop())
    try:
        listing = stream.send("PJSIPShowContacts")
        await _await_stream(
            manager, endpoint, stream, "the PJSIPShowContacts list", "ContactListComplete"
        )
        refused = _pjsip_refusal(endpoint, listing)
        if refused is None or "no contacts found" in refused.lower():
            return stream.contacts
        if "invalid/unknown command" not in refused.lower():
            raise AmiError(f"PJSIPShowContacts failed: {refused}")
        return await _pjsip_contacts_per_endpoint(manager, endpoint, stream)
    finally:
        manager.protocol.stop_lists()


async def _pjsip_contacts_per_endpoint(
    manager: _Manager, endpoint: AmiEndpoint, stream: _PjsipStream
) -> list[Contact]:
    """Asterisk 13-15 (no PJSIPShowContacts): the endpoints, then the contacts of each
    endpoint that has some."""
    stream.phase()
    listing = stream.send("PJSIPShowEndpoints")
    await _await_stream(
        manager, endpoint, stream, "the PJSIPShowEndpoints list", "EndpointListComplete"
    )
    refused = _pjsip_refusal(endpoint, listing)
    if refused is not None:
        if "no endpoints found" in refused.lower():
            return []
        if "invalid/unknown command" in refused.lower():
            raise NoPjsipError("Asterisk does not know PJSIPShowEndpoints: res_pjsip is not loaded")
        raise AmiError(f"PJSIPShowEndpoints failed: {refused}")
    stream.phase()
    stream.show_endpoints(stream.with_contacts)
    await _await_stream(
        manager, endpoint, stream, "the PJSIPShowEndpoint answers", "EndpointDetailComplete"
    )
    for action in stream.lists:
        if action.name == "PJSIPShowEndpoint":
            refused = _pjsip_refusal(endpoint, action)
            if refused is not None:  # removed since it was listed
                log.debug("PJSIPShowEndpoint %s: %s", action.endpoint, refused)
    return stream.contacts


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
