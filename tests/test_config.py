"""mor.conf, manager.conf and the command line become one validated Settings."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Optional

import pytest
import yaml
from regstatus_helpers import ROOT
from sqlalchemy.engine import make_url

from mor_plugin.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LOG_FILE,
    DEFAULT_STATE_FILE,
    KEY,
    KEYS,
    KNOWN_KEYS,
    URL_KEYS,
    ConfigError,
    Settings,
    load_settings,
    mask_url,
    parse_flat_conf,
    read_manager_conf,
)


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A directory standing in for /etc/asterisk and /var/lib/asterisk/agi-bin."""
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load(
    etc: Path,
    mor_conf: str,
    *,
    manager_conf: Optional[str] = None,
    asterisk_mor_conf: Optional[str] = None,
    **overrides: Path,
) -> Settings:
    """Load ``mor_conf``; manager.conf and /etc/asterisk/mor.conf are absent when None."""
    manager = etc / "manager.conf"
    if manager_conf is not None:
        write(manager, manager_conf)
    core = etc / "asterisk-mor.conf"
    if asterisk_mor_conf is not None:
        write(core, asterisk_mor_conf)
    path = write(etc / "mor.conf", f"manager_conf = {manager}\n{mor_conf}")
    return load_settings(path, asterisk_mor_conf=core, **overrides)


def manager_login(path: Path) -> tuple[Optional[str], Optional[str], Optional[int]]:
    """``(username, secret, port)`` as the collector's own manager.conf reader gives them."""
    manager = read_manager_conf(path)
    if manager is None:
        return None, None, None
    return manager.username, manager.secret, manager.port


def config_error(etc: Path, mor_conf: str, *, manager_conf: Optional[str] = None) -> str:
    """The one-line message of the ConfigError that loading ``mor_conf`` raises."""
    with pytest.raises(ConfigError) as caught:
        load(etc, mor_conf, manager_conf=manager_conf)
    message = str(caught.value)
    assert "\n" not in message
    return message


MANAGER_TWO_USERS = """\
[general]
enabled = yes
port = 5039
bindaddr = 0.0.0.0

[admin]
secret = adminpass
read = all

[mor]
secret = morpass
read = system,reporting
"""


# ----------------------------------------------------------------------- defaults


def test_empty_mor_conf_gives_mors_defaults(etc: Path) -> None:
    settings = load(etc, "")

    url = make_url(settings.db_url)
    assert (url.drivername, url.host, url.port, url.database) == (
        "mysql+pymysql",
        "localhost",
        3306,
        "mor",
    )
    assert (url.username, url.password, url.query["charset"]) == ("mor", "mor", "utf8mb4")
    assert settings.server_id == 1
    assert (settings.debug, settings.show_sql) == (False, False)
    assert (settings.ami_host, settings.ami_port) == ("127.0.0.1", 5038)
    assert (settings.ami_username, settings.ami_secret) == (None, None)
    assert (settings.ami_connect_timeout, settings.ami_timeout) == (5, 10)
    assert settings.ami_list_timeout == 60
    assert settings.unknown_after == 3600
    assert settings.log_file == Path("/var/log/mor/ami_debug.log")
    assert settings.state_file == Path("/var/lib/mor-regstatus/state.json")
    assert settings.lock_file == Path("/run/mor_retrieve_peers.lock")
    assert settings.warnings == ()


def test_settings_constructed_directly_match_an_empty_mor_conf(etc: Path) -> None:
    loaded = load(etc, "")

    assert Settings(config_path=loaded.config_path, manager_conf=loaded.manager_conf) == loaded


def test_settings_take_every_default_from_the_key_table() -> None:
    defaults = Settings()
    own = [key for key in KEYS if key.own_setting]
    assert {key.name: getattr(defaults, key.name) for key in own} == {
        key.name: key.default for key in own
    }
    assert (defaults.ami_host, defaults.ami_port) == (KEY["ami_host"].default, 5038)
    assert make_url(defaults.db_url).port == KEY["port"].default
    # a field per key, but MOR's database keys, which make db_url
    not_keys = {"config_path", "warnings", "misspelled_keys"}
    database = {"host", "port", "db", "user", "secret"}
    assert {f.name for f in fields(Settings)} - not_keys == KNOWN_KEYS - database


