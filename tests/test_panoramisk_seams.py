"""The parts of panoramisk the collector relies on, each checked where it meets ours.

mor_plugin.ami reads the byte stream itself and hands every message that is not part of
a list to panoramisk (``Message.from_line``, then ``AMIProtocol.handle_message``); the
answers resolve the futures of ``Manager.send_action`` and the events reach the callbacks
of ``Manager.register_event``. A panoramisk release that moves any of this fails here,
by name, before it fails a run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol

from mor_plugin.ami import _Manager, _PeerListAction, _Protocol

T = TypeVar("T")


class _Transport:
    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


def _run(test: Callable[[_Manager, _Protocol, _Transport], Awaitable[T]]) -> T:
    """``test`` with a manager connected, as ``ami._connect`` connects it, to a transport
    that keeps what is written."""

    async def connected() -> T:
        loop = asyncio.get_running_loop()
        manager = _Manager(
            protocol_factory=_Protocol,
            loop=loop,
            events="off",
            ping_delay=3600,
            reconnect_timeout=0,
        )
        protocol, transport = _Protocol(), _Transport()
        protocol.connection_made(transport)
        made: asyncio.Future[Any] = loop.create_future()
        made.set_result((transport, protocol))
        manager.connection_made(made)
        return await test(manager, protocol, transport)

    return asyncio.run(connected())


def _action_id(sent: bytes) -> bytes:
    found = re.search(rb"\r\nActionID: ([^\r]+)\r\n", sent)
    assert found is not None, sent
    return found[1]


def _feed_bytewise(protocol: _Protocol, data: bytes) -> None:
    """TCP may cut anywhere: one byte at a time, characters of several bytes too."""
    for i in range(len(data)):
        protocol.data_received(data[i : i + 1])


def _replaced(cls: type, base: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and hasattr(base, name)}


def test_only_the_byte_reading_and_the_reconnects_of_panoramisk_are_replaced() -> None:
    """Every other method is panoramisk's as released; a release that adds a method of
    one of these names (``send_list``...) would be shadowed, and fails here."""
    assert _replaced(_Protocol, AMIProtocol) == {"connection_made", "data_received"}
    assert _replaced(_Manager, Manager) == {"__init__", "connection_made", "connection_lost"}
    assert not {"send_list", "stop_lists", "ami_version"} & set(dir(AMIProtocol))


def test_an_answer_read_by_the_collector_resolves_the_future_of_send_action() -> None:
    async def test(manager: _Manager, protocol: _Protocol, transport: _Transport) -> Any:
        future = manager.send_action({"Action": "CoreSettings"})
        assert re.fullmatch(rb"Action: CoreSettings\r\nActionID: [^\r]+\r\n\r\n", transport.sent)
        action_id = _action_id(transport.sent)
        _feed_bytewise(
            protocol,
            b"Asterisk Call Manager/5.0.4\r\nResponse: Success\r\nActionID: "
            + action_id
            + b"\r\nAsteriskVersion: 16.28.0\r\nSystemName: caf\xc3\xa9\r\n\r\n",
        )
        assert future.done()
        return future.result(), protocol.ami_version

    answer, ami_version = _run(test)
    assert answer["Response"] == "Success"
    assert answer["AsteriskVersion"] == "16.28.0"
    assert answer["SystemName"] == "café"
    assert ami_version == "5.0.4"


def test_an_event_reaches_the_callbacks_of_register_event() -> None:
    seen: list[tuple[str, str, str]] = []

    def on_event(_manager: Any, message: Any) -> None:
        seen.append((message["Event"], message["Peer"], message["PeerStatus"]))

    async def test(manager: _Manager, protocol: _Protocol, transport: _Transport) -> None:
        manager.register_event("PeerStatus", on_event)
        _feed_bytewise(
            protocol,
            b"Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\n"
            b"Peer: SIP/jos\xc3\xa9\r\nPeerStatus: Unreachable\r\nTime: -1\r\n\r\n"
            b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n",
        )

    _run(test)
    assert seen == [("PeerStatus", "SIP/josé", "Unreachable")]


def test_a_list_is_read_by_the_collector_and_none_of_it_reaches_panoramisk() -> None:
    async def test(manager: _Manager, protocol: _Protocol, transport: _Transport) -> Any:
        handed: list[Any] = []
        protocol.handle_message = handed.append
        peers = _PeerListAction(asyncio.get_running_loop())
        protocol.send_list(peers)
        action_id = _action_id(transport.sent)
        entries = b"".join(
            b"Event: PeerEntry\r\nActionID: " + action_id + b"\r\nObjectName: %d\r\n"
            b"Status: OK (%d ms)\r\n\r\n" % (name, name % 7 + 1)
            for name in range(101, 104)
        )
        protocol.data_received(
            b"Response: Success\r\nActionID: "
            + action_id
            + b"\r\nEventList: start\r\nMessage: Peer status list will follow\r\n\r\n"
            + entries
            + b"Event: PeerlistComplete\r\nEventList: Complete\r\nListItems: 3\r\nActionID: "
            + action_id
            + b"\r\n\r\n"
        )
        return peers, handed, protocol.responses

    peers, handed, waiting = _run(test)
    assert peers.future.done()
    assert [peer.name for peer in peers.peers] == ["101", "102", "103"]
    assert peers.complete == {
        "Event": "PeerlistComplete",
        "EventList": "Complete",
        "ListItems": "3",
        "ActionID": "mor-list-1",
    }
    assert handed == []
    assert waiting == {}  # panoramisk waits for no answer it would keep forever


def test_a_closed_connection_is_reported_and_never_reconnected() -> None:
    async def test(manager: _Manager, protocol: _Protocol, transport: _Transport) -> Any:
        reconnects: list[Any] = []
        manager.connect = lambda *args, **kwargs: reconnects.append(args)
        pinger = manager.pinger
        protocol.connection_lost(None)
        await asyncio.sleep(0.05)  # panoramisk would reconnect after reconnect_timeout (0)
        return manager.closed_by_peer.done(), reconnects, pinger, transport.closed

    closed, reconnects, pinger, transport_closed = _run(test)
    assert closed
    assert reconnects == []
    assert pinger is None  # no keep-alive Ping of panoramisk's on the collector's connection
    assert transport_closed
