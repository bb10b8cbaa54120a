"""Record AMI transcripts from Debian's real Asterisk 16 and 22 into ``tests/data/ami``.

``python -m testbed.record --out tests/data/ami`` (as root: the chroots, MariaDB's
socket) starts each real Asterisk (``testbed.asterisk``) the way MOR runs it, with
SIP phones of ``testbed.phones`` registered, waits until qualify has settled, and
writes one file per AMI conversation: what was sent and what came back over a raw
TCP socket, byte for byte (CRLF kept), in the format that ``tests/data/ami/README.md``
describes. Only secrets are masked: the AMI secret of a Login and the PJSIP auth
passwords that ``PJSIPShowEndpoint`` prints.

On Asterisk 16 chan_sip reads MOR's ``devices`` table (res_config_mysql, in a
throw-away MariaDB database); its phones: 101 answers qualify at once, 102 late
(0.3 s against ``qualify=200``: LAGGED), 103 never (UNREACHABLE), 104 has
``qualify=no`` (Unmonitored), 105 registers while an event session watches, then
answers late, on time, never, on time, and unregisters (PeerStatus Registered,
Reachable, Lagged, Reachable, Unreachable, Reachable, Unregistered). On both versions
the PJSIP endpoint pj1 has two contacts on one AOR (one answers, one never), pj2 one
contact that answers late, pj3 none, and pj4 registers while an event session watches,
stops answering, answers again and unregisters (ContactStatus, and PeerStatus with
ChannelType PJSIP). An AMI user without ``write`` shows what Asterisk refuses.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from testbed import mariadb
from testbed.asterisk import (
    RELEASES,
    AmiUser,
    Asterisk,
    PjsipEndpoint,
    Ports,
    RealtimeDb,
    TestbedError,
    asterisk_package_version,
    ensure_chroot,
)
from testbed.phones import NEVER, Phone, PhoneBank
from testbed.server import mor_server, password_of, phone_of, wait_until

ROOT = Path(__file__).resolve().parents[1]

#: what a masked secret reads in a transcript
MASK = "<masked>"
MASK_B = MASK.encode() + b"\r\n"
HEADER_END = "# FIXTURE-HEADER-END"
WRONG_SECRET = "not-the-secret"  # noqa: S105 - the wrong one, on purpose

#: chan_sip phones of Asterisk 16: name, devices.qualify, answer delay (s), what it shows
SIP_PHONES = [
    ("101", "yes", 0.0, "OK"),
    ("102", "200", 0.3, "LAGGED"),
    ("103", "300", NEVER, "UNREACHABLE"),
    ("104", "no", 0.0, "Unmonitored"),
]
#: the chan_sip phone that registers during the event session, then goes down and up
SIP_EVENT_PHONE = ("105", "500")
#: PJSIP contacts: endpoint, contact user, answer delay (s)
PJSIP_CONTACTS = [("pj1", "pj1-desk", 0.0), ("pj1", "pj1-mobile", NEVER), ("pj2", "pj2", 0.3)]
PJSIP_ENDPOINTS = ("pj1", "pj2", "pj3", "pj4")
PJSIP_EVENT_PHONE = "pj4"
#: how late the event phones answer qualify when up, and when lagging (105: qualify=500)
UP, LATE = 0.05, 0.7


# -- one recorded conversation ---------------------------------------------------------


@dataclass
class Chunk:
    """Bytes that went one way: ``>>>`` client to Asterisk, ``<<<`` Asterisk to client.
    ``data`` None: that side closed the connection."""

    direction: str
    elapsed: float
    data: Optional[bytes]


@dataclass
class Conversation:
    """One TCP connection to the AMI port, every byte both ways with its time."""

    port: int
    secret: str
    #: secrets Asterisk may show (PJSIP auth passwords): masked in what comes back
    passwords: Sequence[str] = ()
    chunks: list[Chunk] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.started = time.monotonic()
        self._received = bytearray()
        self._last = self._last_byte = self.started
        self._closed = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            now = time.monotonic()
            with self._lock:
                if self._closed and not data:
                    return
                if not data:
                    self.chunks.append(Chunk("<<<", now - self.started, None))
                    self._closed = True
                    return
                last = self.chunks[-1] if self.chunks else None
                # one chunk per burst: a client send or a pause of 100 ms starts the next
                burst = now - self._last_byte < 0.1
                if last and last.direction == "<<<" and last.data is not None and burst:
                    last.data += data
                else:
                    self.chunks.append(Chunk("<<<", now - self.started, data))
                self._received += data
                self._last = self._last_byte = now

    def _mask(self, data: bytes) -> bytes:
        """The AMI secret (in a Login) and the PJSIP passwords (AuthDetail) read MASK."""
        data = data.replace(f"Secret: {self.secret}\r\n".encode(), b"Secret: " + MASK_B)
        for password in self.passwords:
            data = data.replace(f"Password: {password}\r\n".encode(), b"Password: " + MASK_B)
        for secret in (self.secret, *self.passwords):
            if secret.encode() in data:
                raise TestbedError(f"a secret would be written unmasked: {data[:200]!r}")
        return data

    def send(self, text: str) -> None:
        data = text.encode()
        with self._lock:
            self.chunks.append(Chunk(">>>", time.monotonic() - self.started, data))
            self._last = time.monotonic()
        self.sock.sendall(data)

    def action(self, action: str, **headers: str) -> None:
        lines = [f"Action: {action}"] + [f"{key}: {value}" for key, value in headers.items()]
        self.send("\r\n".join(lines) + "\r\n\r\n")

    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def settle(
        self,
        until: Optional[Callable[[bytes], bool]] = None,
        quiet: float = 0.5,
        timeout: float = 20.0,
    ) -> bytes:
        """Wait until ``until(received so far)`` holds (if given) and then nothing more
        arrived for ``quiet`` seconds, or the server closed; everything received."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                data, last, closed = bytes(self._received), self._last, self._closed
            done = until is None or until(data)
            if closed or (done and time.monotonic() - last >= quiet):
                return data
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"AMI on port {self.port}: no expected answer within {timeout:g} s; "
                    f"last bytes: {data[-300:]!r}"
                )
            time.sleep(0.02)

    def login(self, username: str, secret: str, events: str = "off", **extra: str) -> None:
        self.action("Login", Username=username, Secret=secret, Events=events, **extra)
        self.settle(lambda d: b"Authentication accepted" in d or b"Authentication failed" in d)

    def close(self) -> None:
        """Close from the client side (unless the server already did)."""
        self.settle(quiet=0.3)
        with self._lock:
            already = self._closed
            self._closed = True
            if not already:
                self.chunks.append(Chunk(">>>", time.monotonic() - self.started, None))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)

    def transcript(self) -> bytes:
        """The chunks in the format of ``tests/data/ami/README.md``."""
        out = bytearray()
        for chunk in self.chunks:
            if chunk.data is None:
                out += f"{chunk.direction} +{chunk.elapsed:.3f} s closed\n".encode()
            else:
                data = self._mask(chunk.data)
                out += f"{chunk.direction} +{chunk.elapsed:.3f} s {len(data)} bytes\n".encode()
                out += data
        return bytes(out)