def test_the_flap_defaults_are_four_changes_in_ten_minutes() -> None:
    assert (Settings().flap_changes, Settings().flap_window) == (4, 600)
    assert KEY["flap_window"].default_cell() == "`10`"  # README's minutes


def test_the_collector_role_defaults_to_the_collectors_own_paths() -> None:
    """The role passes its paths on the command line; by default they are the collector's."""
    role = ROOT / "roles" / "mor_retrieve_peers" / "defaults" / "main.yml"
    defaults = yaml.safe_load(role.read_text())
    assert Path(defaults["mor_retrieve_peers_mor_conf"]) == DEFAULT_CONFIG_PATH
    assert Path(defaults["mor_retrieve_peers_log_file"]) == DEFAULT_LOG_FILE
    assert Path(defaults["mor_retrieve_peers_state_dir"]) == DEFAULT_STATE_FILE.parent


def test_a_listener_is_silent_after_a_ping_its_answer_and_two_database_writes(
    etc: Path,
) -> None:
    assert Settings().listener_silent_after == 10 + 10 + 2 * 30
    settings = load(etc, "watch_ping_interval = 60\nami_timeout = 5\ndb_timeout = 2\n")
    assert settings.listener_silent_after == 60 + 5 + 2 * 2


def test_legacy_mor_conf_is_read(etc: Path) -> None:
    settings = load(
        etc,
        "host = 10.0.0.5\ndb = mor_x5\nuser = billing\nsecret = s3cret\nport = 3307\n"
        "server_id = 3\ndebug = 1\nshow_sql = 1\n",
    )

    url = make_url(settings.db_url)
    assert (url.host, url.port, url.database) == ("10.0.0.5", 3307, "mor_x5")
    assert (url.username, url.password) == ("billing", "s3cret")
    assert (settings.server_id, settings.debug, settings.show_sql) == (3, True, True)


# ----------------------------------------------------------------------- syntax


def test_keys_are_case_insensitive(etc: Path) -> None:
    settings = load(etc, "DEBUG = 1\nServer_ID = 4\n")

    assert (settings.debug, settings.server_id) == (True, 4)


def test_spaces_around_equals_are_optional() -> None:
    assert parse_flat_conf("host=db1\nport =3307\nuser= mor\n\tdb\t=\tmor  \n") == {
        "host": "db1",
        "port": "3307",
        "user": "mor",
        "db": "mor",
    }


def test_comment_lines_are_skipped() -> None:
    assert parse_flat_conf("; MOR\n# ours\n   ; indented\n\nhost = db1\n") == {"host": "db1"}


def test_trailing_comment_needs_whitespace_before_it() -> None:
    values = parse_flat_conf("host = db1 ; the database\nport = 3306\t# default\n")

    assert values == {"host": "db1", "port": "3306"}


def test_secret_may_contain_hash_and_semicolon() -> None:
    assert parse_flat_conf("secret = pa#ss;wo;rd\n") == {"secret": "pa#ss;wo;rd"}


def test_one_pair_of_double_quotes_is_removed() -> None:
    values = parse_flat_conf('secret = "a ;b # c"  ; comment\nuser = ""mor""\n')

    assert values == {"secret": "a ;b # c", "user": '"mor"'}


def test_empty_value_means_default(etc: Path) -> None:
    settings = load(etc, "host =\nserver_id =\ndebug =\nami_timeout =\n")

    assert make_url(settings.db_url).host == "localhost"
    assert (settings.server_id, settings.debug, settings.ami_timeout) == (1, False, 10)


def test_empty_secret_means_empty_password(etc: Path) -> None:
    settings = load(etc, "secret =\n")

    assert make_url(settings.db_url).password == ""


