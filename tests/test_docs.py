"""docs/TROUBLESHOOTING.md stays true: failures staged for real (bad mor.conf values, missing
and unwritable files, the AMI simulator refusing or hanging, MariaDB refusing) make the
installed ``mor-retrieve-peers`` print a line that the document lists, under the exit code
the process really returned. README's table of mor.conf keys is the code's, the defaults
the docs mention are the code's, and every exported metric is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from regstatus_helpers import ROOT, MorDatabase, write_conf

from mor_plugin import cli, config, textfile
from mor_plugin.simulator import AmiSimulator, Faults, realistic_peers, run_in_thread
from testbed.asterisk import free_port
from widget import metrics as widget_metrics

pytestmark = pytest.mark.mariadb

DOC = ROOT / "docs" / "TROUBLESHOOTING.md"
PREFIX = "mor-retrieve-peers: "
#: a placeholder of the document: <file>, <n>, <manager.conf>, <end event> ...
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 ._-]*>")


def line_pattern(documented: str) -> re.Pattern[str]:
    """The documented line as a regex: literal text, each placeholder any text."""
    literal = PLACEHOLDER.split(documented)
    return re.compile("(.+?)".join(re.escape(part) for part in literal))


def documented_lines() -> dict[int, list[str]]:
    """Exit code -> the lines in the code blocks of its '### Exit code N' section."""
    text = DOC.read_text(encoding="utf-8")
    found: dict[int, list[str]] = {}
    for match in re.finditer(r"^### Exit code (\d+)\b.*?$(.*?)(?=^##)", text, re.M | re.S):
        blocks = re.findall(r"^```\n(.*?)^```", match.group(2), re.M | re.S)
        found[int(match.group(1))] = [
            line for block in blocks for line in block.splitlines() if line.startswith(PREFIX)
        ]
    return found


DOCUMENTED = documented_lines()


def documented_codes(line: str) -> set[int]:
    """The exit codes under which ``line`` is documented."""
    return {
        code
        for code, lines in DOCUMENTED.items()
        if any(line_pattern(documented).fullmatch(line) for documented in lines)
    }


def collector(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as cron runs it through the launcher."""
    script = Path(sys.executable).with_name("mor-retrieve-peers")
    return subprocess.run(
        [str(script), "--config", str(conf), *args], capture_output=True, text=True, timeout=60
    )


