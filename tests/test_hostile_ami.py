"""Hostile bytes from Asterisk, a phone or the network: no value blanks a status, crashes a
run or fails its write. MariaDB runs in its default strict mode, as on a MOR server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pytest
from recorded_ami import transcript
from regstatus_helpers import MorDatabase, run, summary, write_conf
from sqlalchemy import text

from mor_plugin import schema, store
from mor_plugin.ami import _PeerListAction, _Protocol
from mor_plugin.pjsip import contact_from_fields
from mor_plugin.simulator import (
    AmiSimulator,
    SimContact,
    SimEndpoint,
    SimPeer,
    run_in_thread,
)
from mor_plugin.status import (
    MAX_MS,
    ascii_int,
    normalize_status,
    parse_address,
    peer_event_from_fields,
    peer_from_fields,
    qualify_limit,
)

#: Names that are one, two, three and four bytes a character in UTF-8.
NAMES = ["josé", "日本語日本語-1", "Ærø-ß", "101"]


class _Transport:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


class _Recording(_Protocol):
    """The collector's protocol, keeping every message it would hand to panoramisk."""

    def handle_message(self, message: Any) -> None:
        self.handled.append(dict(message))


def _protocol() -> _Recording:
    protocol = _Recording()
    protocol.connection_made(_Transport())
    protocol.handled = []
    return protocol


def _received(name: str) -> bytes:
    """Everything Asterisk sent in a recorded conversation, after its banner."""
    stream = b"".join(data or b"" for d, data in transcript(name).chunks if d == "<<<")
    return stream.partition(b"\r\n")[2]


def _with_names(stream: bytes, field: bytes, names: list[str]) -> bytes:
    """The stream with the values of ``field`` replaced by ``names``, in turn."""
    lines = stream.split(b"\r\n")
    turn = 0
    for index, line in enumerate(lines):
        if line.startswith(field + b": "):
            lines[index] = field + b": " + names[turn % len(names)].encode()
            turn += 1
    assert turn, f"no {field!r} in the recording"
    return b"\r\n".join(lines)