def test_last_duplicate_key_wins_with_a_warning(etc: Path) -> None:
    settings = load(etc, "server_id = 2\nserver_id = 5\n")

    assert settings.server_id == 5
    assert any("'server_id' is set on lines" in w for w in settings.warnings)


def test_a_misspelled_key_is_ignored_with_a_warning_naming_the_key_meant(etc: Path) -> None:
    settings = load(etc, "secert = x\n")

    assert make_url(settings.db_url).password == "mor"
    assert settings.misspelled_keys == (
        f"{etc / 'mor.conf'}: line 2: unknown key 'secert' (did you mean 'secret'?): ignored",
    )
    assert settings.warnings == settings.misspelled_keys


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("ami_prot", "ami_port"),
        ("ami-port", "ami_port"),
        ("amiport", "ami_port"),
        ("AmiPort", "ami_port"),
        ("ami.port", "ami_port"),
        ("ami_user", "ami_username"),
        ("ami_usernmae", "ami_username"),
        ("Server-ID", "server_id"),
        ("logfile", "log_file"),
        ("unknown_afer", "unknown_after"),
        ("history_day", "history_days"),
        ("webhook_urls", "webhook_url"),
        ("peersource", "peer_source"),
        ("debgu", "debug"),
    ],
)
def test_near_misses_of_our_keys_are_named(etc: Path, written: str, meant: str) -> None:
    settings = load(etc, f"{written} = 5039\n")

    assert settings.ami_port == 5038  # nothing of the misspelled line is used
    [warning] = settings.misspelled_keys
    assert f"unknown key '{written.lower()}' (did you mean '{meant}'?): ignored" in warning


#: MOR's agi-bin mor.conf as MOR's installer ships it (x6/asterisk/agi/mor.conf): the keys
#: of the collector and of MOR's other programs (the autodialer's calls_one_time ...)
MOR_AGI_MOR_CONF = """\
host = localhost
db = mor
user = mor
secret = mor
port = 3306
server_id = 1

calls_one_time = 4
cron_interval = 1

show_sql = 0
debug = 1
execute_call_files = 1
"""


def test_mors_own_keys_give_no_warning(etc: Path) -> None:
    # and the keys of /etc/asterisk/mor.conf that differ from this file's
    core = "hostname = db1\ndbname = mor\npassword = mor\n"
    settings = load(etc, MOR_AGI_MOR_CONF + core)

    assert settings.warnings == ()
    assert settings.debug


def test_a_key_unlike_ours_is_ignored_silently(etc: Path) -> None:
    settings = load(etc, "report_url = http://gui/\nfoo = bar\nmax_calls = 1000\n")

    assert settings.warnings == ()


def test_line_without_equals_is_an_error_naming_file_and_line(etc: Path) -> None:
    message = config_error(etc, "host = db1\nsecret hunter2\n")

    assert str(etc / "mor.conf") in message
    assert "line 3" in message  # line 1 is the fixture's manager_conf
    assert "hunter2" not in message


def test_windows_line_endings_and_bom_are_accepted(etc: Path) -> None:
    path = etc / "mor.conf"
    path.write_bytes(b"\xef\xbb\xbfserver_id = 2\r\ndebug = yes\r\n")

    settings = load_settings(path, asterisk_mor_conf=etc / "absent.conf")

    assert (settings.server_id, settings.debug) == (2, True)


# ----------------------------------------------------------------------- database URL


def test_db_url_overrides_the_mysql_keys(etc: Path) -> None:
    settings = load(etc, f"host = db1\nsecret = x\ndb_url = sqlite:///{etc}/demo.db\n")

    assert settings.db_url == f"sqlite:///{etc}/demo.db"


def test_password_and_user_with_url_characters_are_escaped(etc: Path) -> None:
    settings = load(etc, "user = us@r:x\nsecret = p@ss:w/o#rd?%\n")

    url = make_url(settings.db_url)
    assert (url.username, url.password, url.host, url.database) == (
        "us@r:x",
        "p@ss:w/o#rd?%",
        "localhost",
        "mor",
    )