def assert_documented(done: subprocess.CompletedProcess[str], code: int, staged: str) -> None:
    """One stderr line, of the failure staged, documented under the code it exited with."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert staged in lines[0], f"staged {staged!r}, got {lines[0]!r}"
    assert done.returncode == code, lines[0]
    assert documented_codes(lines[0]) == {code}, (
        f"not in {DOC.name} under exit code {code}:\n{lines[0]}"
    )


def test_the_document_has_a_section_for_every_exit_code_of_the_collector() -> None:
    codes = {cli.EXIT_OK, cli.EXIT_UNEXPECTED, cli.EXIT_CONFIG, cli.EXIT_AMI, cli.EXIT_DATABASE}
    assert set(DOCUMENTED) == codes
    assert all(DOCUMENTED[code] for code in codes)


# --- exit 2: mor.conf and the files the collector writes -----------------------------


def conf_lines(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mor.conf"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "staged"),
    [
        ("server_id = abc\n", "server_id = 'abc' is not a whole number"),
        ("history_days = 1000000000000\n", "is not a number of days from 1 to 3650"),
        ("ami_timeout = 0\n", "ami_timeout = '0' is not a number of seconds > 0"),
        ("debug = maybe\n", "debug = 'maybe' is not a boolean"),
        ("peer_source = chan_sip\n", "is not one of auto, sip, pjsip, both"),
        ("webhook_user_ids = a, b\n", "is not a list of whole numbers"),
        ("justaline\n", "line 1 is not 'key = value'"),
        ("webhook_url = ftp://hooks.example.com/in\n", "webhook_url is not an http://"),
        ("db_url = not a url\n", "db_url is not a SQLAlchemy URL"),
        ("db_url = mysql+pymysql://mor:p@ss@db1/mor\n", "db_url has an '@' in its password"),
        ("ami_secret = s3cret\n", "ami_secret is set but ami_username is not"),
    ],
)
def test_a_bad_mor_conf_prints_a_documented_line_and_exits_2(
    tmp_path: Path, text: str, staged: str
) -> None:
    assert_documented(collector(conf_lines(tmp_path, text)), 2, staged)


def test_a_missing_mor_conf_is_documented(tmp_path: Path) -> None:
    assert_documented(collector(tmp_path / "missing.conf"), 2, "cannot read (No such file")


@pytest.mark.parametrize(
    ("key", "staged"), [("log_file", "cannot write the log"), ("lock_file", "cannot take the lock")]
)
def test_an_unwritable_log_or_lock_path_is_documented(
    tmp_path: Path, key: str, staged: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    conf = write_conf(tmp_path, "sqlite:///unused.db", None, **{key: tmp_path / "a-file" / "x"})
    assert_documented(collector(conf), 2, staged)


def test_no_ami_user_anywhere_is_documented(mor_db: MorDatabase, tmp_path: Path) -> None:
    mor_db.add_server(1, ami_username="")
    conf = write_conf(tmp_path, mor_db.url, None)
    text = "".join(
        line for line in conf.read_text().splitlines(keepends=True) if not line.startswith("ami_")
    )
    conf.write_text(text)
    assert_documented(collector(conf), 2, "no AMI user -- set ami_username/ami_secret")


# --- exit 3: Asterisk ------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[AmiSimulator]:
    with run_in_thread(AmiSimulator(realistic_peers(5), username="mor", secret="s3cret")) as s:
        yield s


def test_nothing_on_the_ami_port_is_documented(mor_db: MorDatabase, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, mor_db.url, None, ami_port=free_port())
    assert_documented(collector(conf), 3, "cannot connect to Asterisk AMI at 127.0.0.1:")


@pytest.mark.parametrize("args", [(), ("--watch",)])
def test_a_refused_ami_login_is_documented(
    mor_db: MorDatabase, sim: AmiSimulator, tmp_path: Path, args: tuple[str, ...]
) -> None:
    conf = write_conf(tmp_path, mor_db.url, sim, ami_secret="wrong")
    staged = "listener stopped: AMI login refused" if args else "refused AMI login for user 'mor'"
    assert_documented(collector(conf, *args), 3, staged)


@pytest.mark.parametrize(
    ("simulator", "extra", "staged"),
    [
        ({"write": ""}, {}, "may not run SIPpeers"),
        ({"version": "21"}, {"peer_source": "sip"}, "chan_sip is not loaded"),
        ({"faults": Faults(no_pjsip=True)}, {"peer_source": "pjsip"}, "res_pjsip is not loaded"),
        ({"faults": Faults(hang_after=2)}, {"ami_timeout": 1}, "went silent for 1 s"),
        ({"faults": Faults(drop_after=2)}, {}, "closed the AMI connection in the middle"),
        ({"faults": Faults(wrong_count=True)}, {}, "list is inconsistent"),
        ({"faults": Faults(slow=0.2)}, {"ami_list_timeout": 0.5}, "not complete within 0.5 s"),
    ],
)
def test_asterisk_failing_mid_run_is_documented(
    mor_db: MorDatabase,
    tmp_path: Path,
    simulator: dict[str, Any],
    extra: dict[str, Any],
    staged: str,
) -> None:
    fake = AmiSimulator(realistic_peers(5), username="mor", secret="s3cret", **simulator)
    with run_in_thread(fake) as s:
        assert_documented(collector(write_conf(tmp_path, mor_db.url, s, **extra)), 3, staged)


# --- exit 4: the database -------------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("--migrate",), ("--watch",)])
def test_a_wrong_database_password_is_documented(
    mor_db: MorDatabase, sim: AmiSimulator, tmp_path: Path, args: tuple[str, ...]
) -> None:
    url = mor_db.url.replace(f":{mor_db.password}@", ":wrong-password@")
    done = collector(write_conf(tmp_path, url, sim), *args)
    assert_documented(done, 4, "MySQL error 1045: Access denied")
    assert "wrong-password" not in done.stderr


def test_a_database_that_refuses_connections_is_documented(
    sim: AmiSimulator, tmp_path: Path
) -> None:
    url = f"mysql+pymysql://mor:secretpw@127.0.0.1:{free_port()}/mor"
    assert_documented(collector(write_conf(tmp_path, url, sim)), 4, "MySQL error 2003")


# --- exit 0 with a line ------------------------------------------------------------------


def test_a_misspelled_key_is_documented(
    mor_db: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    mor_db.add_server(1)
    conf = write_conf(tmp_path, mor_db.url, sim)
    with conf.open("a") as handle:
        handle.write("ami_prot = 5039\n")
    assert_documented(collector(conf), 0, "unknown key 'ami_prot' (did you mean 'ami_port'?)")


# --- README's and docs/' words on mor.conf's keys and the metrics ------------------------


def test_the_readme_table_of_mor_conf_keys_is_the_code_s() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = config.markdown_table()
    assert table in readme, (
        "README's mor.conf table differs from mor_plugin.config.KEYS; paste the output of\n"
        "python -c 'from mor_plugin import config; print(config.markdown_table())'"
    )


#: "`ami_timeout` (default 10 s", "`db_timeout`, default 30 s" in the docs' prose
DEFAULT_IN_PROSE = re.compile(r"`([a-z_]+)`,? \(?default ([0-9.]+)")


def test_the_docs_state_mor_conf_defaults_as_the_code_does() -> None:
    stated = [
        (doc.name, match.group(1), match.group(2))
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for match in DEFAULT_IN_PROSE.finditer(doc.read_text(encoding="utf-8"))
        if match.group(1) in config.KEY
    ]
    assert stated  # the pattern still finds the docs' wording
    for doc, name, default in stated:
        assert config.KEY[name].default_cell() == f"`{default}`", f"{doc}: {name}"


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading."""
    start = text.index(heading) + len(heading)
    following = re.search(r"^#", text[start:], re.M)
    return text[start : start + following.start()] if following else text[start:]