@pytest.fixture
def event_loop_of_its_own() -> Iterator[None]:
    """panoramisk's actions make a future on the current loop: one of the test's own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def _feed(pieces: list[bytes]) -> tuple[list[str], list[dict[str, str]]]:
    """The names of a SIPpeers list sent first on a connection that receives ``pieces``,
    and the messages handed to panoramisk."""
    protocol = _protocol()
    peer_list = _PeerListAction(asyncio.get_event_loop())
    protocol.send_list(peer_list)
    for piece in pieces:
        protocol.data_received(piece)
    return [peer.name for peer in peer_list.peers], protocol.handled


def _as_first_list(stream: bytes, action_id: bytes) -> bytes:
    """``stream`` with ``action_id`` replaced by the ActionID the collector gives the first
    list it sends on a connection."""
    protocol = _protocol()
    protocol.send_list(_PeerListAction(asyncio.get_event_loop()))
    ours = re.search(rb"\r\nActionID: ([^\r]+)\r\n", protocol.transport.sent)
    assert ours is not None
    return stream.replace(b"ActionID: " + action_id + b"\r\n", b"ActionID: " + ours[1] + b"\r\n")


def test_a_sip_peer_list_split_at_every_byte_keeps_every_non_ascii_name(
    event_loop_of_its_own: None,
) -> None:
    stream = _with_names(_received("ast16-sippeers.txt"), b"ObjectName", NAMES)
    stream = _as_first_list(stream, b"sp-1")
    whole = _feed([stream])
    assert whole[0][:4] == NAMES
    for cut in range(1, len(stream)):
        assert _feed([stream[:cut], stream[cut:]]) == whole, f"split at byte {cut}"
    assert _feed([stream[i : i + 1] for i in range(len(stream))]) == whole


def test_a_pjsip_contact_list_split_at_every_byte_keeps_every_non_ascii_name(
    event_loop_of_its_own: None,
) -> None:
    stream = _with_names(_received("ast22-pjsipshowcontacts.txt"), b"Endpoint", NAMES)
    whole = _feed([stream])
    endpoints = [m["Endpoint"] for m in whole[1] if m.get("Event") == "ContactList"]
    assert endpoints[:2] == NAMES[:2]
    for cut in range(1, len(stream)):
        assert _feed([stream[:cut], stream[cut:]]) == whole, f"split at byte {cut}"


def test_bytes_that_are_not_utf8_show_as_replacement_characters_not_as_silence(
    event_loop_of_its_own: None,
) -> None:
    entry = (
        b"Event: PeerEntry\r\nActionID: sp-1\r\nObjectName: caf\xe9\r\nStatus: OK (3 ms)\r\n\r\n"
    )
    names, _ = _feed([_as_first_list(entry, b"sp-1")])
    assert names == ["caf\ufffd"]


# -- the rules: every value from the wire is validated --------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5060", 5060),
        (" 5060 ", 5060),
        ("65535", 65535),
        ("65536", None),
        ("0", None),
        ("99999999999", None),
        ("9" * 400, None),
        ("²", None),  # str.isdigit() says yes, int() says no
        ("٥٠٦٠", None),  # Arabic-Indic digits: int() would take them
        ("5060\n", 5060),
        ("50\x0060", None),
        ("-1", None),
        ("", None),
    ],
)
def test_a_port_is_plain_ascii_digits_within_range(value: str, expected: Optional[int]) -> None:
    assert ascii_int(value, 1, 65535) == expected
    assert parse_address("10.0.0.1", value)[1] == expected


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1\x00",
        "10.0.0.1\x00evil",
        "1" * 46,
        "1." * 150,
        "10.0.0.1 <script>",
        "日本",
        "10.0.0.1\r\nX: y",
    ],
)
def test_an_address_that_is_no_address_is_not_stored(address: str) -> None:
    assert parse_address(address, "5060") == (None, None)
    peer = peer_from_fields({"ObjectName": "101", "Status": "OK (3 ms)", "IPaddress": address})
    assert peer is not None and peer.ip is None


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "2001:db8::1", "[2001:db8::1]:5062", "pbx-1.example.com"]
)
def test_real_addresses_pass(address: str) -> None:
    ip, _ = parse_address(address, "5060")
    assert ip and ip in address


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("OK (23 ms)", "OK (23 ms)"),
        (f"LAGGED ({MAX_MS} ms)", f"LAGGED ({MAX_MS} ms)"),
        ("OK (1234567890 ms)", "UNKNOWN"),
        ("OK (٣ ms)", "UNKNOWN"),
        ("OK (3 ms)\nX", "UNKNOWN"),
        ("OK (" + "9" * 60 + " ms)", "UNKNOWN"),
    ],
)
def test_a_status_string_always_fits_the_column_the_gui_parses(raw: str, expected: str) -> None:
    assert normalize_status(raw) == expected
    assert len(normalize_status(raw)) <= 50


def test_event_times_and_qualify_limits_are_bounded() -> None:
    at = datetime(2026, 12, 3, 12, 0)
    fields = {"Peer": "SIP/101", "PeerStatus": "Reachable", "Time": "9" * 30}
    for time_text in ("9" * 30, "²", "1e3", "-5"):
        event = peer_event_from_fields({**fields, "Time": time_text}, at)
        assert event is not None and event.time_ms is None, time_text
    event = peer_event_from_fields({**fields, "Time": "42"}, at)
    assert event is not None and event.time_ms == 42
    assert qualify_limit("²") == 2000
    assert qualify_limit("9" * 40) == 2000
    assert qualify_limit("300") == 300
    assert qualify_limit("0") is None


def test_contact_values_are_cleaned_and_bounded() -> None:
    contact = contact_from_fields(
        {
            "Uri": "sip:101@10.0.0.1:5060\x00",
            "Endpoint": "101",
            "Status": "Reachable",
            "RoundtripUsec": str(2**64),
            "UserAgent": "Phone\r\nX-Evil: 1",
            "ViaAddr": "10.0.0.1\x00" + "9" * 300,
            "ViaPort": "99999999999",
        }
    )
    assert contact is not None
    assert contact.uri == "sip:101@10.0.0.1:5060"
    assert contact.endpoint == "101"
    assert contact.roundtrip_usec is None
    assert contact.user_agent == "PhoneX-Evil: 1"
    assert contact.via is None


# -- end to end: the simulator over TCP into MariaDB in strict mode ----------------


def _devices(mor: MorDatabase, names: list[str]) -> None:
    mor.add_server(1)
    mor.add_server(2)
    with mor.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO devices (id, name, server_id, device_type, user_id, secret, "
                "context, extension, username, qualify) VALUES "
                "(:id, :name, 1, 'SIP', 2, 's', 'mor', :id, :name, 'yes')"
            ),
            [{"id": i, "name": name} for i, name in enumerate(names, start=1)],
        )


def test_twenty_thousand_japanese_names_are_all_written(
    mor_db: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"日本語日本語-{n}" for n in range(20000)] + ["josé"]
    _devices(mor_db, names)
    peers = [SimPeer(name, "OK (7 ms)", ip="10.0.0.1", port=5060) for name in names]
    with run_in_thread(AmiSimulator(peers, version="16", username="mor", secret="s3cret")) as sim:
        result = summary(write_conf(tmp_path, mor_db.url, sim), capsys)
    stored = mor_db.reg_statuses()
    assert [name for name, status in stored.items() if status != "OK (7 ms)"] == []
    assert result["counts"]["ok"] == len(names)


@pytest.fixture
def hostile_sim() -> Iterator[AmiSimulator]:
    """Asterisk 16 listing chan_sip peers and PJSIP contacts with values no column holds."""
    peers = [
        SimPeer("101", "OK (3 ms)", ip="10.0.0.1", port=5060),
        SimPeer("102", "OK (3 ms)", ip="10.0.0." + "1" * 300, port=5060),
        SimPeer("103", "OK (3 ms)", ip="10.0.0.3\x00evil", port=5060),
        SimPeer("104", "LAGGED (" + "9" * 40 + " ms)", ip="10.0.0.4", port=5060),
        SimPeer("😀phone", "OK (3 ms)", ip="10.0.0.9", port=5060),
        SimPeer("x" * 300, "OK (3 ms)", ip="10.0.0.9", port=5060),
    ]
    long_host = "h" * 60 + ".example.com"
    endpoints = [
        SimEndpoint(
            "201",
            [
                SimContact(
                    f"sip:201@{long_host}:5060;" + "x=" + "y" * 600,
                    rtt_usec=2**63 + 5,
                    user_agent="UA/😀" + "u" * 400,
                    via_addr=long_host * 3,
                    via_port=99999999999,
                    call_id="c" * 300,
                )
            ],
        ),
        SimEndpoint("202", [SimContact("sip:202@10.0.2.2:5060", via_addr="10.0.2.2\x00")]),
    ]
    sim = AmiSimulator(peers, version="16", username="mor", secret="s3cret", endpoints=endpoints)
    with run_in_thread(sim) as running:
        yield running


def test_values_no_column_holds_are_fitted_and_the_run_succeeds(
    mor_db: MorDatabase,
    hostile_sim: AmiSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _devices(mor_db, ["101", "102", "103", "104", "201", "202"])
    mor_db.add_device(7, "😀phone".encode()[4:].decode(), server_id=2)
    conf = write_conf(tmp_path, mor_db.url, hostile_sim, peer_source="both")
    result = summary(conf, capsys)
    assert result["peers"] == 8
    stored = mor_db.reg_statuses()
    assert stored["101"] == stored["102"] == stored["103"] == "OK (3 ms)"
    assert stored["104"] == "UNKNOWN"  # a round trip no chan_sip prints
    assert stored["202"] == "OK (20 ms)"
    assert stored["201"] is not None  # listed and reachable, its round trip no figure
    assert stored["phone"] is None and result["wrong_server"] == 0
    with mor_db.engine.connect() as conn:
        ips = dict(conn.execute(text("SELECT device_id, ip FROM mor_regstatus_devices")).all())
        contact = conn.execute(
            text("SELECT uri, user_agent, via, roundtrip_usec FROM mor_regstatus_contacts")
        ).all()
        state = conn.execute(text("SELECT result FROM mor_regstatus_servers")).scalar()
    assert ips[1] == "10.0.0.1" and ips[2] is None and ips[3] is None
    assert sorted(
        (len(row.uri), len(row.user_agent), row.via, row.roundtrip_usec) for row in contact
    ) == [
        (21, 0, None, 20000),
        (512, 255, None, None),
    ]
    assert state == "ok"


# -- a database failure of any kind: exit 4, one line, recorded -----------------


def test_a_refused_bulk_write_exits_4_and_is_recorded(
    mor_db: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value MariaDB refuses in the raw bulk INSERT (forced here by a trigger, as a
    column MOR altered would) fails the run as every database error does."""
    _devices(mor_db, ["101"])
    peers = [SimPeer("101", "OK (3 ms)", ip="10.0.0.1", port=5060)]
    with run_in_thread(AmiSimulator(peers, version="16", username="mor", secret="s3cret")) as sim:
        conf = write_conf(tmp_path, mor_db.url, sim)
        assert run(conf, capsys=capsys)[0] == 0
        mor_db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON mor_regstatus_devices FOR EACH ROW "
            "SET NEW.port = 99999999999"
        )
        sim.peers = [SimPeer("101", "OK (4 ms)", ip="10.0.0.2", port=5061)]
        code, _, err = run(conf, capsys=capsys)
    assert code == 4, err
    assert err.startswith("mor-retrieve-peers: database ") and err.count("\n") == 1
    assert "Out of range value" in err and "***" in err
    with mor_db.engine.connect() as conn:
        result = conn.execute(text("SELECT result FROM mor_regstatus_servers")).scalar()
    assert result.startswith("database ") and "Out of range" in result
    assert mor_db.reg_statuses()["101"] == "OK (3 ms)"  # nothing half-written
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["last_result"].startswith("database ")


