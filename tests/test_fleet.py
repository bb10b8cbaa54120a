"""The playbooks as ops run them: over SSH against real systemd Debian 12 hosts.

Two hosts booted with systemd-nspawn (``testbed.hosts``): a bare MOR Asterisk server
(no python3-venv, MOR's cron file and legacy collector) and a MOR GUI host with Apache
and nginx. ``mor_install_root`` is left at ``/``; services are managed by systemd. The
collector talks to a real Asterisk 22 (PJSIP, two phones) and to the real MariaDB,
both on the machine's loopback, which the hosts share. Neither host can reach a
package index: the install must come from the controller's wheelhouse.

The tests run in order and each goes on from the state the one before left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ansible_runner import (
    CRON,
    LAUNCHER,
    LEGACY_COLLECTOR,
    MOR_CONF,
    MOR_CRON,
    REPO,
    Ansible,
    Run,
    read_env_file,
    seed_mor_server,
    wait_for_http,
)
from regstatus_helpers import MorDatabase, mor_database, wait_for

from testbed.asterisk import (
    RELEASES,
    AmiUser,
    Asterisk,
    PjsipEndpoint,
    Ports,
    TestbedError,
    mor_files,
)
from testbed.hosts import Host, boot_host
from testbed.mariadb import root_connection, sqlalchemy_url
from testbed.phones import NEVER, Phone, PhoneBank
from widget.signing import sign_url

pytestmark = pytest.mark.ansible

AMI_SECRET = "fleet-s3cret"
# nginx serves the widget where the GUI's server block includes the snippet (a glob:
# nothing to include before the install, nothing after the uninstall)
NGINX_INCLUDE = "include /etc/nginx/snippets/mor-status-widget*.conf;"


@dataclass
class Fleet:
    collector: Host
    gui: Host
    db: MorDatabase
    widget_user: str
    phones: PhoneBank
    ansible: Ansible
    inventory: Path
    extra: dict[str, Any]
    mor_files: dict[str, bytes]

    def play(self, playbook: str, *args: str, **extra: Any) -> Run:
        return self.ansible.playbook(
            playbook, {**self.extra, **extra}, *args, inventory=self.inventory, timeout=900
        )


def widget_url(gui: Host, server: str, path: str) -> str:
    """``path`` of the widget as the GUI host's ``server`` (apache or nginx) serves it."""
    return f"http://127.0.0.1:{gui.ports[server]}/mor-status{path}"


def unit_state(host: Host, unit: str) -> tuple[str, str]:
    active = host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip()
    enabled = host.ssh(f"systemctl is-enabled {unit}", check=False).stdout.strip()
    return active, enabled


def documented_grants(database: str, user: str) -> list[str]:
    """The GRANTs docs/OPERATIONS.md gives the widget's read-only user, for this database."""
    text = (REPO / "docs/OPERATIONS.md").read_text()
    grants = re.findall(r"^\s*(GRANT SELECT ON mor\.\w+ TO 'mor_widget'@'gui-host');$", text, re.M)
    assert len(grants) >= 5, "docs/OPERATIONS.md lost the widget's GRANTs"
    return [
        g.replace("ON mor.", f"ON `{database}`.").replace("'mor_widget'@'gui-host'", user)
        for g in grants
    ]


@contextlib.contextmanager
def widget_login(db: MorDatabase) -> Iterator[tuple[str, str]]:
    """A MySQL user with no privilege yet, for the GUI host (which reaches MariaDB on the
    shared loopback): its account name and its SQLAlchemy URL."""
    name, password = f"ro_{secrets.token_hex(4)}", secrets.token_hex(8)
    account = f"'{name}'@'127.0.0.1'"
    root = root_connection()
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE USER {account} IDENTIFIED BY '{password}'")
        yield account, sqlalchemy_url(name, password, db.name)
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS {account}")
        root.close()


def mor_server(host: Host, db_url: str, ami_port: int) -> dict[str, bytes]:
    """MOR's files on the collector host, and no way to any package index."""
    files = seed_mor_server(host.root, db_url, ami_port, inside="/")
    with (host.root / "etc/hosts").open("a") as hosts:
        hosts.write("127.0.0.9 pypi.org files.pythonhosted.org\n")
    (host.root / "etc/pip.conf").write_text("[global]\nindex-url = http://127.0.0.1:9/simple\n")
    return files


