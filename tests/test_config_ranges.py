"""Every numeric mor.conf key has a documented range; outside it the collector exits 2 with
one line naming the file, the key, the value and the range -- instead of passing
validation and crashing later (OverflowError in timedelta, a misleading database error).

The keys come from config.NUMERIC_KEYS, the table the loader reads numbers through, so a
new numeric key is tested as soon as it exists."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from regstatus_helpers import MorDatabase, Receiver, run, summary, write_conf

from mor_plugin.config import NUMERIC_KEYS, ConfigError, NumberRange, Settings, load_settings
from mor_plugin.simulator import AmiSimulator

#: what an ops engineer may really write, beyond each range
HUGE = ["100000000000000", "1e20", "99999999999", "9" * 5000]
NOT_NUMBERS = ["nan", "inf", "-inf", "abc", "10s", "0x10"]


def spell(number: float) -> str:
    """As mor.conf would hold it: ``2147483647``, ``0.999``."""
    return str(int(number)) if number == int(number) else repr(number)


def _outside(allowed: NumberRange) -> list[str]:
    """Values just outside the range, and the hostile ones."""
    step = 1 if allowed.unit is None else 0.001
    values = [str(allowed.high + step), "-1" if allowed.low >= 0 else str(allowed.low - 1)]
    values.append(spell(allowed.low) if allowed.above_low else spell(allowed.low - step))
    return values + HUGE + NOT_NUMBERS


def test_every_numeric_setting_has_a_range_and_its_default_is_in_it() -> None:
    numeric = {f.name for f in fields(Settings) if f.type in ("int", "float", "tuple[int, ...]")}
    # port is not a Settings field: it goes into db_url
    assert numeric == set(NUMERIC_KEYS) - {"port"}
    defaults = Settings()
    for key, allowed in NUMERIC_KEYS.items():
        value = getattr(defaults, key, 3306)
        for number in value if isinstance(value, tuple) else (value,):
            assert allowed.admits(number / allowed.scale), key


@pytest.mark.parametrize("key", sorted(NUMERIC_KEYS))
def test_a_value_outside_the_range_is_one_line_naming_file_key_value_and_range(
    tmp_path: Path, key: str
) -> None:
    allowed = NUMERIC_KEYS[key]
    conf = tmp_path / "mor.conf"
    for value in _outside(allowed):
        conf.write_text(f"manager_conf = {tmp_path / 'none'}\n{key} = {value}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(conf, asterisk_mor_conf=tmp_path / "none")
        message = str(caught.value)
        shown = value if len(value) <= 40 else value[:37] + "..."
        assert message.startswith(f"{conf}: {key} = {shown!r} is not {allowed.describe()}"), value
        assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize("key", sorted(NUMERIC_KEYS))
def test_the_ends_of_the_range_are_accepted(tmp_path: Path, key: str) -> None:
    allowed = NUMERIC_KEYS[key]
    ends = [allowed.high] + ([] if allowed.above_low else [allowed.low])
    conf = tmp_path / "mor.conf"
    for end in ends:
        conf.write_text(f"manager_conf = {tmp_path / 'none'}\n{key} = {spell(end)}\n")
        settings = load_settings(conf, asterisk_mor_conf=tmp_path / "none")
        if key != "port":
            value = getattr(settings, key)
            assert value == ((int(end),) if isinstance(value, tuple) else end * allowed.scale)


def test_a_range_message_reads_as_documented() -> None:
    assert NUMERIC_KEYS["server_id"].describe() == "a whole number from 1 to 2147483647"
    assert NUMERIC_KEYS["db_timeout"].describe() == "a number of seconds > 0 and <= 600"
    assert NUMERIC_KEYS["history_days"].describe() == "a number of days from 1 to 3650"
    assert NUMERIC_KEYS["flap_window"].describe() == "a number of minutes > 0 and <= 1440"


@pytest.mark.parametrize("key", sorted(NUMERIC_KEYS))
def test_the_collector_exits_2_with_one_line_for_a_huge_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    conf = write_conf(tmp_path, "sqlite://", None, **{key: "100000000000000"})
    code, out, err = run(conf, capsys=capsys)
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line == (
        f"mor-retrieve-peers: {conf}: {key} = '100000000000000' is not "
        f"{NUMERIC_KEYS[key].describe()}" + (", like '-1, 5'" if key.endswith("_ids") else "")
    )


def test_a_run_with_every_numeric_key_at_its_maximum_completes(
    mor: MorDatabase,
    sim: AmiSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The largest values the ranges admit run end to end: the hour rule, the flap window,
    the purge after the commit and the webhook after it, the database timeouts."""
    mor.execute("UPDATE servers SET id = :top WHERE id = 1", top=NUMERIC_KEYS["server_id"].high)
    mor.execute("UPDATE devices SET server_id = :top WHERE server_id = 1", top=2**31 - 1)
    ports = {"port", "ami_port"}  # the simulator's and the database's ports are given
    at_max = {key: spell(NUMERIC_KEYS[key].high) for key in NUMERIC_KEYS if key not in ports}
    at_max["webhook_device_ids"] = f"1, {at_max['webhook_device_ids']}"
    with Receiver() as hook:
        conf = write_conf(tmp_path, mor.url, sim, webhook_url=hook.url, **at_max)
        first = summary(conf, capsys)
        sim.set_status("101", "UNREACHABLE")
        second = summary(conf, capsys)
        alerts = [alert for body, _ in hook.posts for alert in json.loads(body)["alerts"]]
    assert first["server_id"] == second["server_id"] == 2**31 - 1
    assert mor.reg_statuses()["101"] == "UNREACHABLE"
    assert [(a["device_id"], a["alert"]) for a in alerts] == [(1, "down")]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["last_result"] == "ok"
