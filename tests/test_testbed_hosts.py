"""The nspawn hosts the Ansible tests run against (``testbed.hosts``): a collector host and
a gui host booted side by side, each with systemd as PID 1, its own ports and SSH."""

from __future__ import annotations

import contextlib
import secrets
import urllib.request
from collections.abc import Iterator

import pytest

from testbed.hosts import Host, TestbedError, boot_host

pytestmark = pytest.mark.ansible


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    try:
        with contextlib.ExitStack() as stack:
            collector = stack.enter_context(boot_host("collector", flavour="collector"))
            gui = stack.enter_context(boot_host("gui", flavour="gui"))
            yield collector, gui
    except TestbedError as err:
        pytest.fail(f"nspawn hosts: {err}", pytrace=False)


def test_each_host_runs_systemd_as_pid_1(hosts: tuple[Host, Host]) -> None:
    for host in hosts:
        said = host.ssh("cat /proc/1/comm; hostname; systemctl is-system-running").stdout
        assert said.split() == ["systemd", host.name, "running"]
        assert f" ansible_port={host.ssh_port} " in host.inventory_line()


def test_gui_web_servers_answer_on_their_own_ports(hosts: tuple[Host, Host]) -> None:
    _, gui = hosts
    assert set(gui.ports) == {"apache", "nginx"}
    for server, says in (("apache", "Apache/"), ("nginx", "nginx/")):
        url = f"http://127.0.0.1:{gui.ports[server]}/"
        with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 -- loopback
            assert reply.status == 200
            assert reply.headers["Server"].startswith(says)


def test_hardened_units_run_inside(hosts: tuple[Host, Host]) -> None:
    hardened = "-p ProtectSystem=strict -p PrivateTmp=yes -p NoNewPrivileges=yes"
    for host in hosts:
        host.ssh(f"systemd-run --quiet --wait {hardened} /bin/true", timeout=30)


def test_collector_host_is_bare(hosts: tuple[Host, Host]) -> None:
    collector, _ = hosts
    assert collector.ssh("dpkg -s python3-venv", check=False).returncode != 0
    assert collector.ssh("systemctl is-enabled cron").stdout.strip() == "enabled"
    assert "deb http" in (collector.root / "etc/apt/sources.list").read_text()


def test_reboot_keeps_the_tree_and_the_other_host(hosts: tuple[Host, Host]) -> None:
    collector, gui = hosts
    token = secrets.token_hex(8)
    collector.ssh(f"echo {token} > /root/kept; touch /run/gone-after-reboot")
    gui_sshd = gui.ssh("systemctl show -p MainPID --value ssh").stdout
    collector.stop()
    assert (collector.root / "root/kept").read_text().strip() == token
    assert gui.ssh("systemctl show -p MainPID --value ssh").stdout == gui_sshd
    collector.start()
    said = collector.ssh(
        "cat /root/kept; ls /run/gone-after-reboot; systemctl is-active cron", check=False
    )
    assert said.stdout.split() == [token, "active"]  # /run is new: a real boot