def test_masked_db_url_hides_the_password(etc: Path) -> None:
    settings = load(etc, "secret = hunter2\n")

    assert "hunter2" not in settings.masked_db_url()
    # query values are masked too: the driver takes ?password= and ?ssl_key= as well
    assert settings.masked_db_url() == "mysql+pymysql://mor:***@localhost:3306/mor?charset=***"


def test_repr_hides_db_and_ami_secrets(etc: Path) -> None:
    settings = load(etc, "secret = hunter2\nami_username = mor\nami_secret = amipass\n")

    assert "hunter2" not in repr(settings)
    assert "amipass" not in repr(settings)


def test_db_url_that_is_not_a_url_is_an_error_without_the_url(etc: Path) -> None:
    message = config_error(etc, "db_url = hunter2-not-a-url\n")

    assert str(etc / "mor.conf") in message
    assert "db_url" in message
    assert "hunter2" not in message


def test_db_url_with_unknown_driver_is_an_error(etc: Path) -> None:
    message = config_error(etc, "db_url = mysq://mor:hunter2@db1/mor\n")

    assert "db_url" in message
    assert "'mysq'" in message
    assert "hunter2" not in message


# ----------------------------------------------------------------------- manager.conf


def test_manager_conf_prefers_the_mor_user(etc: Path) -> None:
    assert manager_login(write(etc / "manager.conf", MANAGER_TWO_USERS)) == (
        "mor",
        "morpass",
        5039,
    )


def test_manager_conf_without_mor_takes_the_first_user_with_a_secret(etc: Path) -> None:
    text = "[general]\nenabled = yes\n[nosecret]\nread = all\n[ops]\nsecret = o\n[dev]\nsecret = d"

    assert manager_login(write(etc / "manager.conf", text)) == ("ops", "o", None)


def test_manager_conf_mor_without_secret_is_skipped(etc: Path) -> None:
    text = "[mor]\nread = all\n[ops]\nsecret = o\n"

    assert manager_login(write(etc / "manager.conf", text))[:2] == ("ops", "o")


def test_manager_conf_accepts_arrow_assignment(etc: Path) -> None:
    text = "[general]\nport => 6000\n[mor]\nsecret => morpass\n"

    assert manager_login(write(etc / "manager.conf", text)) == ("mor", "morpass", 6000)


def test_manager_conf_ignores_include_lines_and_comments(etc: Path) -> None:
    text = (
        "#include manager.d/*.conf\n"
        "#tryinclude local.conf\n"
        ";[commented]\n"
        "[mor] ; the collector\n"
        "secret = mor\\;pass ; escaped semicolon\n"
        ";--\n[blocked]\nsecret = x\n--;\n"
    )

    assert manager_login(write(etc / "manager.conf", text)) == ("mor", "mor;pass", None)


def test_manager_conf_templates_are_not_users(etc: Path) -> None:
    text = "[base](!)\nsecret = tpl\nread = all\n\n[mor](base)\nwrite = all\n"

    assert manager_login(write(etc / "manager.conf", text))[:2] == ("mor", "tpl")


def test_missing_manager_conf_gives_no_credentials(etc: Path) -> None:
    assert manager_login(etc / "absent.conf") == (None, None, None)


def test_the_collector_logs_in_as_its_manager_conf_reader_says(etc: Path) -> None:
    text = "[general]\nport = 5040\n[ops]\nsecret = o\n[mor]\nsecret = m\n"
    settings = load(etc, "", manager_conf=text)

    read = manager_login(etc / "manager.conf")
    assert (settings.ami_username, settings.ami_secret, settings.ami_port) == read


def test_ami_credentials_and_port_come_from_manager_conf(etc: Path) -> None:
    settings = load(etc, "", manager_conf=MANAGER_TWO_USERS)

    assert (settings.ami_username, settings.ami_secret) == ("mor", "morpass")
    assert (settings.ami_host, settings.ami_port) == ("127.0.0.1", 5039)


def test_ami_host_follows_a_specific_manager_bindaddr(etc: Path) -> None:
    settings = load(etc, "", manager_conf="[general]\nbindaddr = 10.1.2.3\n")

    assert settings.ami_host == "10.1.2.3"


