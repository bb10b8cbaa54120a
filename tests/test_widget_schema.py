"""The widget reads by the version of the collector's tables (real MariaDB, the real collector).

- started before the collector's first run, it shows what MOR's ``devices`` says, and
  what the collector records once it has run, without a restart;
- a collector upgraded while the widget runs (schema 4 to 5: the listener's mark) is
  picked up the same way;
- at the latest version no request reads the version again: a bullet or a JSON list is
  one statement;
- the read-only user of the documented GRANTs reads everything; without the GRANT on
  ``mor_regstatus_schema`` the bullets still show, and the log names the missing GRANT.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from flask import Flask
from regstatus_helpers import ROOT, MorDatabase, run, summary, wait_for, write_conf
from test_fleet import widget_login
from test_widget_cache import statements

from mor_plugin import store
from mor_plugin.simulator import AmiSimulator
from testbed.mariadb import root_connection

pytestmark = pytest.mark.mariadb

#: how often these tests' widgets read a version below the latest again (5 s in service)
RECHECK = 0.3
#: what a loaded 2-core machine may add to a time bound
SLACK = 1.0


@pytest.fixture(autouse=True)
def _quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("widget.db.SCHEMA_RECHECK", RECHECK)


@pytest.fixture
def conf(tmp_path: Path, mor: MorDatabase, sim: AmiSimulator) -> Path:
    """The collector of conftest's world: device 1 is OK, device 3 UNREACHABLE."""
    return write_conf(tmp_path, mor.url, sim)


@pytest.fixture
def first_run(mor: MorDatabase, conf: Path, capsys: pytest.CaptureFixture[str]) -> MorDatabase:
    """The collector's first run: its tables at the latest schema, filled."""
    summary(conf, capsys)
    return mor


def shown(app: Flask, device_id: int) -> dict[str, Any]:
    answer = app.test_client().get(f"/api/v1/devices/status?ids={device_id}")
    assert answer.status_code == 200
    device: dict[str, Any] = answer.get_json()["devices"][0]
    return device


def test_a_widget_started_before_the_collectors_first_run_shows_what_it_records_after(
    mor: MorDatabase,
    conf: Path,
    apps: Callable[..., Flask],
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = apps(mor.url)
    before = shown(app, 1)
    assert (before["status"], before["since"], before["stale"]) == ("none", None, True)
    summary(conf, capsys)  # the first run creates the collector's tables and fills them

    def recorded() -> Optional[dict[str, Any]]:
        device = shown(app, 1)
        return device if device["since"] is not None else None

    after = wait_for(recorded, timeout=RECHECK + SLACK)
    assert after["status"] == "ok" and after["stale"] is False
    assert app.extensions["mor_widget_db"].schema_version() == store.LATEST_VERSION


def test_a_widget_running_while_the_collector_upgrades_reads_what_the_upgrade_adds(
    first_run: MorDatabase,
    conf: Path,
    apps: Callable[..., Flask],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the tables as a collector of schema 4 left them: no listener's mark yet
    first_run.execute("ALTER TABLE mor_regstatus_servers DROP COLUMN listener_wrote_at")
    first_run.execute("DELETE FROM mor_regstatus_schema WHERE version = 5")
    app = apps(first_run.url)
    database = app.extensions["mor_widget_db"]
    assert shown(app, 1)["status"] == "ok" and shown(app, 3)["status"] == "unreachable"
    assert database.change_marks() is None  # without marks, devices are kept briefly only
    code, _, err = run(conf, "--migrate", capsys=capsys)  # the new release's first step
    assert code == 0, err
    marks = wait_for(database.change_marks, timeout=RECHECK + SLACK)
    assert list(marks) == [1]


def test_at_the_latest_schema_a_bullet_or_a_list_is_one_statement(
    first_run: MorDatabase, apps: Callable[..., Flask]
) -> None:
    app = apps(first_run.url)
    client = app.test_client()
    assert client.get("/api/v1/devices/status?ids=1,3").status_code == 200  # reads the version
    seen = statements(app)
    for _ in range(3):
        assert client.get("/api/v1/devices/status?ids=1,3").status_code == 200
        assert client.get("/devices/3/bullet.svg").status_code == 200
    assert len(seen) == 6 and all("FROM devices" in statement for statement in seen), seen


def documented_grants() -> list[str]:
    """The GRANTs docs/WIDGET.md gives the widget's read-only user."""
    text = (ROOT / "docs/WIDGET.md").read_text()
    grants = re.findall(r"^(GRANT SELECT ON mor\.\w+ TO 'mor_widget'@'127\.0\.0\.1');$", text, re.M)
    assert len(grants) >= 8, "docs/WIDGET.md lost the widget's GRANTs"
    return grants


@contextmanager
def read_only_user(db: MorDatabase, grants: list[str]) -> Iterator[str]:
    """A MySQL user with only ``grants`` (as documented, on this database): its URL."""
    with widget_login(db) as (account, url):
        root = root_connection()
        try:
            with root.cursor() as cur:
                for grant in grants:
                    on_db = grant.replace("ON mor.", f"ON `{db.name}`.")
                    cur.execute(on_db.replace("'mor_widget'@'127.0.0.1'", account))
        finally:
            root.close()
        yield url


def test_the_documented_grants_let_the_widget_read_all_it_shows(
    first_run: MorDatabase, apps: Callable[..., Flask]
) -> None:
    with read_only_user(first_run, documented_grants()) as url:
        app = apps(url)
        device = shown(app, 1)
        assert device["status"] == "ok" and device["since"] and device["stale"] is False
        client = app.test_client()
        for page in ("/devices/1/status", "/servers", "/servers/1/devices", "/metrics"):
            assert client.get(page).status_code == 200, page
        assert client.get("/api/v1/devices/1/history").status_code == 200
        assert app.extensions["mor_widget_db"].schema_version() == store.LATEST_VERSION


def test_without_the_grant_on_the_schema_version_the_bullets_still_show(
    first_run: MorDatabase, apps: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    grants = [grant for grant in documented_grants() if "mor_regstatus_schema" not in grant]
    with read_only_user(first_run, grants) as url:
        app = apps(url)
        assert shown(app, 1)["reg_status"] == "OK (12 ms)"
        bullet = app.test_client().get("/devices/3/bullet.svg")
        assert bullet.status_code == 200 and "bullet-unreachable" in bullet.get_data(as_text=True)
        assert app.test_client().get("/devices/1/status").status_code == 200
    assert "may not read mor_regstatus_schema" in caplog.text
