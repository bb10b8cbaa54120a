"""The collector's life on a MOR server, run for real with ansible-playbook into temporary
roots over a local connection: check mode, the one cron line, the debug key, install,
uninstall and rollback in any order on servers in each state MOR leaves them in, and the
rolling update across several servers (batches, health gate, migration first).

Each test has servers of its own (one folder each); the wheelhouse is the session's.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from ansible_runner import (
    CRON,
    LAUNCHER,
    MOR_CONF,
    MOR_CRON,
    Ansible,
    collector_vars,
    local_fact,
    seed_mor_server,
    tree,
    widget_vars,
)
from regstatus_helpers import mor_database

from mor_plugin.simulator import AmiSimulator, SimPeer, run_in_thread
from testbed.asterisk import free_port

pytestmark = pytest.mark.ansible

# --------------------------------------------------------------------------- one server


def test_check_mode_on_a_fresh_mor_server_changes_nothing_on_disk(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    seed_mor_server(root, "sqlite:///nowhere.db", 9)
    before = tree(root)
    extra = {
        **collector_vars(root, wheelhouse),
        **widget_vars(root, wheelhouse, "mysql+pymysql://ro:pw@127.0.0.1/mor"),
    }
    result = ansible.playbook("site.yml", extra, "--check", "--diff")
    assert result.rc == 0, result.out[-4000:]
    assert result.changed > 0  # it says what it would do ...
    assert tree(root) == before  # ... and does none of it


def test_debug_sets_only_the_debug_line_of_mor_conf(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    files = seed_mor_server(root, "sqlite:///nowhere.db", 9)
    extra = collector_vars(root, wheelhouse, mor_retrieve_peers_debug=True)
    result = ansible.playbook("collector.yml", extra, "--tags", "mor_retrieve_peers_configure")
    assert result.rc == 0, result.out[-3000:]
    assert (root / MOR_CONF).read_bytes() == files[MOR_CONF].replace(b"DEBUG = 0", b"DEBUG = 1")


def test_exactly_one_cron_line_runs_the_collector_whatever_was_there(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    seed_mor_server(root, "sqlite:///nowhere.db", 9)
    cron = root / CRON
    cron.write_text(
        MOR_CRON
        + "0 5 * * * root /usr/local/mor/mor_retrieve_peers --full\n"
        + "#*/5 * * * * root /usr/local/mor/mor_retrieve_peers\n"
    )
    extra = collector_vars(root, wheelhouse, mor_retrieve_peers_cron_schedule="*/2 * * * *")
    result = ansible.playbook("collector.yml", extra, "--tags", "mor_retrieve_peers_configure")
    assert result.rc == 0, result.out[-3000:]
    ours = f"*/2 * * * * root {root}/usr/local/mor/mor_retrieve_peers"
    lines = cron.read_text().splitlines()
    assert lines.count(ours) == 1
    assert [line for line in lines if line != ours] == [
        "# MOR minute actions",
        "* * * * * root /usr/local/mor/mor_minute_actions.sh >/dev/null 2>&1",
        "#*/5 * * * * root /usr/local/mor/mor_retrieve_peers",
    ]


# ------------------------------------------------------------------- MOR's files are never lost

MOR_LINE = "*/10 * * * * root /usr/local/mor/mor_retrieve_peers"


def seed_mor_variant(root: Path, variant: str) -> dict[str, Optional[bytes]]:
    """MOR's files in one of the states an Asterisk server is found in (None: absent)."""
    files: dict[str, Optional[bytes]] = dict(seed_mor_server(root, "sqlite:///nowhere.db", 9))
    if variant == "cron file without the line":
        content = MOR_CRON.replace(MOR_LINE + "\n", "").encode()
        (root / CRON).write_bytes(content)
        files[CRON] = content
    elif variant == "neither legacy collector nor cron file":
        for rel in (LAUNCHER, CRON):
            (root / rel).unlink()
            files[rel] = None
    return files


def assert_mor_files_as_mor_left_them(root: Path, files: dict[str, Optional[bytes]]) -> None:
    for rel, content in files.items():
        path = root / rel
        if content is None:
            assert not path.exists(), f"{rel} was created"
        else:
            assert path.read_bytes() == content, rel
    if files.get(LAUNCHER) is not None:
        assert (root / LAUNCHER).stat().st_mode & 0o777 == 0o755


def assert_ours_installed(root: Path) -> None:
    assert "mor-regstatus launcher" in (root / LAUNCHER).read_text()
    ours = f"* * * * * root {root}/{LAUNCHER}"
    lines = (root / CRON).read_text().splitlines()
    assert lines.count(ours) == 1
    assert not [line for line in lines if line.endswith("/mor_retrieve_peers") and line != ours]


def servers_inventory(tmp_path: Path, roots: dict[str, Path]) -> Path:
    """Several MOR Asterisk servers, each in a folder of its own, over a local connection."""
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "[mor_asterisk]\n"
        + "".join(f"{name} mor_install_root={root}\n" for name, root in roots.items())
        + f"[all:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
    )
    return inventory


def fleet_vars(wheelhouse: Path) -> dict[str, Any]:
    extra = collector_vars(Path("/"), wheelhouse)
    del extra["mor_install_root"]  # each server's own, from the inventory
    return extra