def _one_message(data: bytes) -> bool:
    return data.endswith(b"\r\n\r\n")


def _ended(list_end: bytes) -> Callable[[bytes], bool]:
    """Until: the stream ends with a complete message and holds ``list_end`` or an error."""

    def check(data: bytes) -> bool:
        return data.endswith(b"\r\n\r\n") and (list_end in data or b"Response: Error" in data)

    return check


# -- the world: MOR's database, a real Asterisk, phones ------------------------------------


@contextlib.contextmanager
def mor_database() -> Iterator[RealtimeDb]:
    """A throw-away MariaDB database with MOR's tables and a user of its own (dropped after)."""
    import pymysql  # type: ignore[import-untyped,unused-ignore]

    try:
        root = mariadb.root_connection()
    except pymysql.err.OperationalError as err:
        raise TestbedError(f"MariaDB is not reachable on {mariadb.SOCKET}: {err}") from err
    try:
        with mariadb.scratch_mor_database("mor_record", root=root) as login:
            with root.cursor() as cur:
                devices = [(n, q) for n, q, _, _ in SIP_PHONES] + [SIP_EVENT_PHONE]
                for device_id, (device, qualify) in enumerate(devices, start=1):
                    cur.execute(
                        "INSERT INTO devices (id, name, server_id, device_type, user_id, "
                        "secret, context, extension, username, qualify) "
                        "VALUES (%s, %s, 1, 'SIP', 2, %s, 'mor', %s, %s, %s)",
                        (device_id, device, password_of(device), device, device, qualify),
                    )
            yield RealtimeDb(*login)
    finally:
        root.close()


@dataclass
class World:
    version: str
    package: str
    ast: Asterisk
    ports: Ports
    secret: str
    sip: Optional[PhoneBank]
    pjsip: PhoneBank