def test_manager_conf_without_users_leaves_credentials_to_the_servers_row(etc: Path) -> None:
    settings = load(etc, "", manager_conf="[general]\nenabled = yes\n")

    assert (settings.ami_username, settings.ami_secret) == (None, None)
    assert settings.warnings == ()


def test_unreadable_manager_conf_is_a_warning(etc: Path) -> None:
    (etc / "manager.conf").mkdir()

    settings = load(etc, "")

    assert (settings.ami_username, settings.ami_secret) == (None, None)
    [warning] = settings.warnings
    assert str(etc / "manager.conf") in warning
    assert "cannot read" in warning


def test_manager_conf_with_ami_disabled_is_a_warning(etc: Path) -> None:
    settings = load(etc, "", manager_conf="[general]\nenabled = no\n[mor]\nsecret = x\n")

    assert any("enabled = no" in w for w in settings.warnings)


def test_invalid_manager_port_is_a_warning_and_the_default_is_used(etc: Path) -> None:
    settings = load(etc, "", manager_conf="[general]\nport = 99999\n[mor]\nsecret = x\n")

    assert settings.ami_port == 5038
    assert any("port = '99999'" in w for w in settings.warnings)


def test_ami_keys_in_mor_conf_override_manager_conf(etc: Path) -> None:
    settings = load(
        etc,
        "ami_host = 10.9.9.9\nami_port = 6038\nami_username = ops\nami_secret = opspass\n",
        manager_conf=MANAGER_TWO_USERS,
    )

    assert (settings.ami_host, settings.ami_port) == ("10.9.9.9", 6038)
    assert (settings.ami_username, settings.ami_secret) == ("ops", "opspass")


def test_ami_username_alone_takes_its_secret_from_manager_conf(etc: Path) -> None:
    settings = load(etc, "ami_username = ADMIN\n", manager_conf=MANAGER_TWO_USERS)

    assert (settings.ami_username, settings.ami_secret) == ("ADMIN", "adminpass")


def test_ami_username_without_any_secret_is_an_error(etc: Path) -> None:
    message = config_error(etc, "ami_username = ghost\n", manager_conf=MANAGER_TWO_USERS)

    assert str(etc / "mor.conf") in message
    assert "ami_secret" in message


def test_ami_secret_without_username_is_an_error(etc: Path) -> None:
    message = config_error(etc, "ami_secret = hunter2\n")

    assert "ami_username" in message
    assert "hunter2" not in message


# ----------------------------------------------------------------------- /etc/asterisk/mor.conf


def test_server_id_mismatch_with_asterisk_mor_conf_is_a_warning(etc: Path) -> None:
    settings = load(
        etc,
        "server_id = 1\n",
        asterisk_mor_conf="[global]\nhostname = localhost\nserver_id = 2\npassword = pw\n",
    )

    [warning] = settings.warnings
    assert warning == (
        f"{etc / 'asterisk-mor.conf'} says server_id = 2 but {etc / 'mor.conf'} says 1;"
        " MOR expects them equal"
    )


def test_equal_server_ids_give_no_warning(etc: Path) -> None:
    settings = load(etc, "server_id = 2\n", asterisk_mor_conf="[global]\nserver_id => 2\n")

    assert settings.warnings == ()


def test_missing_asterisk_mor_conf_gives_no_warning(etc: Path) -> None:
    assert load(etc, "server_id = 7\n").warnings == ()