STEPS = {
    "I": ("collector.yml", "--tags", "mor_retrieve_peers_configure"),
    "U": ("uninstall.yml",),
    "R": ("rollback.yml",),
}


# What the install finds: MOR's own setup, a cron file whose line was taken out, and a
# server with neither (each branch of the restore: put back, leave out, remove).
VARIANTS = [
    "legacy collector and its line",
    "cron file without the line",
    "neither legacy collector nor cron file",
]


def test_no_sequence_of_install_uninstall_rollback_loses_mors_files(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    """After every uninstall or rollback MOR's files are byte for byte as MOR left them,
    whatever ran before (one on a server that never had the install, an uninstall after
    a rollback, a reinstall after both), on servers in each state MOR leaves them in: one
    host per state. (The real hosts of test_fleet.py run rollback and uninstall twice.)"""
    roots = {variant: tmp_path / f"host{n}" for n, variant in enumerate(VARIANTS)}
    files = {variant: seed_mor_variant(root, variant) for variant, root in roots.items()}
    inventory = servers_inventory(tmp_path, {f"host{n}": roots[v] for n, v in enumerate(VARIANTS)})
    extra = {**fleet_vars(wheelhouse), "mor_retrieve_peers_serial": "100%"}  # one batch
    for number, step in enumerate("UIRUIU", 1):
        playbook, *args = STEPS[step]
        result = ansible.playbook(playbook, extra, *args, inventory=inventory)
        assert result.rc == 0, f"step {number} ({step}): " + result.out[-3000:]
        for variant, root in roots.items():
            if step == "I":
                assert_ours_installed(root)
            else:
                assert_mor_files_as_mor_left_them(root, files[variant])


def test_uninstall_refuses_to_guess_mors_line_once_its_record_is_gone(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    seed_mor_server(root, "sqlite:///nowhere.db", 9)
    extra = collector_vars(root, wheelhouse)
    installed = ansible.playbook("collector.yml", extra, "--tags", "mor_retrieve_peers_configure")
    assert installed.rc == 0, installed.out[-3000:]
    shutil.rmtree(root / "var/lib/mor-regstatus/legacy")
    before = tree(root)
    removed = ansible.playbook("uninstall.yml", extra)
    assert removed.rc != 0
    assert "has no record of MOR's cron line" in removed.out
    assert "*/10 * * * * root /usr/local/mor/mor_retrieve_peers" in removed.out
    assert tree(root) == before  # nothing was changed


# --------------------------------------------------------------------------- rolling updates


def test_a_rolling_update_stops_after_the_batch_of_a_server_that_fails_its_health_gate(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path, mariadb: None
) -> None:
    """Four servers in the default batches (1, 25 %, the rest): srv2's Asterisk does not
    answer, so its gate fails; srv1 is upgraded and healthy, srv3 and srv4 are untouched."""
    peers = [SimPeer("dev1", "OK (12 ms)", ip="10.0.0.1", port=5060)]
    simulator = AmiSimulator(peers, version="11", username="mor", secret="s3cret")
    with mor_database("mor_roll") as db, run_in_thread(simulator) as sim:
        db.add_server(1)
        db.add_device(1, "dev1")
        roots = {f"srv{n}": tmp_path / f"srv{n}" for n in range(1, 5)}
        for name, root in roots.items():
            seed_mor_server(root, db.url, free_port() if name == "srv2" else sim.port)
        before = {name: tree(root) for name, root in roots.items()}

        inventory = servers_inventory(tmp_path, roots)
        result = ansible.playbook("collector.yml", fleet_vars(wheelhouse), inventory=inventory)

        assert db.reg_statuses() == {"dev1": "OK (12 ms)"}  # srv1's gate ran it
    assert result.rc != 0
    assert "srv2 failed its health gate: the collector exited 3" in result.out
    assert "playbooks/rollback.yml -l srv2 goes back" in result.out
    assert_ours_installed(roots["srv1"])
    fact = local_fact(ansible, roots["srv1"])
    assert fact is not None and fact["last_result"] == "ok" and fact["errors"] == []
    assert_ours_installed(roots["srv2"])  # its batch ran; the gate found it broken
    for later in ("srv3", "srv4"):
        assert tree(roots[later]) == before[later], f"{later} was touched"


def test_a_failed_migration_switches_no_server(
    tmp_path: Path, ansible: Ansible, wheelhouse: Path
) -> None:
    """The migration runs before the first cron line switches: when it fails, every
    server still runs MOR's collector from MOR's cron line."""
    dead = f"mysql+pymysql://mor:mor@127.0.0.1:{free_port()}/mor"
    roots = {f"srv{n}": tmp_path / f"srv{n}" for n in range(1, 4)}
    files = {name: seed_mor_server(root, dead, 9) for name, root in roots.items()}

    result = ansible.playbook(
        "collector.yml", fleet_vars(wheelhouse), inventory=servers_inventory(tmp_path, roots)
    )

    assert result.rc != 0
    assert "Create or update the project's own tables" in result.out
    assert "Can't connect to MySQL server" in result.out, result.out[-3000:]
    for name, root in roots.items():
        assert_mor_files_as_mor_left_them(root, dict(files[name]))