@contextlib.contextmanager
def world(version: str) -> Iterator[World]:
    release = RELEASES[version]
    package = asterisk_package_version(ensure_chroot(version))
    secret = secrets.token_hex(8)
    users = [AmiUser("mor", secret), AmiUser("reader", secret, read="system,reporting", write="")]
    endpoints = [
        PjsipEndpoint(name, password_of(name), max_contacts=2, qualify_frequency=2)
        for name in PJSIP_ENDPOINTS
    ]
    sip_phones = [phone_of(name, answer) for name, _, answer, _ in SIP_PHONES]
    pjsip_phones = [phone_of(name, answer, user) for name, user, answer in PJSIP_CONTACTS]
    with contextlib.ExitStack() as stack:
        realtime = stack.enter_context(mor_database()) if release.chan_sip else None
        server = stack.enter_context(
            mor_server(
                version,
                users,
                name=f"record{version}",
                realtime=realtime,
                pjsip_endpoints=endpoints,
                sip_phones=sip_phones,
                pjsip_phones=pjsip_phones,
            )
        )
        yield World(version, package, server.ast, server.ports, secret, server.sip, server.pjsip)


def pjsip_show_contacts(ast: Asterisk) -> dict[str, str]:
    """``pjsip show contacts`` by the contact URI's user part."""
    return {
        uri.split("@", 1)[0].split(":", 1)[-1]: state
        for uri, state in ast.pjsip_show_contacts().items()
    }


def settle_qualify(w: World) -> None:
    """Until Asterisk shows every phone as the phone answers."""
    if w.sip is not None:

        def sip_ready() -> bool:
            peers = w.ast.sip_show_peers()
            return all(peers.get(name, "").startswith(want) for name, _, _, want in SIP_PHONES)

        wait_until("chan_sip qualify to settle", sip_ready)
    wanted = {"pj1-desk": "Avail", "pj1-mobile": "Unavail", "pj2": "Avail"}

    def pjsip_ready() -> bool:
        contacts = pjsip_show_contacts(w.ast)
        return all(contacts.get(user) == state for user, state in wanted.items())

    wait_until("PJSIP qualify to settle", pjsip_ready)


# -- the recordings ---------------------------------------------------------------------


@dataclass
class Recording:
    name: str
    what: str
    conversation: Conversation