@pytest.fixture(scope="module")
def fleet(mariadb: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(mor_database("mor_fleet"))
        db.add_server(1)
        db.add_device(1, "pj1", secret="pwpj1")
        db.add_device(2, "pj2", secret="pwpj2")
        widget_user, widget_url = stack.enter_context(widget_login(db))
        ports = Ports()
        files = mor_files(
            RELEASES["22"],
            ports,
            [AmiUser("mor", AMI_SECRET)],
            pjsip_endpoints=[
                PjsipEndpoint(n, f"pw{n}", qualify_timeout=0.5) for n in ("pj1", "pj2")
            ],
        )
        try:
            ast = Asterisk("22", files, name="fleet")
            stack.callback(ast.remove)
            ast.start()
            collector = stack.enter_context(boot_host("collector", flavour="collector"))
            gui = stack.enter_context(boot_host("gui", flavour="gui"))
        except TestbedError as err:
            pytest.fail(f"fleet: {err}", pytrace=False)
        phones = PhoneBank(ports.pjsip)
        phones.add(Phone("pj1", "pwpj1", answer=0.0))
        phones.add(Phone("pj2", "pwpj2", answer=NEVER))
        stack.enter_context(phones).register()

        seeded = mor_server(collector, db.url, ports.ami)
        conf = collector.root / MOR_CONF
        conf.write_text(
            conf.read_text().replace("ami_secret = s3cret", f"ami_secret = {AMI_SECRET}")
        )
        seeded[MOR_CONF] = conf.read_bytes()
        gui.ssh(
            "sed -i 's|^\\([ \\t]*\\)listen 127.0.0.1:.*|&\\n\\1" + NGINX_INCLUDE + "|' "
            "/etc/nginx/sites-available/default && nginx -t -q && systemctl reload nginx"
        )
        inventory = base / "fleet-inventory"
        inventory.write_text(
            f"[mor_asterisk]\n{collector.inventory_line()} mor_retrieve_peers_watch=true\n"
            f"[mor_gui]\n{gui.inventory_line()}\n"
        )
        extra = {
            "mor_regstatus_wheelhouse_dir": str(base / "wheelhouse"),
            "mor_status_widget_db_url": widget_url,
            "mor_status_widget_web_servers": ["apache", "nginx"],
        }
        yield Fleet(
            collector, gui, db, widget_user, phones, Ansible(base), inventory, extra, seeded
        )


def test_a_first_install_in_the_documented_order_on_bare_hosts(fleet: Fleet) -> None:
    """docs/OPERATIONS.md: collector.yml first (it makes the project's tables), then the
    widget user's GRANTs as the docs give them, then widget.yml."""
    for host in (fleet.collector, fleet.gui):
        assert host.ssh("dpkg -s python3-venv", check=False).returncode != 0
    collector = fleet.play("collector.yml")
    assert collector.rc == 0, collector.out[-5000:]
    # preflight gave the host what a venv needs
    fleet.collector.ssh("dpkg -s python3-venv >/dev/null")
    assert unit_state(fleet.collector, "mor-retrieve-peers-watch") == ("active", "enabled")
    # the health gate ran the collector against the real Asterisk
    assert fleet.db.reg_statuses()["pj1"].startswith("OK (")  # type: ignore[union-attr]
    assert fleet.db.reg_statuses()["pj2"] == "UNREACHABLE"
    # MOR's line replaced in place by ours, its other lines untouched
    cron = (fleet.collector.root / CRON).read_text().splitlines()
    assert cron == [
        "# MOR minute actions",
        "* * * * * root /usr/local/mor/mor_retrieve_peers",
        "* * * * * root /usr/local/mor/mor_minute_actions.sh >/dev/null 2>&1",
    ]
    assert (fleet.collector.root / MOR_CONF).read_bytes() == fleet.mor_files[MOR_CONF]

    root = root_connection()
    try:
        with root.cursor() as cur:
            for grant in documented_grants(fleet.db.name, fleet.widget_user):
                cur.execute(grant)
    finally:
        root.close()
    widget = fleet.play("widget.yml")
    assert widget.rc == 0, widget.out[-5000:]
    fleet.gui.ssh("dpkg -s python3-venv >/dev/null")
    assert unit_state(fleet.gui, "mor-status-widget") == ("active", "enabled")


def test_the_install_came_from_the_wheelhouse_without_any_index(fleet: Fleet) -> None:
    """pypi.org is unreachable from the hosts and pip.conf names a closed port: the
    install used neither, and installed exactly the lock's versions."""
    lock = REPO / "requirements/collector.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    installed = (fleet.collector.root / "opt/mor-regstatus/installed.json").read_text()
    assert f'"lock_sha256": "{digest}"' in installed
    frozen = fleet.collector.ssh("/opt/mor-regstatus/venv/bin/pip freeze --all").stdout
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==(\S+)(?: ;.*)? \\$", lock.read_text(), re.M))
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        if name.lower().replace("_", "-") in pins and name.lower() != "greenlet":
            assert pins[name.lower().replace("_", "-")] == version, line
    assert "sqlalchemy" in frozen.lower()


def test_the_gui_host_shows_each_phones_status_behind_apache_and_nginx(fleet: Fleet) -> None:
    """Signed links as MOR's pages make them, through each web server, read by the user
    with only the documented GRANTs: the device page (PJSIP contacts included) and JSON."""
    for server in ("apache", "nginx"):
        status, body = wait_for_http(widget_url(fleet.gui, server, "/healthz"))
        assert status == 200, (server, body)
    secret = read_env_file(fleet.gui.root / "etc/mor-status-widget/env")["MOR_WIDGET_SECRET"]
    expires = int(time.time()) + 300
    for server in ("apache", "nginx"):

        def signed(path: str, server: str = server) -> str:
            return widget_url(fleet.gui, server, sign_url(path, secret, expires))

        status, page = wait_for_http(signed("/devices/1/status"))
        assert status == 200, (server, page[-2000:])
        assert re.search(r"OK \(\d+ ms\)", page), (server, page[-2000:])
        status, body = wait_for_http(signed("/api/v1/devices/status?ids=1,2"))
        assert status == 200, (server, body)
        seen = {d["name"]: d["reg_status"] for d in json.loads(body)["devices"]}
        assert seen["pj1"].startswith("OK (") and seen["pj2"] == "UNREACHABLE", (server, seen)
        unsigned = widget_url(fleet.gui, server, "/devices/1/status")
        assert wait_for_http(unsigned)[0] == 403
    journal = fleet.gui.ssh("journalctl -u mor-status-widget --no-pager").stdout
    assert "Permission denied" not in journal


def test_a_second_site_run_changes_nothing(fleet: Fleet) -> None:
    second = fleet.play("site.yml")
    assert second.rc == 0, second.out[-4000:]
    assert second.changed == 0, second.changed_tasks


def test_check_playbook_passes_over_ssh(fleet: Fleet) -> None:
    check = fleet.play("check.yml")
    assert check.rc == 0, check.out[-3000:]
    digest = hashlib.sha256((REPO / "requirements/collector.lock").read_bytes()).hexdigest()
    assert re.search(
        rf"{fleet.collector.name}: OK \| server_id 1 \| v\S+ lock {digest[:12]} \| "
        r"cron '\* \* \* \* \*' \| last run \S+ \(\d+ s ago\): ok",
        check.out,
    ), check.out[-3000:]


def test_the_listener_applies_a_phone_that_starts_answering(fleet: Fleet) -> None:
    """Real Asterisk events, the listener under systemd: within seconds, not at the next cron."""
    fleet.phones.set_answer("pj2", 0.0)
    try:
        wait_for(
            lambda: (fleet.db.reg_statuses()["pj2"] or "").startswith("OK ("),
            timeout=30,
            every=0.5,
        )
    finally:
        fleet.phones.set_answer("pj2", NEVER)


def test_services_come_back_after_a_reboot(fleet: Fleet) -> None:
    for host in (fleet.collector, fleet.gui):
        host.stop()
        host.start()
    assert unit_state(fleet.collector, "mor-retrieve-peers-watch") == ("active", "enabled")
    assert unit_state(fleet.gui, "mor-status-widget")[1] == "enabled"
    wait_for(
        lambda: wait_for_http(widget_url(fleet.gui, "apache", "/healthz"))[0] == 200,
        timeout=30,
        every=0.5,
    )


def test_a_new_schedule_replaces_the_cron_line(fleet: Fleet) -> None:
    changed = fleet.play(
        "collector.yml",
        "--tags",
        "mor_retrieve_peers_configure",
        mor_retrieve_peers_cron_schedule="*/5 * * * *",
    )
    assert changed.rc == 0, changed.out[-3000:]
    cron = (fleet.collector.root / CRON).read_text().splitlines()
    assert cron[1] == "*/5 * * * * root /usr/local/mor/mor_retrieve_peers"
    check = fleet.play("check.yml")
    assert "cron '*/5 * * * *'" in check.out, check.out[-3000:]
    fleet.extra["mor_retrieve_peers_cron_schedule"] = "*/5 * * * *"


def test_a_web_server_dropped_from_the_list_loses_its_snippet(fleet: Fleet) -> None:
    dropped = fleet.play(
        "widget.yml",
        "--tags",
        "mor_status_widget_configure",
        mor_status_widget_web_servers=["apache"],
    )
    assert dropped.rc == 0, dropped.out[-3000:]
    assert not (fleet.gui.root / "etc/nginx/snippets/mor-status-widget.conf").exists()
    assert unit_state(fleet.gui, "nginx")[0] == "active"
    assert wait_for_http(widget_url(fleet.gui, "nginx", "/healthz"))[0] == 404
    assert wait_for_http(widget_url(fleet.gui, "apache", "/healthz"))[0] == 200
    fleet.extra["mor_status_widget_web_servers"] = ["apache"]


def test_rollback_gives_mor_its_collector_and_keeps_the_history(fleet: Fleet) -> None:
    tables = fleet.db.snapshot()
    rolled = fleet.play("rollback.yml")
    assert rolled.rc == 0, rolled.out[-3000:]
    root = fleet.collector.root
    assert (root / LAUNCHER).read_bytes() == LEGACY_COLLECTOR
    assert (root / CRON).read_text() == MOR_CRON
    assert unit_state(fleet.collector, "mor-retrieve-peers-watch")[0] != "active"
    assert (root / "opt/mor-regstatus/venv/bin/mor-retrieve-peers").exists()
    # the project's tables and every history row stay (the stopped listener may still
    # have written its last event and its own stop)
    after = fleet.db.snapshot()
    assert set(tables["mor_regstatus_history"]) <= set(after["mor_regstatus_history"])
    for table in ("mor_regstatus_devices", "mor_regstatus_servers"):
        assert len(after[table]) == len(tables[table]) > 0, table
    check = fleet.play("check.yml")  # a forgotten rollback shows
    assert check.rc != 0
    assert "launcher is not ours (rolled back" in check.out, check.out[-3000:]
    again = fleet.play("rollback.yml")
    assert again.rc == 0 and (root / CRON).read_text() == MOR_CRON
    back = fleet.play("collector.yml")
    assert back.rc == 0, back.out[-3000:]
    assert "mor-regstatus launcher" in (root / LAUNCHER).read_text()
    assert unit_state(fleet.collector, "mor-retrieve-peers-watch") == ("active", "enabled")


def test_uninstall_twice_leaves_both_hosts_as_mor_left_them(fleet: Fleet) -> None:
    for attempt in (1, 2):
        removed = fleet.play("uninstall.yml")
        assert removed.rc == 0, f"uninstall {attempt}: " + removed.out[-4000:]
        root = fleet.collector.root
        for rel, content in fleet.mor_files.items():
            assert (root / rel).read_bytes() == content, (attempt, rel)
        assert (root / LAUNCHER).stat().st_mode & 0o777 == 0o755
        for gone in (
            "opt/mor-regstatus",
            "var/lib/mor-regstatus",
            "etc/ansible/facts.d",
            "var/log/mor/ami_debug.log",
            "etc/systemd/system/mor-retrieve-peers-watch.service",
        ):
            assert not (root / gone).exists(), (attempt, gone)
        gui = fleet.gui
        assert gui.ssh("id mor-status-widget", check=False).returncode != 0
        for gone in (
            "etc/systemd/system/mor-status-widget.service",
            "etc/apache2/conf-available/mor-status-widget.conf",
            "etc/apache2/conf-enabled/mor-status-widget.conf",
            "opt/mor-status-widget",
            "etc/mor-status-widget",
        ):
            assert not (gui.root / gone).is_symlink() and not (gui.root / gone).exists(), gone
        assert unit_state(gui, "apache2")[0] == "active"
        assert wait_for_http(widget_url(gui, "apache", "/healthz"))[0] == 404