def test_every_metric_is_documented_where_its_exporter_is() -> None:
    readme = section((ROOT / "README.md").read_text(encoding="utf-8"), "### Metrics textfile")
    widget = section((ROOT / "docs" / "WIDGET.md").read_text(encoding="utf-8"), "### Metrics")
    assert [f.name for f in textfile.FAMILIES if f"`{f.name}" not in readme] == []
    assert [f.name for f in widget_metrics.FAMILIES if f"`{f.name}" not in widget] == []
    silent_after = config.Settings().listener_silent_after
    assert f"({silent_after:g} s by default)" in readme


def test_the_alert_rules_name_metrics_both_exporters_write() -> None:
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    exprs = re.findall(r"^\s*expr: (.*)$", operations, re.M)
    named = {name for expr in exprs for name in re.findall(r"mor_regstatus_[a-z_]+", expr)}
    both = {f.name for f in textfile.FAMILIES} & {f.name for f in widget_metrics.FAMILIES}
    assert named and named <= both


def test_the_architecture_page_names_every_module() -> None:
    """docs/ARCHITECTURE.md draws the modules: a module added without its line fails here."""
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    modules = [
        path.relative_to(ROOT)
        for folder in ("mor_plugin", "widget")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    assert modules
    missing = []
    for module in modules:
        if module.parent.name == "store":  # the store's modules: named in its row
            named = module.name == "__init__.py" or f"`{module.stem}`" in page
        else:
            named = str(module) in page or f"`{module.name}`" in page
        if not named:
            missing.append(str(module))
    assert missing == []
