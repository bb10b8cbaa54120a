"""No secret of a URL reaches the log, stderr or the state file; the log file is 0640.

Every URL-bearing key of mor.conf (config.URL_KEYS) is run end to end into a failure that
shows its URL, with a password holding '@' and ':' and a token in the query."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from regstatus_helpers import (
    WITH_A_PROVIDER,
    CollectorWorld,
    MorDatabase,
    Receiver,
    run,
    summary,
    write_conf,
)

from mor_plugin.config import URL_KEYS
from mor_plugin.simulator import AmiSimulator

SECRETS = ("hunter2", "t0k3n")


@pytest.fixture
def collector_world() -> CollectorWorld:
    """Device 2 is a provider's: the webhook tests alert on it."""
    return WITH_A_PROVIDER


def _shown(tmp_path: Path, stderr: str) -> str:
    """Everything a user can read after the runs: stderr, the log and the state file."""
    log = (tmp_path / "log" / "ami_debug.log").read_text()
    return "\n".join([stderr, log, (tmp_path / "state.json").read_text()])


def _db_url(
    db: MorDatabase, ami: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    """An unreachable database: exit 4, the URL in the one line, the log and the state file."""
    url = "mysql+pymysql://mor%40ops:hun%40ter2:x@127.0.0.1:9/mor?ssl_key=t0k3n&charset=utf8mb4"
    conf = write_conf(tmp_path, url, ami, debug=1)
    code, out, err = run(conf, capsys=capsys)
    assert code == 4
    masked = "mysql+pymysql://mor%40ops:***@127.0.0.1:9/mor?ssl_key=***&charset=***"
    assert err.startswith(f"mor-retrieve-peers: database {masked}: ")
    return _shown(tmp_path, err).replace("hun%40ter2", "hunter2")


def _webhook_url(
    db: MorDatabase, ami: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    """A failing receiver: the URL in the log's warnings. The credentials go as Basic auth."""
    with Receiver(status=500) as hook:
        url = hook.url.replace("http://", "http://ops:p%40ss:hunter2@") + "?token=t0k3n&v"
        conf = write_conf(tmp_path, db.url, ami, webhook_url=url, webhook_user_ids=-1, debug=1)
        summary(conf, capsys)
        ami.set_status("102", "UNREACHABLE")
        summary(conf, capsys)
        [(_, headers), _retry] = hook.posts
    assert headers["authorization"] == "Basic " + base64.b64encode(b"ops:p@ss:hunter2").decode()
    masked = hook.url.replace("http://", "http://ops:***@") + "?token=***&***"
    shown = _shown(tmp_path, "")
    assert f"webhook {masked} failed (attempt 1 of 2, 1 alerts): HTTP 500 " in shown
    return shown


SCENARIOS: dict[str, Callable[..., str]] = {"db_url": _db_url, "webhook_url": _webhook_url}


def test_every_url_bearing_key_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(URL_KEYS)


@pytest.mark.parametrize("key", URL_KEYS)
def test_no_secret_of_a_url_reaches_stderr_the_log_or_the_state_file(
    mor: MorDatabase,
    sim: AmiSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
) -> None:
    shown = SCENARIOS[key](mor, sim, tmp_path, capsys)
    for secret in SECRETS:
        assert secret not in shown


def test_a_db_url_password_with_a_raw_at_sign_exits_2_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, "mysql+pymysql://mor:hun@ter2@127.0.0.1/mor", None)
    code, out, err = run(conf, capsys=capsys)
    assert code == 2
    assert (
        err == f"mor-retrieve-peers: {conf}: db_url has an '@' in its password -- write it as %40\n"
    )


# ----------------------------------------------------------------------- the log file's mode


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077], ids=oct)
def test_a_new_log_file_is_0640_whatever_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], umask: Callable[[int], None], mask: int
) -> None:
    umask(mask)
    conf = write_conf(tmp_path, "sqlite://", None)  # AMI on port 9: a quick exit 3
    code, _, _ = run(conf, capsys=capsys)
    assert code == 3
    assert _mode(tmp_path / "log" / "ami_debug.log") == 0o640


@pytest.mark.parametrize(
    ("before", "after"), [(0o644, 0o640), (0o666, 0o640), (0o600, 0o600)], ids=oct
)
def test_an_existing_log_file_loses_what_is_beyond_0640(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], before: int, after: int
) -> None:
    log = tmp_path / "log" / "ami_debug.log"
    log.parent.mkdir()
    log.write_text("an older run\n")
    log.chmod(before)
    conf = write_conf(tmp_path, "sqlite://", None)
    run(conf, capsys=capsys)
    assert _mode(log) == after
    text = log.read_text()
    assert text.startswith("an older run\n")  # appended to, not replaced
    warning = f"log file {log} had mode {before:o}; now {after:o} (at most 640)"
    assert (warning in text) == (before != after)
    assert json.loads((tmp_path / "state.json").read_text())["last_result"].startswith(
        "cannot connect to Asterisk AMI"
    )