class Recorder:
    def __init__(self, w: World) -> None:
        self.w = w
        self.recordings: list[Recording] = []

    def open(self) -> Conversation:
        passwords = [password_of(name) for name in PJSIP_ENDPOINTS]
        conv = Conversation(self.w.ports.ami, self.w.secret, passwords)
        conv.settle(lambda d: d.endswith(b"\r\n"), quiet=0.2)  # the banner
        return conv

    def logged_in(self, user: str = "mor", events: str = "off") -> Conversation:
        conv = self.open()
        conv.login(user, self.w.secret, events=events)
        return conv

    def keep(self, name: str, what: str, conv: Conversation) -> None:
        conv.close()
        self.recordings.append(Recording(f"ast{self.w.version}-{name}", what, conv))

    def ask(
        self,
        name: str,
        what: str,
        requests: Sequence[tuple[str, dict[str, str], Optional[bytes]]],
        user: str = "mor",
    ) -> None:
        """Log in, send each action (waiting for its answer: ``until`` in the stream's tail,
        or one message), log off."""
        conv = self.logged_in(user)
        for action, headers, end in requests:
            mark = len(conv.received())
            conv.action(action, **headers)
            check = _ended(end) if end is not None else _one_message
            conv.settle(lambda data: check(data[mark:]))  # noqa: B023 - used at once
        self.logoff(conv)
        self.keep(name, what, conv)

    @staticmethod
    def logoff(conv: Conversation) -> None:
        conv.action("Logoff", ActionID="bye")
        conv.settle(quiet=0.3)

    # -- what every version records ---------------------------------------------------

    def common(self) -> None:
        conv = self.open()
        conv.login("mor", self.w.secret, events="off", ActionID="login-1")
        self.keep("login", "banner, Login accepted (Events: off), then the client closes", conv)

        conv = self.open()
        conv.action("Login", Username="mor", Secret=WRONG_SECRET, Events="off", ActionID="login-2")
        conv.settle(quiet=2.0)  # Asterisk answers after about 1 s, then closes
        self.keep("login-refused", f"Login with a wrong secret ({WRONG_SECRET!r})", conv)

        conv = self.logged_in()
        self.logoff(conv)
        self.keep("logoff", "Login, Logoff: Goodbye, Asterisk closes", conv)

        self.ask(
            "ping",
            "Ping with and without ActionID",
            [("Ping", {"ActionID": "ping-1"}, None), ("Ping", {}, None)],
        )
        self.ask(
            "coresettings",
            "CoreSettings with and without ActionID",
            [("CoreSettings", {"ActionID": "cs-1"}, None), ("CoreSettings", {}, None)],
        )
        self.ask(
            "corestatus",
            "CoreStatus with and without ActionID",
            [("CoreStatus", {"ActionID": "st-1"}, None), ("CoreStatus", {}, None)],
        )
        self.ask(
            "pjsipshowcontacts",
            "PJSIPShowContacts with and without ActionID: pj1 has two contacts on one AOR "
            "(pj1-desk answers qualify at once, pj1-mobile never), pj2 one that answers "
            "0.3 s late, pj3 none",
            [
                ("PJSIPShowContacts", {"ActionID": "pc-1"}, b"Event: ContactListComplete"),
                ("PJSIPShowContacts", {}, b"Event: ContactListComplete"),
            ],
        )
        self.ask(
            "pjsipshowendpoints",
            "PJSIPShowEndpoints with and without ActionID (pj1..pj4; pj3 and pj4 have no contact)",
            [
                ("PJSIPShowEndpoints", {"ActionID": "pe-1"}, b"Event: EndpointListComplete"),
                ("PJSIPShowEndpoints", {}, b"Event: EndpointListComplete"),
            ],
        )
        self.ask(
            "pjsipshowendpoint",
            "PJSIPShowEndpoint of pj1 (two contacts), of pj3 (none), of an unknown endpoint",
            [
                (
                    "PJSIPShowEndpoint",
                    {"ActionID": "pd-1", "Endpoint": "pj1"},
                    b"Event: EndpointDetailComplete",
                ),
                (
                    "PJSIPShowEndpoint",
                    {"ActionID": "pd-3", "Endpoint": "pj3"},
                    b"Event: EndpointDetailComplete",
                ),
                ("PJSIPShowEndpoint", {"ActionID": "pd-x", "Endpoint": "ghost"}, None),
            ],
        )
        self.ask(
            "permission-denied",
            "the AMI user 'reader' (read = system,reporting, no write) asks SIPpeers, "
            "CoreSettings, CoreStatus, PJSIPShowContacts, Ping",
            [
                ("SIPpeers", {"ActionID": "r-1"}, None),
                ("CoreSettings", {"ActionID": "r-2"}, None),
                ("CoreStatus", {"ActionID": "r-3"}, None),
                ("PJSIPShowContacts", {"ActionID": "r-4"}, None),
                ("Ping", {"ActionID": "r-5"}, None),
            ],
            user="reader",
        )

    def chan_sip(self) -> None:
        self.ask(
            "sippeers",
            "SIPpeers with and without ActionID; chan_sip realtime from MOR's devices: 101 "
            "answers qualify at once, 102 0.3 s late (qualify=200), 103 never (qualify=300), "
            "104 has qualify=no",
            [
                ("SIPpeers", {"ActionID": "sp-1"}, b"Event: PeerlistComplete"),
                ("SIPpeers", {}, b"Event: PeerlistComplete"),
            ],
        )
        self.ask(
            "sipshowpeer",
            "SIPshowpeer of 101 (OK), 102 (LAGGED), 103 (UNREACHABLE), 104 (Unmonitored); "
            "the last one without ActionID",
            [
                ("SIPshowpeer", {"ActionID": "p-101", "Peer": "101"}, None),
                ("SIPshowpeer", {"ActionID": "p-102", "Peer": "102"}, None),
                ("SIPshowpeer", {"ActionID": "p-103", "Peer": "103"}, None),
                ("SIPshowpeer", {"Peer": "104"}, None),
            ],
        )
        self.ask(
            "sipshowpeer-unknown",
            "SIPshowpeer of a peer chan_sip does not know, with and without ActionID",
            [
                ("SIPshowpeer", {"ActionID": "p-x", "Peer": "ghost"}, None),
                ("SIPshowpeer", {"Peer": "ghost"}, None),
            ],
        )

    def no_chan_sip(self) -> None:
        self.ask(
            "sippeers",
            "SIPpeers and SIPshowpeer where chan_sip does not exist",
            [
                ("SIPpeers", {"ActionID": "sp-1"}, None),
                ("SIPpeers", {}, None),
                ("SIPshowpeer", {"ActionID": "p-101", "Peer": "101"}, None),
            ],
        )

    @staticmethod
    def unregister(bank: PhoneBank, phone: Phone) -> None:
        """REGISTER with Expires: 0 (the answer to the digest challenge keeps it)."""
        bank.unregister([phone])

    @staticmethod
    def step(conv: Conversation, change: Callable[[], None], wanted: bytes) -> None:
        """Make one change on the phones' side; wait for the event it provokes (and any that
        follow it within a second)."""
        mark = len(conv.received())
        change()
        conv.settle(lambda data: wanted in data[mark:], quiet=1.0, timeout=30.0)

    def chan_sip_events(self) -> None:
        w = self.w
        bank = w.sip
        assert bank is not None
        name, qualify = SIP_EVENT_PHONE
        conv = self.logged_in(events="system")
        conv.settle(quiet=1.0)
        phone = bank.add(phone_of(name, UP))
        self.step(conv, lambda: bank.register([phone]), b"PeerStatus: Reachable")
        self.step(conv, lambda: bank.set_answer(name, LATE), b"PeerStatus: Lagged")
        self.step(conv, lambda: bank.set_answer(name, UP), b"PeerStatus: Reachable")
        self.step(conv, lambda: bank.set_answer(name, NEVER), b"PeerStatus: Unreachable")
        self.step(conv, lambda: bank.set_answer(name, UP), b"PeerStatus: Reachable")
        self.step(conv, lambda: self.unregister(bank, phone), b"PeerStatus: Unregistered")
        self.logoff(conv)
        self.keep(
            "events-sip",
            "Login with Events: system (as the listener logs in); chan_sip phone "
            f"{name} (qualify={qualify}) registers and answers qualify after {UP:g} s, then "
            f"after {LATE:g} s (Lagged), {UP:g} s, never (Unreachable), {UP:g} s, "
            "then unregisters (Expires: 0)",
            conv,
        )

    def pjsip_events(self) -> None:
        w = self.w
        bank = w.pjsip
        name = PJSIP_EVENT_PHONE
        conv = self.logged_in(events="system")
        conv.settle(quiet=1.0)
        phone = bank.add(phone_of(name, UP))
        self.step(conv, lambda: bank.register([phone]), b"ContactStatus: Reachable")
        self.step(conv, lambda: bank.set_answer(name, NEVER), b"ContactStatus: Unreachable")
        self.step(conv, lambda: bank.set_answer(name, UP), b"ContactStatus: Reachable")
        self.step(conv, lambda: self.unregister(bank, phone), b"ContactStatus: Removed")
        self.logoff(conv)
        self.keep(
            "events-pjsip",
            "Login with Events: system (as the listener logs in); PJSIP contact "
            f"{name} registers and answers qualify after {UP:g} s, then never (Unreachable), "
            f"then after {UP:g} s again, then unregisters (Expires: 0)",
            conv,
        )

    def record(self) -> list[Recording]:
        release = RELEASES[self.w.version]
        self.common()
        if release.chan_sip:
            self.chan_sip()
        else:
            self.no_chan_sip()
        if release.chan_sip:
            self.chan_sip_events()
        self.pjsip_events()
        return self.recordings