# ----------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("server_id", "abc", "server_id = 'abc' is not a whole number from 1 to 2147483647"),
        ("server_id", "0", "server_id = '0' is not a whole number from 1 to 2147483647"),
        ("server_id", "-2", "server_id = '-2' is not a whole number from 1 to 2147483647"),
        ("port", "0", "port = '0' is not a port number from 1 to 65535"),
        ("port", "70000", "port = '70000' is not a port number from 1 to 65535"),
        ("ami_port", "http", "ami_port = 'http' is not a port number from 1 to 65535"),
        ("debug", "maybe", "debug = 'maybe' is not a boolean"),
        ("show_sql", "2", "show_sql = '2' is not a boolean"),
        ("ami_connect_timeout", "0", "ami_connect_timeout = '0' is not a number of seconds > 0"),
        ("ami_timeout", "-1", "ami_timeout = '-1' is not a number of seconds > 0"),
        ("ami_list_timeout", "inf", "ami_list_timeout = 'inf' is not a number of seconds > 0"),
        ("ami_timeout", "10s", "ami_timeout = '10s' is not a number of seconds > 0"),
        (
            "unknown_after",
            "-5",
            "unknown_after = '-5' is not a number of seconds from 0 to 31536000",
        ),
        (
            "unknown_after",
            "nan",
            "unknown_after = 'nan' is not a number of seconds from 0 to 31536000",
        ),
    ],
)
def test_invalid_value_is_an_error_naming_file_and_key(
    etc: Path, key: str, value: str, expected: str
) -> None:
    message = config_error(etc, f"{key} = {value}\n")

    assert message.startswith(f"{etc / 'mor.conf'}: {expected}")


def test_valid_numbers_and_booleans_are_accepted(etc: Path) -> None:
    settings = load(
        etc,
        "debug = On\nshow_sql = no\nami_timeout = 2.5\nami_list_timeout = 120\n"
        "ami_connect_timeout = .5\nunknown_after = 0\nami_port = 65535\n",
    )

    assert (settings.debug, settings.show_sql) == (True, False)
    assert (settings.ami_timeout, settings.ami_list_timeout) == (2.5, 120)
    assert (settings.ami_connect_timeout, settings.unknown_after) == (0.5, 0)
    assert settings.ami_port == 65535


def test_missing_mor_conf_is_an_error_saying_what_to_do(etc: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(etc / "absent.conf")

    assert str(caught.value) == (
        f"{etc / 'absent.conf'}: cannot read (No such file or directory)"
        " -- pass --config or create it"
    )


# ----------------------------------------------------------------------- paths


def test_paths_from_mor_conf_are_used(etc: Path) -> None:
    settings = load(
        etc,
        "log_file = /tmp/a.log\nstate_file = /tmp/s.json\nlock_file = /tmp/l.lock\n",
    )

    assert settings.log_file == Path("/tmp/a.log")
    assert settings.state_file == Path("/tmp/s.json")
    assert settings.lock_file == Path("/tmp/l.lock")


def test_relative_paths_are_relative_to_mor_conf(etc: Path) -> None:
    settings = load(etc, "state_file = state.json\n")

    assert settings.state_file == etc / "state.json"


def test_command_line_paths_win_over_mor_conf(etc: Path) -> None:
    settings = load(
        etc,
        "log_file = /tmp/a.log\nstate_file = /tmp/s.json\nlock_file = /tmp/l.lock\n",
        log_file=etc / "cli.log",
        state_file=etc / "cli.json",
        lock_file=etc / "cli.lock",
    )

    assert (settings.log_file, settings.state_file, settings.lock_file) == (
        etc / "cli.log",
        etc / "cli.json",
        etc / "cli.lock",
    )


def test_manager_conf_includes_are_followed_and_the_projects_own_user_wins(
    tmp_path: Path,
) -> None:
    (tmp_path / "manager.d").mkdir()
    (tmp_path / "manager.conf").write_text(
        "[general]\nenabled = yes\nport = 5039\n\n[mor]\nsecret = morsecret\n\n"
        '#include "manager.d/*.conf"\n'
    )
    (tmp_path / "manager.d" / "mor_regstatus.conf").write_text(
        "[mor_regstatus]\nsecret = least-privilege\nread = system,reporting\n"
    )
    assert manager_login(tmp_path / "manager.conf") == (
        "mor_regstatus",
        "least-privilege",
        5039,
    )


def test_an_include_of_nothing_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "manager.conf").write_text(
        "[general]\nport = 5038\n#include manager.d/*.conf\n[mor]\nsecret = s\n"
    )
    assert manager_login(tmp_path / "manager.conf") == ("mor", "s", 5038)


