"""The collector and the listener against Debian's own Asterisk 16 and 22, with real phones.

Asterisk 16 runs as MOR runs it: chan_sip realtime from MOR's ``devices`` table
(res_config_mysql, ``rtcachefriends``), so a device is listed only once it
registered, plus static PJSIP endpoints; Asterisk 22 has PJSIP only. The phones
(``testbed.phones``) register with digest auth and answer qualify at once, late,
or never. What the collector stores is compared with what Asterisk itself prints
(``sip show peers``, ``pjsip show contacts``) -- never with a figure of the test's own.

Without root, or without the Debian archive to build the chroots from, every test
here fails with a one-line reason; none is skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from regstatus_helpers import (
    MorDatabase,
    listening,
    mor_database,
    run,
    summary,
    wait_for,
    write_conf,
)

from mor_plugin.config import load_settings
from testbed.asterisk import (
    RELEASES,
    AmiUser,
    Asterisk,
    PjsipEndpoint,
    Ports,
    RealtimeDb,
    TestbedError,
    ensure_chroot,
)
from testbed.phones import NEVER, Phone, PhoneBank
from testbed.server import mor_server, password_of, phone_of

pytestmark = pytest.mark.mariadb

AMI_SECRET = "s3cret-ami"
SERVER = 1


@pytest.fixture(scope="session")
def chroots() -> None:
    """Both Asterisk trees, built once (and cached for later runs) or a one-line failure."""
    for version in RELEASES:
        try:
            ensure_chroot(version)
        except TestbedError as err:
            pytest.fail(f"real Asterisk {version}: {err}", pytrace=False)


# -- what Asterisk itself says -----------------------------------------------------------


def stored(mor: MorDatabase) -> dict[str, Optional[str]]:
    return mor.reg_statuses()


def status_of(mor: MorDatabase, name: str) -> Any:
    return mor.execute("SELECT reg_status FROM devices WHERE name = :n", n=name).scalar()


# -- the world: MOR's database, a real Asterisk, phones ------------------------------------


@dataclass
class World:
    mor: MorDatabase
    ast: Asterisk
    ports: Ports
    sip: Optional[PhoneBank]
    pjsip: PhoneBank
    tmp_path: Path

    def conf(self, **extra: Any) -> Path:
        values: dict[str, Any] = {
            "ami_port": self.ports.ami,
            "ami_username": "mor",
            "ami_secret": AMI_SECRET,
        }
        values.update(extra)
        return write_conf(self.tmp_path, self.mor.url, None, **values)

    def contact(self, user: str) -> str:
        return f"sip:{user}@127.0.0.1:{self.pjsip.port}"


#: chan_sip phones on Asterisk 16: name, devices.qualify, answer delay (s), assigned server
CHAN_SIP_PHONES = [
    ("101", "yes", 0.0, SERVER),  # OK
    ("102", "200", 0.3, SERVER),  # 300 ms against a 200 ms limit: LAGGED
    ("103", "300", NEVER, SERVER),  # UNREACHABLE
    ("104", "no", 0.0, SERVER),  # qualify off: Unmonitored
    ("106", "yes", 0.0, 2),  # assigned to server 2, registered here
]
#: 105 is a device of this server that never registers: NO STATUS
#: PJSIP endpoints: pj1 has a fast and a silent contact (OK), pj2 only a silent one
#: (UNREACHABLE), pj3 never registers
PJSIP_CONTACTS = [("pj1", "pj1-desk", 0.0), ("pj1", "pj1-mobile", NEVER), ("pj2", "pj2", NEVER)]
PJSIP_NAMES = ("pj1", "pj2", "pj3")


def _add_devices(mor: MorDatabase, chan_sip: bool) -> None:
    mor.add_server(SERVER)
    mor.add_server(2)
    device_id = 0
    if chan_sip:
        for device_id, (name, qualify, _, server) in enumerate(CHAN_SIP_PHONES, start=1):
            status = "OK (99 ms)" if server != SERVER else None
            mor.add_device(
                device_id, name, server_id=server, secret=password_of(name), qualify=qualify,
                reg_status=status,
            )  # fmt: skip
        mor.add_device(105, "105", secret=password_of("105"))
    for offset, name in enumerate(PJSIP_NAMES, start=201):
        mor.add_device(offset, name, secret=password_of(name))


def _world(version: str, tmp_path: Path, users: tuple[AmiUser, ...] = ()) -> Iterator[World]:
    chan_sip = RELEASES[version].chan_sip
    with mor_database("mor_ast") as mor:
        _add_devices(mor, chan_sip)
        with mor_server(
            version,
            [AmiUser("mor", AMI_SECRET), *users],
            name=f"test{version}",
            realtime=RealtimeDb(mor.name, mor.user, mor.password) if chan_sip else None,
            pjsip_endpoints=[
                PjsipEndpoint(name, password_of(name), max_contacts=2, qualify_timeout=0.5)
                for name in PJSIP_NAMES
            ],
            sip_phones=[phone_of(name, answer) for name, _, answer, _ in CHAN_SIP_PHONES],
            pjsip_phones=[phone_of(name, answer, user) for name, user, answer in PJSIP_CONTACTS],
        ) as server:
            yield World(mor, server.ast, server.ports, server.sip, server.pjsip, tmp_path)


def settled16(world: World) -> dict[str, str]:
    """Wait until Asterisk 16 has qualified every phone as the phone answers; its list."""

    def ready() -> dict[str, str]:
        peers = world.ast.sip_show_peers()
        contacts = world.ast.pjsip_show_contacts()
        ok = (
            peers.get("101", "").startswith("OK")
            and peers.get("102", "").startswith("LAGGED")
            and peers.get("103") == "UNREACHABLE"
            and peers.get("104") == "Unmonitored"
            and peers.get("106", "").startswith("OK")
            and contacts.get(world.contact("pj1-desk")) == "Avail"
            and contacts.get(world.contact("pj2")) == "Unavail"
        )
        return peers if ok else {}

    return wait_for(ready, timeout=15, every=0.2)  # type: ignore[no-any-return]


@pytest.fixture
def ast16(chroots: None, tmp_path: Path) -> Iterator[World]:
    yield from _world("16", tmp_path)


@pytest.fixture
def ast22(chroots: None, tmp_path: Path) -> Iterator[World]:
    yield from _world("22", tmp_path)


def poll(world: World, capsys: pytest.CaptureFixture[str], **conf: Any) -> dict[str, Any]:
    return summary(world.conf(**conf), capsys)


def assert_as_asterisk_lists(
    before: dict[str, str], got: Optional[str], after: dict[str, str], name: str
) -> None:
    """The stored string is one of those Asterisk printed just before and just after the run."""
    assert got in {before.get(name), after.get(name)}, (name, got, before, after)


# -- the poll ----------------------------------------------------------------------------


def test_a_chan_sip_realtime_poll_stores_exactly_what_asterisk_16_lists(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    before = settled16(ast16)
    result = poll(ast16, capsys, peer_source="sip")
    after = ast16.ast.sip_show_peers()
    got = stored(ast16.mor)
    for name in ("101", "102", "103", "104"):
        assert_as_asterisk_lists(before, got[name], after, name)
    assert got["102"] is not None and got["102"].startswith("LAGGED (")
    assert got["103"] == "UNREACHABLE" and got["104"] == "Unmonitored"
    assert got["105"] is None  # never registered: realtime never loaded it
    assert got["106"] == "OK (99 ms)"  # server 2's device: untouched
    assert [got[name] for name in PJSIP_NAMES] == [None, None, None]  # not read
    assert result["peers"] == 5


def test_a_device_of_another_server_registered_here_is_recorded_not_touched(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16)
    poll(ast16, capsys, peer_source="sip")
    row = ast16.mor.execute(
        "SELECT device_id, seen_on_server_id, assigned_server_id, peer_name, reg_status, ip, port "
        "FROM mor_regstatus_wrong_server"
    ).one()
    assert row[:5] == (5, SERVER, 2, "106", row[4])
    assert row[4].startswith("OK (")
    assert (row[5], row[6]) == ("127.0.0.1", ast16.sip.port if ast16.sip else None)
    assert status_of(ast16.mor, "106") == "OK (99 ms)"


def test_a_device_gets_a_status_only_once_it_registered(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16)
    poll(ast16, capsys, peer_source="sip")
    assert status_of(ast16.mor, "105") is None
    assert ast16.sip is not None
    phone = ast16.sip.add(Phone("105", "pw105"))
    ast16.sip.register([phone])
    wait_for(lambda: ast16.ast.sip_show_peers().get("105", "").startswith("OK"), timeout=10)
    before = ast16.ast.sip_show_peers()
    poll(ast16, capsys, peer_source="sip")
    assert_as_asterisk_lists(before, status_of(ast16.mor, "105"), ast16.ast.sip_show_peers(), "105")
    # Asterisk wrote the registration into MOR's devices row itself (rtupdate)
    row = ast16.mor.execute(
        "SELECT ipaddr, port, regseconds > 0, useragent, fullcontact FROM devices WHERE id = 105"
    ).one()
    assert tuple(row) == (
        "127.0.0.1",
        ast16.sip.port,
        1,
        "mor-test-phone",
        f"sip:105@127.0.0.1:{ast16.sip.port}",
    )


def test_a_pjsip_poll_combines_each_endpoints_contacts(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16)
    result = poll(ast16, capsys, peer_source="pjsip")
    got = stored(ast16.mor)
    assert got["pj1"] is not None and re.fullmatch(r"OK \(\d+ ms\)", got["pj1"])
    assert got["pj2"] == "UNREACHABLE"
    assert got["pj3"] is None  # never registered
    assert [got[name] for name in ("101", "102", "103", "104", "105")] == [None] * 5
    assert result["peers"] == 2


def test_both_reads_chan_sip_and_pjsip_of_asterisk_16(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16)
    result = poll(ast16, capsys, peer_source="both")
    got = stored(ast16.mor)
    assert got["101"] is not None and got["101"].startswith("OK (")
    assert got["103"] == "UNREACHABLE"
    assert got["pj1"] is not None and got["pj1"].startswith("OK (")
    assert got["pj2"] == "UNREACHABLE"
    assert result["peers"] == 7


def test_auto_reads_chan_sip_where_asterisk_16_lists_sip_peers(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16)
    result = poll(ast16, capsys)  # peer_source defaults to auto
    got = stored(ast16.mor)
    assert got["101"] is not None and got["101"].startswith("OK (")
    assert got["pj1"] is None
    assert result["peers"] == 5


def test_a_second_poll_rewrites_only_what_asterisk_changed(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16)
    poll(ast16, capsys, peer_source="both")
    first = stored(ast16.mor)
    result = poll(ast16, capsys, peer_source="both")
    second = stored(ast16.mor)
    changed = {name for name in first if first[name] != second[name]}
    assert result["changed"] == len(changed)
    assert changed <= {"101", "102", "106", "pj1"}  # only latencies can move


# -- AMI privileges ----------------------------------------------------------------------


@pytest.fixture
def ast16_users(chroots: None, tmp_path: Path) -> Iterator[World]:
    yield from _world(
        "16",
        tmp_path,
        users=(
            AmiUser("readonly", AMI_SECRET, read="system,reporting", write=""),
            AmiUser("writeonly", AMI_SECRET, read="", write="system,reporting"),
        ),
    )


def test_a_user_without_write_privileges_is_told_to_add_write(
    ast16_users: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(ast16_users.conf(ami_username="readonly", peer_source="sip"), capsys=capsys)
    assert code == 3
    assert err.strip().splitlines() == [
        "mor-retrieve-peers: AMI user 'readonly' may not run SIPpeers "
        "-- Asterisk authorises actions by the user's write classes: give it "
        "'write = system,reporting' in manager.conf"
    ]
    code, _, err = run(
        ast16_users.conf(ami_username="readonly", peer_source="pjsip"), capsys=capsys
    )
    assert code == 3
    assert "may not run PJSIPShowContacts" in err and "'write = system,reporting'" in err


def test_a_user_with_write_privileges_only_polls(
    ast16_users: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled16(ast16_users)
    result = poll(ast16_users, capsys, ami_username="writeonly", peer_source="sip")
    assert result["peers"] == 5


# -- the listener ------------------------------------------------------------------------


def listener_connected(mor: MorDatabase) -> Any:
    return mor.execute(
        "SELECT listener_connected FROM mor_regstatus_servers WHERE server_id = :s", s=SERVER
    ).scalar()


def test_the_listener_shows_a_phone_coming_back_with_the_latency_asterisk_measured(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ast16.sip is not None
    settled16(ast16)
    conf = ast16.conf(peer_source="sip", watch_ping_interval=0.5, ami_timeout=2)
    summary(conf, capsys)
    assert status_of(ast16.mor, "103") == "UNREACHABLE"
    with listening(load_settings(conf), first_backoff=0.2):
        wait_for(lambda: listener_connected(ast16.mor) == 1)
        ast16.sip.set_answer("103", 0.08)  # 80 ms against its 300 ms limit
        # chan_sip polls an unreachable peer every 10 s; its Reachable event has no Time
        wait_for(lambda: str(status_of(ast16.mor, "103")).startswith("OK"), timeout=20)
        asterisk_says = ast16.ast.sip_show_peers()["103"]
        assert status_of(ast16.mor, "103") == asterisk_says
        assert 80 <= int(asterisk_says[4:].split()[0]) < 300  # a real round trip, not 1 ms
        ast16.sip.set_answer("103", NEVER)
        started = time.monotonic()
        wait_for(lambda: status_of(ast16.mor, "103") == "UNREACHABLE", timeout=10)
        assert time.monotonic() - started < 5  # qualifyfreq 2 s + twice the 300 ms limit


def test_the_listener_reports_a_new_registration_with_its_qualify_answer(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ast16.sip is not None
    settled16(ast16)
    conf = ast16.conf(peer_source="sip", watch_ping_interval=0.5, ami_timeout=2)
    summary(conf, capsys)
    with listening(load_settings(conf), first_backoff=0.2):
        wait_for(lambda: listener_connected(ast16.mor) == 1)
        phone = ast16.sip.add(Phone("105", "pw105", answer=0.05))
        ast16.sip.register([phone])
        # chan_sip sends Registered, then no event for the first qualify answer
        wait_for(lambda: str(status_of(ast16.mor, "105")).startswith("OK"), timeout=10)
        assert status_of(ast16.mor, "105") == ast16.ast.sip_show_peers()["105"]


def test_the_listener_follows_asterisk_through_a_restart(
    ast16: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ast16.sip is not None
    settled16(ast16)
    conf = ast16.conf(peer_source="sip", watch_ping_interval=0.3, ami_timeout=1)
    summary(conf, capsys)
    with listening(load_settings(conf), first_backoff=0.2) as running:
        wait_for(lambda: listener_connected(ast16.mor) == 1)
        ast16.ast.stop()
        wait_for(lambda: listener_connected(ast16.mor) == 0, timeout=10)
        ast16.ast.start()
        ast16.sip.register()  # chan_sip realtime forgot every peer: the phones register again
        wait_for(lambda: listener_connected(ast16.mor) == 1, timeout=15)
        assert running.listener.sessions >= 2
        ast16.sip.set_answer("101", NEVER)
        wait_for(lambda: status_of(ast16.mor, "101") == "UNREACHABLE", timeout=15)
        assert ast16.ast.sip_show_peers()["101"] == "UNREACHABLE"


# -- Asterisk 22: PJSIP only ---------------------------------------------------------------


def settled22(world: World) -> dict[str, str]:
    def ready() -> dict[str, str]:
        contacts = world.ast.pjsip_show_contacts()
        ok = (
            contacts.get(world.contact("pj1-desk")) == "Avail"
            and contacts.get(world.contact("pj1-mobile")) == "Unavail"
            and contacts.get(world.contact("pj2")) == "Unavail"
        )
        return contacts if ok else {}

    return wait_for(ready, timeout=15, every=0.2)  # type: ignore[no-any-return]


def test_the_default_poll_just_works_on_asterisk_22(
    ast22: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled22(ast22)
    result = poll(ast22, capsys)  # peer_source defaults to auto: chan_sip is gone in 21+
    got = stored(ast22.mor)
    assert got["pj1"] is not None and re.fullmatch(r"OK \(\d+ ms\)", got["pj1"])
    assert (got["pj2"], got["pj3"]) == ("UNREACHABLE", None)
    assert result["peers"] == 2


def test_debians_long_asterisk_22_version_is_kept_whole_and_fitted_into_mors_column(
    ast22: World, capsys: pytest.CaptureFixture[str]
) -> None:
    version = ast22.ast.cli("core show version").split()[1]  # "Asterisk 22.10.1+dfsg+..."
    assert len(version) > 30  # Debian's own string: the case that failed every run
    settled22(ast22)
    poll(ast22, capsys)
    ours = ast22.mor.execute(
        "SELECT asterisk_version, result FROM mor_regstatus_servers WHERE server_id = :s",
        s=SERVER,
    ).one()
    assert tuple(ours) == (version, "ok")
    mors = ast22.mor.execute("SELECT version FROM servers WHERE id = :s", s=SERVER).scalar()
    assert mors == version[:30]


def test_the_listener_follows_pjsip_contacts_of_asterisk_22(
    ast22: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled22(ast22)
    conf = ast22.conf(watch_ping_interval=0.5, ami_timeout=2)
    summary(conf, capsys)
    assert status_of(ast22.mor, "pj2") == "UNREACHABLE"
    with listening(load_settings(conf), first_backoff=0.2):
        wait_for(lambda: listener_connected(ast22.mor) == 1)
        ast22.pjsip.set_answer("pj2", 0.06)
        wait_for(lambda: str(status_of(ast22.mor, "pj2")).startswith("OK ("), timeout=10)
        ms = int(str(status_of(ast22.mor, "pj2"))[4:].split()[0])
        assert 60 <= ms < 500  # RoundtripUsec of the real answer
        ast22.pjsip.set_answer("pj1-desk", NEVER)  # pj1's other contact is silent too
        wait_for(lambda: status_of(ast22.mor, "pj1") == "UNREACHABLE", timeout=10)