class _Cutter:
    """A TCP proxy in front of MariaDB that cuts the connection the first time the client
    sends a statement containing ``trigger`` (the server restarted in the middle of a run)."""

    def __init__(self, trigger: bytes) -> None:
        self.trigger = trigger
        self.cuts = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 3306), timeout=5)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and not self.cuts and self.trigger in data:
                    self.cuts += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()


def test_a_lost_connection_says_so_in_words() -> None:
    from sqlalchemy.exc import OperationalError

    class Lost(Exception):
        pass

    lost = OperationalError("INSERT INTO mor_regstatus_history (a) VALUES (1)", None, Lost(0, ""))
    assert store.describe_db_error(lost) == (
        "connection to the database lost during INSERT INTO mor_regstatus_history: no reply"
    )
    gone = OperationalError(
        "UPDATE devices SET x", None, Lost(2013, "Lost connection to MySQL server during query")
    )
    assert store.describe_db_error(gone) == (
        "connection to the database lost during UPDATE (MySQL error 2013)"
    )


def test_a_database_that_drops_the_connection_mid_run_is_named_and_recorded(
    mor_db: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _devices(mor_db, ["101"])
    cutter = _Cutter(b"INSERT INTO mor_regstatus_devices")
    url = mor_db.url.replace("127.0.0.1:3306", f"127.0.0.1:{cutter.port}")
    peers = [SimPeer("101", "OK (3 ms)", ip="10.0.0.1", port=5060)]
    try:
        with run_in_thread(
            AmiSimulator(peers, version="16", username="mor", secret="s3cret")
        ) as sim:
            code, _, err = run(write_conf(tmp_path, url, sim), capsys=capsys)
    finally:
        cutter.close()
    assert cutter.cuts == 1
    assert code == 4, err
    assert "connection to the database lost during INSERT INTO mor_regstatus_devices" in err
    assert "MySQL error 0:" not in err
    assert mor_db.reg_statuses()["101"] is None  # rolled back with the connection
    with mor_db.engine.connect() as conn:
        result = conn.execute(text("SELECT result FROM mor_regstatus_servers")).scalar()
    assert result.startswith("database ") and "connection to the database lost" in result


def test_peer_names_no_device_can_carry_match_nothing_and_fail_nothing(
    mor_db: MorDatabase,
) -> None:
    """``devices`` is utf8 (three bytes at most) and its names 100 characters long: a name
    beyond that is looked up by neither the poll's wrong-server check nor the listener."""
    _devices(mor_db, ["101"])
    mor_db.add_device(2, "201", server_id=2)
    hostile = ["😀phone", "x" * 101, "101\U0010ffff", "201"]
    with mor_db.engine.connect() as conn:
        elsewhere = store.find_devices_elsewhere(conn, hostile, 1)
        named = store.load_devices_named(conn, 1, [*hostile, "101"])
    assert [d.name for d in elsewhere] == ["201"]
    assert [d.name for d in named] == ["101"]


def test_texts_for_mors_own_tables_lose_what_utf8_cannot_hold(mor_db: MorDatabase) -> None:
    mor_db.add_server(1)
    version = "Asterisk 22.10.1 😀 " + "v" * 40
    fitted = store.fit(schema.servers.c.version, version)
    assert fitted == ("Asterisk 22.10.1 \ufffd " + "v" * 40)[:30]
    mor_db.execute("UPDATE servers SET version = :v WHERE id = 1", v=fitted)  # strict mode
    assert store.fit(schema.contacts.c.user_agent, "UA 😀") == "UA 😀"  # our tables: utf8mb4


def test_the_wire_log_never_keeps_a_pjsip_auth_password(
    event_loop_of_its_own: None, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``debug = 1`` every AMI message is logged; PJSIPShowEndpoint's auth objects
    carry their password in clear (Asterisk 16) and it must not reach the log."""
    stream = _received("ast16-pjsipshowendpoint.txt").replace(
        b"Password: <masked>", b"Password: hunter2-secret"
    )
    assert b"hunter2-secret" in stream
    with caplog.at_level(logging.DEBUG, logger="mor_plugin.ami.wire"):
        _feed([stream])
    wire = "\n".join(r.getMessage() for r in caplog.records if r.name == "mor_plugin.ami.wire")
    assert "Password: ***" in wire
    assert "hunter2-secret" not in wire
