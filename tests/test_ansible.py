"""The Ansible roles and playbooks, run for real with ansible-playbook into a temporary root.

Every run installs into ``mor_install_root`` (a folder under pytest's tmp) over a
local connection, from a wheelhouse built once per session, so nothing outside the
folder changes. Here: the static checks, refused settings, the platform check on each
family's facts, and one install of the collector and one of the widget shared by the
tests of this module (building a venv costs seconds); tests that change what they left
put it back, and the last one uninstalls both. The collector's life across runs and
servers is in test_ansible_lifecycle.py; the real hosts over SSH in test_fleet.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_runner import (
    BIN,
    LAUNCHER,
    LEGACY_COLLECTOR,
    MOR_CRON,
    REPO,
    Ansible,
    Run,
    collector_vars,
    local_fact,
    read_env_file,
    seed_mor_server,
    tree,
    wait_for_http,
    widget_vars,
)
from regstatus_helpers import MorDatabase, mor_database

from mor_plugin.simulator import AmiSimulator, SimPeer, run_in_thread
from testbed.asterisk import free_port

pytestmark = pytest.mark.ansible

PLAYBOOKS = [
    "site.yml",
    "collector.yml",
    "widget.yml",
    "check.yml",
    "uninstall.yml",
    "rollback.yml",
]
ROLES = ["mor_retrieve_peers", "mor_status_widget"]

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fleet_db(mariadb: None) -> Iterator[MorDatabase]:
    """A MOR database once per module: the shared install points its mor.conf at it."""
    with mor_database("mor_a") as db:
        db.add_server(1)
        db.add_device(1, "dev1")
        db.add_device(2, "dev2")
        db.add_device(3, "dev3", qualify="no")
        yield db


@pytest.fixture(scope="module")
def sim() -> Iterator[AmiSimulator]:
    peers = [
        SimPeer("dev1", "OK (12 ms)", ip="10.0.0.1", port=5060),
        SimPeer("dev2", "UNREACHABLE", ip="10.0.0.2", port=5060),
        SimPeer("dev3", "Unmonitored", ip="10.0.0.3", port=5060),
    ]
    with run_in_thread(AmiSimulator(peers, version="11", username="mor", secret="s3cret")) as s:
        yield s


@dataclass
class Installed:
    root: Path
    mor_files: dict[str, bytes]
    first: Run
    second: Run
    vars: dict[str, Any]


@pytest.fixture(scope="module")
def collector(
    tmp_path_factory: pytest.TempPathFactory,
    ansible: Ansible,
    wheelhouse: Path,
    fleet_db: MorDatabase,
    sim: AmiSimulator,
) -> Installed:
    """collector.yml run twice on a MOR server's files, with the event listener's unit."""
    root = tmp_path_factory.mktemp("collector") / "root"
    mor_files = seed_mor_server(root, fleet_db.url, sim.port)
    extra = collector_vars(root, wheelhouse, mor_retrieve_peers_watch=True)
    first = ansible.playbook("collector.yml", extra)
    assert first.rc == 0, first.out[-4000:]
    second = ansible.playbook("collector.yml", extra)
    return Installed(root, mor_files, first, second, extra)


@pytest.fixture(scope="module")
def collected(collector: Installed, fleet_db: MorDatabase) -> Installed:
    """The installed launcher, run once as cron would run it."""
    done = subprocess.run(
        [str(collector.root / "usr/local/mor/mor_retrieve_peers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return collector


# --------------------------------------------------------------------------- static checks


def test_ansible_lint_production_profile_is_clean() -> None:
    done = subprocess.run(
        [str(BIN / "ansible-lint"), "--nocolor"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_passes_syntax_check(ansible: Ansible, playbook: str) -> None:
    result = ansible.playbook(playbook, {}, "--syntax-check")
    assert result.rc == 0, result.out


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_document_every_default(role: str) -> None:
    base = REPO / "roles" / role
    defaults = yaml.safe_load((base / "defaults/main.yml").read_text())
    specs = yaml.safe_load((base / "meta/argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    # mor_install_root is shared by both roles: documented, defaulted in vars/main.yml
    assert set(defaults) | {"mor_install_root"} <= set(options)
    for name, value in defaults.items():
        assert options[name].get("default") == value, name
    undocumented_private = [name for name in options if name.startswith("_")]
    assert not undocumented_private
    # the shared role's settings are documented, with its defaults, by both roles
    shared = yaml.safe_load((REPO / "roles/mor_regstatus/defaults/main.yml").read_text())
    for name, value in shared.items():
        assert options[name].get("default") == value, name
    entry_points = {"main", "uninstall"} | ({"rollback"} if role == "mor_retrieve_peers" else set())
    assert set(specs) == entry_points


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("playbook", "variable", "value", "message"),
    [
        ("collector.yml", "mor_retrieve_peers_logrotate", "sometimes", "unable to convert to bool"),
        ("collector.yml", "mor_retrieve_peers_health_max_age", "soon", "unable to convert to int"),
        (
            "collector.yml",
            "mor_retrieve_peers_logrotate_rotate",
            "many",
            "unable to convert to int",
        ),
        ("widget.yml", "mor_status_widget_port", "http", "unable to convert to int"),
        ("widget.yml", "mor_status_widget_web_servers", ["lighttpd"], "must be one or more of"),
        ("collector.yml", "mor_retrieve_peers_watch", "sometimes", "unable to convert to bool"),
        (
            "collector.yml",
            "mor_retrieve_peers_manage_service",
            "perhaps",
            "unable to convert to bool",
        ),
        (
            "widget.yml",
            "mor_status_widget_metrics_allow",
            {"net": "10.0.0.0/8"},
            "unable to convert to list",
        ),
        ("widget.yml", "mor_status_widget_cache_seconds", "soon", "unable to convert to float"),
        ("widget.yml", "mor_status_widget_cache_seconds", 90, "between 0 and 60"),
    ],
)
def test_a_wrong_variable_is_refused_before_any_task_runs(
    tmp_path: Path,
    ansible: Ansible,
    wheelhouse: Path,
    playbook: str,
    variable: str,
    value: Any,
    message: str,
) -> None:
    root = tmp_path / "root"
    seed_mor_server(root, "sqlite:///nowhere.db", 9)
    before = tree(root)
    extra = {
        **collector_vars(root, wheelhouse),
        **widget_vars(root, wheelhouse, "sqlite:///nowhere.db"),
        variable: value,
    }
    result = ansible.playbook(playbook, extra)
    assert result.rc != 0
    assert variable in result.out and message in result.out, result.out[-3000:]
    assert "Validating arguments against arg spec" in result.out
    assert "changed=0" in result.out
    assert tree(root) == before


def test_the_widget_without_a_database_url_is_refused_naming_it(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    extra = widget_vars(tmp_path / "root", wheelhouse, "x")
    del extra["mor_status_widget_db_url"]
    result = ansible.playbook("widget.yml", extra)
    assert result.rc != 0
    assert "missing required arguments: mor_status_widget_db_url" in result.out
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------- platforms


def facts(
    family: str, distribution: str, version: str, service_mgr: str = "systemd"
) -> dict[str, str]:
    """The facts the role branches on, as setup reports them on that platform."""
    return {
        "os_family": family,
        "distribution": distribution,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "service_mgr": service_mgr,
        "architecture": "x86_64",
    }


@pytest.mark.parametrize(
    ("platform", "python", "expected"),
    [
        (facts("Debian", "Debian", "12.11"), "", ("python3", ["python3-venv"])),
        (facts("Debian", "Ubuntu", "24.04"), "", ("python3", ["python3-venv"])),
        (facts("Debian", "Debian", "12.11"), "python3.11", ("python3.11", ["python3.11-venv"])),
        (facts("RedHat", "Rocky", "8.10"), "", ("python3.9", ["python39", "python39-pip"])),
        (
            facts("RedHat", "AlmaLinux", "8.10"),
            "python3.11",
            ("python3.11", ["python3.11", "python3.11-pip"]),
        ),
        (facts("RedHat", "RedHat", "9.6"), "", ("python3", ["python3", "python3-pip"])),
        (
            facts("RedHat", "CentOS", "7.9"),
            "",
            "supported are Debian 11+, Ubuntu 20.04+ and EL 8/9",
        ),
        (facts("Alpine", "Alpine", "3.20", "openrc"), "", "supported are Debian 11+"),
        (facts("Debian", "Debian", "12.11", "sysvinit"), "", "is managed by sysvinit, not systemd"),
    ],
    ids=[
        "debian12",
        "ubuntu24",
        "debian-py311",
        "el8",
        "el8-py311",
        "el9",
        "el7",
        "alpine",
        "sysv",
    ],
)
def test_each_platform_gets_its_interpreter_and_packages_or_a_clear_refusal(
    ansible: Ansible, platform: dict[str, str], python: str, expected: Any
) -> None:
    """EL cannot be booted here: the role's own platform check runs on EL's facts."""
    result = ansible.playbook(
        REPO / "tests/data/ansible/platform_needs.yml",
        {"platform_facts": platform, "python": python},
    )
    if isinstance(expected, str):
        assert result.rc != 0
        assert expected in result.out, result.out[-2000:]
        return
    assert result.rc == 0, result.out[-3000:]
    chosen = re.search(r'"NEEDS (\{.*\})"', result.out)
    assert chosen, result.out[-2000:]
    interpreter, packages = expected
    assert json.loads(chosen.group(1).replace('\\"', '"')) == {
        "python": interpreter,
        "packages": packages,
    }


# --------------------------------------------------------------------------- the collector


def test_first_run_installs_the_collector(collector: Installed) -> None:
    root = collector.root
    assert collector.first.changed > 0
    launcher = root / "usr/local/mor/mor_retrieve_peers"
    assert launcher.stat().st_mode & 0o777 == 0o755
    assert "mor-regstatus launcher" in launcher.read_text()
    assert (root / "opt/mor-regstatus/venv/bin/mor-retrieve-peers").exists()
    assert (root / "etc/ansible/facts.d/mor_registration_status.fact").stat().st_mode & 0o111
    assert (
        f"{root}/var/log/mor/ami_debug.log {{"
        in (root / "etc/logrotate.d/mor_retrieve_peers").read_text()
    )
    # MOR's legacy collector is kept for the uninstall
    assert (root / "var/lib/mor-regstatus/legacy/mor_retrieve_peers").read_bytes() == (
        LEGACY_COLLECTOR
    )


def test_second_run_changes_nothing(collector: Installed) -> None:
    assert collector.second.rc == 0, collector.second.out[-3000:]
    assert collector.second.changed == 0, collector.second.changed_tasks


def test_mor_cron_line_is_replaced_in_place_and_other_lines_survive(collector: Installed) -> None:
    cron = (collector.root / "etc/cron.d/mor_minute_actions").read_text()
    assert cron == MOR_CRON.replace(
        "*/10 * * * * root /usr/local/mor/mor_retrieve_peers",
        f"* * * * * root {collector.root}/usr/local/mor/mor_retrieve_peers",
    )


def test_mor_conf_survives_byte_for_byte(collector: Installed) -> None:
    rel = "var/lib/asterisk/agi-bin/mor.conf"
    assert (collector.root / rel).read_bytes() == collector.mor_files[rel]


def test_installed_launcher_updates_reg_status(collected: Installed, fleet_db: MorDatabase) -> None:
    assert fleet_db.reg_statuses() == {
        "dev1": "OK (12 ms)",
        "dev2": "UNREACHABLE",
        "dev3": "Unmonitored",
    }
    state = json.loads((collected.root / "var/lib/mor-regstatus/state.json").read_text())
    assert state["last_result"] == "ok"
    assert (collected.root / "var/log/mor/ami_debug.log").read_text()


def test_local_fact_reports_the_install_and_the_last_run(
    collected: Installed, ansible: Ansible
) -> None:
    fact = local_fact(ansible, collected.root)
    assert fact is not None
    assert fact["installed"] is True
    assert fact["last_result"] == "ok"
    assert fact["version"] == "0.1.0"
    assert fact["cron_schedule"] == "* * * * *"
    assert fact["server_id"] == 1
    assert fact["debug"] is False
    assert fact["launcher_ok"] is True
    assert fact["watch"] is True
    assert fact["counts"]["ok"] == 1 and fact["counts"]["unreachable"] == 1
    assert 0 <= fact["last_run_age_s"] < 300


def listener_unit(root: Path) -> Path:
    return root / "etc/systemd/system/mor-retrieve-peers-watch.service"


def test_listener_unit_is_hardened_and_runs_with_the_launchers_paths(
    collector: Installed,
) -> None:
    root = collector.root
    unit = listener_unit(root).read_text()
    assert unit.startswith("#\n# Ansible managed\n")
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert exec_start
    assert shlex.split(exec_start.group(1)) == [
        f"{root}/opt/mor-regstatus/venv/bin/mor-retrieve-peers",
        "--watch",
        "--config",
        f"{root}/var/lib/asterisk/agi-bin/mor.conf",
        "--log-file",
        f"{root}/var/log/mor/ami_debug.log",
        "--state-file",
        f"{root}/var/lib/mor-regstatus/state.json",
        "--lock-file",
        f"{root}/var/lib/mor-regstatus/mor_retrieve_peers.lock",
    ]
    # the same files as the cron poll's launcher
    launcher = (root / "usr/local/mor/mor_retrieve_peers").read_text()
    for path in shlex.split(exec_start.group(1))[3::2]:
        assert f" {path} " in launcher, path
    for line in (
        "After=asterisk.service network-online.target mariadb.service mysqld.service",
        "User=root",
        "Restart=on-failure",
        "RestartSec=5",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={root}/var/log/mor {root}/var/lib/mor-regstatus",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "WantedBy=multi-user.target",
    ):
        assert line + "\n" in unit, line


def test_listener_started_as_its_unit_says_holds_its_own_lock_and_stops_on_sigterm(
    collected: Installed, tmp_path: Path
) -> None:
    """The unit's ExecStart as systemd would run it; systemd's stop is a SIGTERM."""
    unit = listener_unit(collected.root).read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert exec_start
    watch_lock = collected.root / "var/lib/mor-regstatus/mor_retrieve_peers.lock.watch"
    log = collected.root / "var/log/mor/ami_debug.log"
    logged_before = log.stat().st_size
    with (tmp_path / "listener.out").open("wb") as out:
        listener = subprocess.Popen(
            shlex.split(exec_start.group(1)), cwd="/", stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while "listener started" not in log.read_text()[logged_before:]:
            assert listener.poll() is None, (tmp_path / "listener.out").read_text()
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        assert watch_lock.exists()
        # the cron poll runs beside it
        poll = subprocess.run(
            [str(collected.root / "usr/local/mor/mor_retrieve_peers"), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert poll.returncode == 0, poll.stdout + poll.stderr
        assert "holds" not in poll.stdout
    finally:
        listener.terminate()
        code = listener.wait(timeout=20)
    assert code == 0, (tmp_path / "listener.out").read_text()


def test_turning_the_listener_off_removes_its_unit(collector: Installed, ansible: Ansible) -> None:
    unit = listener_unit(collector.root)
    saved = unit.read_bytes()
    fact = collector.root / "etc/ansible/facts.d/mor_registration_status.fact"
    try:
        off = ansible.playbook(
            "collector.yml",
            {**collector.vars, "mor_retrieve_peers_watch": False},
            "--tags",
            "mor_retrieve_peers_configure",
        )
        assert off.rc == 0, off.out[-3000:]
        assert off.changed_tasks == ["mor_retrieve_peers : Remove the listener's unit"]
        assert not unit.exists()
        shown = subprocess.run([str(fact)], capture_output=True, text=True, check=True)
        assert json.loads(shown.stdout)["watch"] is False
    finally:
        unit.write_bytes(saved)  # what the shared install left (no systemd to tell)
        unit.chmod(0o644)


def test_the_fact_prints_json_when_the_state_file_is_broken(collected: Installed) -> None:
    state = collected.root / "var/lib/mor-regstatus/state.json"
    saved = state.read_bytes()
    try:
        state.write_text("{not json")
        done = subprocess.run(
            [str(collected.root / "etc/ansible/facts.d/mor_registration_status.fact")],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        state.write_bytes(saved)
    fact = json.loads(done.stdout)
    assert fact["installed"] is True and fact["last_result"] is None
    assert "state.json" in fact["errors"][0]


def test_check_playbook_passes_after_a_good_run(collected: Installed, ansible: Ansible) -> None:
    result = ansible.playbook("check.yml", {"mor_install_root": str(collected.root)})
    assert result.rc == 0, result.out[-3000:]
    lock = hashlib.sha256((REPO / "requirements/collector.lock").read_bytes()).hexdigest()
    assert re.search(
        rf"localhost: OK \| server_id 1 \| v0\.1\.0 lock {lock[:12]} \| cron '\* \* \* \* \*' \| "
        r"last run \S+ \(\d+ s ago\): ok \| 3 peers: .*ok=1 .*\| debug off",
        result.out,
    ), result.out


def test_check_playbook_fails_a_server_whose_last_run_is_stale(
    collected: Installed, ansible: Ansible
) -> None:
    state = collected.root / "var/lib/mor-regstatus/state.json"
    saved = state.read_bytes()
    payload = json.loads(saved)
    payload["last_run"] = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    try:
        state.write_text(json.dumps(payload))
        result = ansible.playbook("check.yml", {"mor_install_root": str(collected.root)})
    finally:
        state.write_bytes(saved)
    assert result.rc != 0
    assert re.search(r"localhost: FAIL .*last run 7\d\d\d s ago \(limit 900 s\)", result.out), (
        result.out
    )


@pytest.mark.parametrize(
    ("state", "problems"),
    [
        ("{not json", ["never ran", "the fact could not read: "]),
        (
            '{"last_run": "yesterday", "last_result": "ok"}',
            ['age of the last run unknown (last_run "yesterday")', "the fact could not read: "],
        ),
    ],
    ids=["unreadable", "unknown-age"],
)
def test_check_playbook_fails_a_fact_it_cannot_trust(
    collected: Installed, ansible: Ansible, state: str, problems: list[str]
) -> None:
    state_file = collected.root / "var/lib/mor-regstatus/state.json"
    saved = state_file.read_bytes()
    try:
        state_file.write_text(state)
        result = ansible.playbook("check.yml", {"mor_install_root": str(collected.root)})
    finally:
        state_file.write_bytes(saved)
    assert result.rc != 0
    assert "localhost: FAIL" in result.out
    assert "None s ago" not in result.out
    for problem in problems:
        assert problem in result.out, result.out[-3000:]


def test_no_secret_of_mor_conf_reaches_the_output_even_verbose(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    files = seed_mor_server(root, "mysql+pymysql://mor:Db-pa55word@127.0.0.1/mor", 9)
    extra = collector_vars(root, wheelhouse, mor_retrieve_peers_debug=True)
    result = ansible.playbook(
        "collector.yml", extra, "--tags", "mor_retrieve_peers_configure", "-vvv", "--diff"
    )
    assert result.rc == 0, result.out[-3000:]
    assert "DEBUG = 1" in (root / "var/lib/asterisk/agi-bin/mor.conf").read_text()
    encoded = base64.b64encode(files["var/lib/asterisk/agi-bin/mor.conf"]).decode()
    for secret in ("Db-pa55word", "s3cret", encoded[:40]):
        assert secret not in result.out


def test_check_playbook_fails_a_server_without_the_collector(
    tmp_path: Path, ansible: Ansible
) -> None:
    result = ansible.playbook("check.yml", {"mor_install_root": str(tmp_path)})
    assert result.rc != 0
    assert "localhost: FAIL | not installed" in result.out


# --------------------------------------------------------------------------- the widget


@pytest.fixture(scope="module")
def widget(
    tmp_path_factory: pytest.TempPathFactory,
    ansible: Ansible,
    wheelhouse: Path,
    fleet_db: MorDatabase,
) -> Installed:
    root = tmp_path_factory.mktemp("widget") / "root"
    extra = widget_vars(
        root,
        wheelhouse,
        fleet_db.url,
        mor_status_widget_port=free_port(),
        mor_status_widget_metrics_allow=["127.0.0.1", "::1", "10.0.0.0/24"],
        mor_status_widget_cache_seconds=0.5,
    )
    first = ansible.playbook("widget.yml", extra)
    assert first.rc == 0, first.out[-4000:]
    second = ansible.playbook("widget.yml", extra)
    return Installed(root, {}, first, second, extra)


def test_widget_second_run_changes_nothing_and_keeps_its_secret(widget: Installed) -> None:
    assert widget.first.changed > 0
    assert widget.second.rc == 0, widget.second.out[-3000:]
    assert widget.second.changed == 0, widget.second.changed_tasks


def test_widget_env_file_is_private_and_holds_the_settings(
    widget: Installed, fleet_db: MorDatabase
) -> None:
    env_file = widget.root / "etc/mor-status-widget/env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    env = read_env_file(env_file)
    assert env["MOR_WIDGET_DB_URL"] == fleet_db.url
    assert re.fullmatch(r"[A-Za-z0-9]{48}", env["MOR_WIDGET_SECRET"])
    assert env["MOR_WIDGET_FRAME_ANCESTORS"] == "'self'"
    assert env["MOR_WIDGET_STALE_AFTER"] == "180"
    assert env["MOR_WIDGET_METRICS_ALLOW"] == "127.0.0.1 ::1 10.0.0.0/24"
    assert env["MOR_WIDGET_CACHE_SECONDS"] == "0.5"


def test_widget_unit_is_hardened_and_listens_on_loopback(widget: Installed) -> None:
    unit = (widget.root / "etc/systemd/system/mor-status-widget.service").read_text()
    for line in (
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "User=nobody",
        f"EnvironmentFile={widget.root}/etc/mor-status-widget/env",
    ):
        assert line + "\n" in unit
    port = widget.vars["mor_status_widget_port"]
    assert f"--bind 127.0.0.1:{port} " in unit


def test_web_server_snippets_proxy_the_prefix(widget: Installed) -> None:
    port = widget.vars["mor_status_widget_port"]
    # the controller is Debian: Debian's paths, the snippet enabled as a2enconf does
    apache = (widget.root / "etc/apache2/conf-available/mor-status-widget.conf").read_text()
    link = widget.root / "etc/apache2/conf-enabled/mor-status-widget.conf"
    assert os.readlink(link) == "../conf-available/mor-status-widget.conf"
    assert '<Location "/mor-status/">' in apache
    assert f'ProxyPass "http://127.0.0.1:{port}/"' in apache
    assert 'RequestHeader set X-Forwarded-Prefix "/mor-status"' in apache
    nginx = (widget.root / "etc/nginx/snippets/mor-status-widget.conf").read_text()
    assert "location /mor-status/ {" in nginx
    assert f"proxy_pass http://127.0.0.1:{port}/;" in nginx
    assert "proxy_set_header X-Forwarded-Prefix /mor-status;" in nginx


def test_installed_widget_answers_healthz_from_mariadb(
    widget: Installed, ansible: Ansible, tmp_path: Path
) -> None:
    """The unit's ExecStart with the env file, as systemd would start it; then the role's check."""
    unit = (widget.root / "etc/systemd/system/mor-status-widget.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert exec_start
    env = {**os.environ, **read_env_file(widget.root / "etc/mor-status-widget/env")}
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            shlex.split(exec_start.group(1)),
            cwd="/",
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        port = widget.vars["mor_status_widget_port"]
        status, body = wait_for_http(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body + log.read_text()
        check = ansible.playbook(
            "widget.yml",
            {**widget.vars, "mor_status_widget_healthcheck": True},
            "--tags",
            "mor_status_widget_healthcheck",
        )
        assert check.rc == 0, check.out[-3000:]
        assert "Ask the widget's /healthz" in check.out
    finally:
        server.terminate()
        server.wait(timeout=20)


# --------------------------------------------------------------------------- uninstall


def test_uninstall_leaves_nothing_but_mors_own_files(
    collector: Installed, widget: Installed, ansible: Ansible
) -> None:
    """The last test of the module: it removes both shared installs. The collector's root
    keeps MOR's files, byte for byte; the widget's root keeps nothing."""
    for installed in (collector, widget):
        removed = ansible.playbook("uninstall.yml", installed.vars)
        assert removed.rc == 0, removed.out[-4000:]
    root = collector.root
    for rel, content in collector.mor_files.items():
        assert (root / rel).read_bytes() == content, rel
    assert (root / LAUNCHER).stat().st_mode & 0o777 == 0o755
    leftovers = [str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()]
    assert sorted(leftovers) == sorted(collector.mor_files)
    assert [p for p in widget.root.rglob("*") if not p.is_dir()] == []