# ----------------------------------------------------------------------- masking URLs


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # '@' and ':' in the password: the last '@' of the authority ends it (urllib's reading)
        ("https://ops:p@ss:w@rd@hooks.example.com/in", "https://ops:***@hooks.example.com/in"),
        # ... SQLAlchemy's: the password ends at the first '@' and may hold '/', '?', '#'
        ("mysql+pymysql://mor:pa/ss?w#rd@db1:3306/mor", "mysql+pymysql://mor:***@db1:3306/mor"),
        ("mysql+pymysql://mor:p@ss@db1/mor", "mysql+pymysql://mor:***@db1/mor"),
        # percent-encoding stays as written, the user name too
        ("https://us%40er:p%40ss%3Aw@h.example/x", "https://us%40er:***@h.example/x"),
        # IPv6 hosts, with and without credentials
        ("https://[2001:db8::1]:8443/hook?t=1", "https://[2001:db8::1]:8443/hook?t=***"),
        ("mysql+pymysql://mor:pw@[::1]:3306/mor", "mysql+pymysql://mor:***@[::1]:3306/mor"),
        (
            "mysql+pymysql://[::1]:3306/mor?charset=utf8",
            "mysql+pymysql://[::1]:3306/mor?charset=***",
        ),
        # no password; an empty one is masked all the same
        ("https://ops@hooks.example.com/", "https://ops@hooks.example.com/"),
        ("https://ops:@hooks.example.com/", "https://ops:***@hooks.example.com/"),
        ("https://hooks.example.com:8443/in", "https://hooks.example.com:8443/in"),
        # every query value; an item without '=' may be a bare token; empty ones stay empty
        ("https://h/in?token=abc&id=7", "https://h/in?token=***&id=***"),
        ("https://h/in?s3cr3tt0k3n", "https://h/in?***"),
        ("https://h/in?a=&&b", "https://h/in?a=&&***"),
        ("https://h/in?", "https://h/in?"),
        # fragments
        ("https://h/in#access_token=abc", "https://h/in#***"),
        ("https://u:pw@h/in?t=1#f", "https://u:***@h/in?t=***#***"),
        ("https://h/in#", "https://h/in#"),
        # a database URL without credentials, and SQLite paths
        ("sqlite:////var/lib/x@y.db", "sqlite:////var/lib/x@y.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_mask_url_hides_the_password_and_every_query_value(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("key", URL_KEYS)
def test_repr_masks_every_url_bearing_key(etc: Path, key: str) -> None:
    url = {
        "db_url": "mysql+pymysql://mor:hunter2@db1/mor?ssl_key=tok3n",
        "webhook_url": "https://ops:hunter2@hooks.example.com/in?token=tok3n",
    }[key]
    settings = load(etc, f"{key} = {url}\nwebhook_user_ids = -1\n")

    assert getattr(settings, key) == url
    assert "hunter2" not in repr(settings) and "tok3n" not in repr(settings)
    assert f"{key}={mask_url(url)!r}" in repr(settings)


def test_a_db_url_password_with_a_raw_at_sign_is_an_error(etc: Path) -> None:
    message = config_error(etc, "db_url = mysql+pymysql://mor:p@ss@db1/mor\n")

    assert message == f"{etc / 'mor.conf'}: db_url has an '@' in its password -- write it as %40"


@pytest.mark.parametrize(
    "url",
    [
        "https://ops:pa/ss@hooks.example.com/in",  # '/' ends the host for urllib: port 'pa'
        "https://ops:p?w@hooks.example.com/in",
        "https://hooks.example.com:99999/in",
        "https://:8443/in",
        "https://hooks.example.com/in?to=ops@example.com",  # urllib and the eye differ
    ],
)
def test_a_webhook_url_that_urllib_would_read_otherwise_is_an_error(etc: Path, url: str) -> None:
    message = config_error(etc, f"webhook_url = {url}\n")

    assert message.startswith(f"{etc / 'mor.conf'}: webhook_url has no host, a bad port")
    assert url not in message and "pa/ss" not in message