def header(w: World, recording: Recording, date: str) -> str:
    release = RELEASES[w.version]
    lines = [
        f"# {recording.what[:1].upper()}{recording.what[1:]}.",
        "# Recorded by `python -m testbed.record` from a real Asterisk over a raw TCP socket:",
        f"# Debian {release.suite}'s package asterisk {w.package}, run by testbed.asterisk",
        "# (chan_sip realtime from MOR's devices table via res_config_mysql, static PJSIP)."
        if release.chan_sip
        else "# (PJSIP only).",
        f"# Date: {date}",
        "# Masked: only secrets: the AMI secret of a Login (Secret: <masked>) and PJSIP auth",
        "# passwords (Password: <masked>).",
        "# Format: see README.md in this folder (>>> sent, <<< received, exact byte counts).",
        HEADER_END,
    ]
    return "\n".join(lines) + "\n"


def record_version(version: str, out: Path, log: Callable[[str], None]) -> list[Path]:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    written = []
    with world(version) as w:
        log(f"Asterisk {version} ({w.package}) up on AMI port {w.ports.ami}; waiting for qualify")
        settle_qualify(w)
        for recording in Recorder(w).record():
            path = out / f"{recording.name}.txt"
            path.write_bytes(
                header(w, recording, date).encode() + recording.conversation.transcript()
            )
            written.append(path)
            log(f"  {path}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.record",
        description="Record AMI transcripts from Debian's real Asterisk 16 and 22.",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "ami")
    parser.add_argument("versions", nargs="*", default=sorted(RELEASES))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for version in args.versions:
            record_version(version, args.out, lambda text: print(text, flush=True))
    except TestbedError as err:
        print(f"testbed.record: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
