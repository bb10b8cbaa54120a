"""The collector's configuration: MOR's ``mor.conf``, Asterisk's ``manager.conf``, CLI overrides.

``/var/lib/asterisk/agi-bin/mor.conf`` is MOR's flat ``key = value`` file. MOR's
own programs read ``host db user secret port server_id debug show_sql`` from it;
the collector reads those plus its own keys; :data:`KEYS` states each key once (how
it is read, its default, range and meaning). The file is read more forgivingly than
MOR's legacy ``fscanf("%s = %s")`` reads it:

* keys are case-insensitive (MOR's wiki writes ``DEBUG = 1``);
* spaces around ``=`` are optional;
* lines starting with ``;`` or ``#`` are comments;
* ``;`` or ``#`` starts a trailing comment only when whitespace precedes it, so
  ``secret = pa#ss;word`` keeps its ``#`` and ``;``. A value that must contain
  `` #`` or `` ;`` (or start with ``#``/``;``) is written in double quotes:
  ``secret = "a ;b"``; one pair of surrounding double quotes is removed;
* an empty value means "use the default", except ``secret``, where it means an
  empty password;
* when a key appears twice the last line wins (with a warning);
* a key the collector does not know is ignored. MOR's other programs read keys of their
  own from the same file (``calls_one_time``, ``cron_interval``, ``execute_call_files``):
  those, and any key unlike ours, are ignored silently. A key that looks like a
  misspelling of one of ours (``ami_prot``, ``ami-port``, ``AmiPort``, ``secert``) is
  ignored with a warning naming the key meant, in :attr:`Settings.misspelled_keys`:
  the collector prints those on stderr as well as in its log, since the setting the
  admin wrote has no effect.

AMI credentials come from the ``ami_*`` keys, else from ``manager.conf`` as
:func:`read_manager_conf` reads it (``[mor_regstatus]``, else ``[mor]``, when it
has a secret, else the first user with one), else they are ``None`` and the
collector reads MOR's ``servers`` row of this server.

Every problem a user can cause becomes a one-line :class:`ConfigError` or a
one-line warning in :attr:`Settings.warnings`; neither ever contains a secret.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

DEFAULT_CONFIG_PATH = Path("/var/lib/asterisk/agi-bin/mor.conf")
DEFAULT_ASTERISK_MOR_CONF = Path("/etc/asterisk/mor.conf")
DEFAULT_MANAGER_CONF = Path("/etc/asterisk/manager.conf")
DEFAULT_LOG_FILE = Path("/var/log/mor/ami_debug.log")
DEFAULT_STATE_FILE = Path("/var/lib/mor-regstatus/state.json")
DEFAULT_LOCK_FILE = Path("/run/mor_retrieve_peers.lock")
DEFAULT_AMI_HOST = "127.0.0.1"
DEFAULT_AMI_PORT = 5038

#: Keys that MOR's other programs read from this file (MOR's x6/asterisk/agi/mor.conf):
#: never taken for a misspelling of ours, whatever the cutoff.
MOR_OTHER_KEYS = frozenset(("calls_one_time", "cron_interval", "execute_call_files"))
#: how alike (difflib's ratio) an unknown key and one of ours must be to be called a
#: misspelling: ``ami_prot``/``ami_port`` 0.875, ``secert``/``secret`` 0.83,
#: ``ami_user``/``ami_username`` 0.8; ``hostname``/``host`` is 0.67
_MISSPELLING_CUTOFF = 0.8

_KEY = re.compile(r"[a-z0-9_.-]+")
_QUOTED = re.compile(r'"(.*?)"(?:\s+[;#].*)?')
_TRAILING_COMMENT = re.compile(r"\s[;#]")
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_SECTION = re.compile(r"\[([^\]]*)\]\s*(?:\(([^)]*)\))?")
_BOOLEANS = {
    "1": True,
    "yes": True,
    "true": True,
    "on": True,
    "0": False,
    "no": False,
    "false": False,
    "off": False,
}
#: ``peer_source``: which channel driver's registrations to read (see mor_plugin.ami).
PEER_SOURCES = ("auto", "sip", "pjsip", "both")
_WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 - compared, not bound

#: MOR's ids are ``int(11)`` (signed 32 bit): ``servers.id``, ``users.id``, ``devices.id``.
INT32_MAX = 2**31 - 1


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)


#: how README's table writes a unit after a range
_UNIT_SUFFIX = {"seconds": " s", "days": " days", "minutes": " minutes"}


@dataclass(frozen=True)
class NumberRange:
    """The values a numeric mor.conf key accepts; anything else is a ConfigError."""

    low: float
    high: float
    #: ``None``: a whole number; else the unit of a decimal number (``seconds`` …)
    unit: Optional[str] = None
    #: True: ``low`` itself is refused (``> low``), e.g. a timeout of 0
    above_low: bool = False
    #: the setting holds the value times this (``flap_window``: minutes in, seconds kept)
    scale: float = 1.0
    noun: str = "a whole number"

    def admits(self, number: float) -> bool:
        """``number`` is in the range (NaN never is)."""
        above = number > self.low if self.above_low else number >= self.low
        return above and number <= self.high

    def parse(self, raw: str) -> Optional[float]:
        """The number ``raw`` spells, if it is in the range; None otherwise."""
        if self.unit is None:
            number: float = int(raw) if _INTEGER.fullmatch(raw) else math.nan
        else:
            number = float(raw) if _DECIMAL.fullmatch(raw) else math.nan
        return number if self.admits(number) else None

    def describe(self) -> str:
        """What the error message says is expected, e.g. ``a number of seconds > 0 and <= 60``."""
        noun = self.noun if self.unit is None else f"a number of {self.unit}"
        if self.above_low:
            return f"{noun} > {_shown(self.low)} and <= {_shown(self.high)}"
        return f"{noun} from {_shown(self.low)} to {_shown(self.high)}"

    def markdown(self) -> str:
        """The range as README's table writes it, e.g. ``> 0 and ≤ 60 s``, ``1–3650 days``."""
        unit = _UNIT_SUFFIX.get(self.unit or "", "")
        low = _shown(self.low).replace("-", "−")  # a minus sign reads apart from the dash
        if self.above_low:
            return f"> {low} and ≤ {_shown(self.high)}{unit}"
        return f"{low}–{_shown(self.high)}{unit}"


_PORT = NumberRange(1, 65535, noun="a port number")


class ConfigError(Exception):
    """A configuration the collector cannot run with; ``str()`` is one line saying what to fix."""


# --------------------------------------------------------------------------- mor.conf values


class _Values:
    """Typed, validated access to mor.conf's values; errors name the file and the key.

    Each reader takes the key's :class:`Key` and gives its default when the key is
    absent or empty; :data:`KEYS` names the reader of every key."""

    def __init__(self, file: Path, values: Mapping[str, str]) -> None:
        self.file = file
        self.values = values

    def _fail(self, name: str, what: str) -> ConfigError:
        raw = self.values[name]
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        return ConfigError(f"{self.file}: {name} = {shown!r} is not {what}")

    def given(self, name: str) -> Optional[str]:
        """The value as written, ``None`` when the key is absent or empty."""
        return self.values.get(name) or None

    def read(self, name: str) -> Any:
        """The value of key ``name``, read and checked as :data:`KEYS` says."""
        key = KEY[name]
        return key.reader(self, key)

    def text(self, key: Key) -> Any:
        return self.given(key.name) or key.default

    def secret(self, key: Key) -> Any:
        """A password: an empty value is an empty password, not the default."""
        raw = self.values.get(key.name)
        return key.default if raw is None else raw

    def number(self, key: Key) -> float:
        """A value in the key's range, scaled as the setting holds it."""
        allowed = _range_of(key)
        raw = self.given(key.name)
        if raw is None:
            return float(key.default)
        number = allowed.parse(raw)
        if number is None:
            raise self._fail(key.name, allowed.describe())
        return number * allowed.scale

    def whole(self, key: Key) -> int:
        return int(self.number(key))

    def boolean(self, key: Key) -> bool:
        raw = self.given(key.name)
        if raw is None:
            return bool(key.default)
        if raw.lower() not in _BOOLEANS:
            raise self._fail(key.name, "a boolean (use 1/0, yes/no, true/false, on/off)")
        return _BOOLEANS[raw.lower()]

    def ids(self, key: Key) -> tuple[int, ...]:
        """A comma- or space-separated list of whole numbers (``-1`` allowed: providers)."""
        allowed = _range_of(key)
        raw = self.given(key.name)
        if raw is None:
            return tuple(key.default)
        numbers = [allowed.parse(part) for part in re.split(r"[\s,]+", raw) if part]
        if None in numbers:
            raise self._fail(key.name, f"{allowed.describe()}, like '-1, 5'")
        return tuple(int(number) for number in numbers if number is not None)

    def choice(self, key: Key) -> str:
        """One of the key's ``choices`` (any case)."""
        raw = self.given(key.name)
        if raw is None:
            return str(key.default)
        if raw.lower() not in key.choices:
            raise self._fail(key.name, f"one of {', '.join(key.choices)}")
        return raw.lower()

    def url(self, key: Key) -> Optional[str]:
        raw = self.given(key.name)
        if raw is None:
            return None
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
            raise ConfigError(f"{self.file}: {key.name} is not an http:// or https:// URL")
        # The URL is never echoed: it may hold a password or a token. Where urllib's reading
        # could differ from the user's, the URL is refused, so that mask_url hides all of it.
        parts = urlsplit(raw)
        try:
            valid = bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number 0-65535
            valid = False
        host_start = raw.index("//") + 2
        if not valid or "@" in raw[host_start + _cut(raw[host_start:], "/?#") :]:
            raise ConfigError(
                f"{self.file}: {key.name} has no host, a bad port, or an '@' after the host"
                " -- write '/', '?', '#' and '@' inside the user name, password, path or"
                " query as %2F, %3F, %23 and %40"
            )
        return raw

    def path(self, key: Key) -> Optional[Path]:
        """The path; a relative one is taken relative to mor.conf's directory."""
        raw = self.given(key.name)
        if raw is None:
            default: Optional[Path] = key.default
            return default
        return self.file.parent / raw


# --------------------------------------------------------------------------- the keys


@dataclass(frozen=True)
class Key:
    """One mor.conf key: how it is read, what an empty mor.conf gives, what it is for."""

    name: str
    #: the :class:`_Values` method that reads and checks it
    reader: Callable[[_Values, Key], Any]
    #: what an empty mor.conf gives, as :class:`Settings` holds it (``flap_window``: seconds)
    default: Any
    #: README's one line about it
    meaning: str
    range: Optional[NumberRange] = None
    #: README's range column for a key without a range; a note after the range for one with it
    accepts: str = ""
    #: README's default column, where the default alone does not say it
    shown_default: Optional[str] = None
    choices: tuple[str, ...] = ()
    #: False: combined with other keys into a setting (``db_url`` from the MySQL keys, the
    #: AMI login with manager.conf) instead of read into the Settings field of its name
    own_setting: bool = True

    def default_cell(self) -> str:
        """README's default column."""
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None or self.default == ():
            return "—"
        if isinstance(self.default, bool):
            return "`1`" if self.default else "`0`"
        if self.range is not None:
            return f"`{_shown(self.default / self.range.scale)}`"
        return f"`{self.default}`"

    def range_cell(self) -> str:
        """README's range column."""
        if self.choices:
            return ", ".join(f"`{choice}`" for choice in self.choices)
        if self.range is None:
            return self.accepts or "—"
        return f"{self.range.markdown()} {self.accepts}".strip()


_SECONDS = "seconds"

#: Every key of mor.conf that the collector reads, in README's order. Settings' defaults,
#: KNOWN_KEYS, NUMERIC_KEYS and README's configuration table all come from here.
KEYS: tuple[Key, ...] = (
    Key("host", _Values.text, "localhost", "MOR's MySQL server", own_setting=False),
    Key(
        "port",
        _Values.whole,
        3306,
        "MOR's MySQL port",
        _PORT,
        "(checked also when `db_url` is set)",
        own_setting=False,
    ),
    Key("db", _Values.text, "mor", "MOR's database", own_setting=False),
    Key("user", _Values.text, "mor", "the database user", own_setting=False),
    Key(
        "secret",
        _Values.secret,
        "mor",
        "the database user's password (an empty value is an empty password)",
        own_setting=False,
    ),
    Key(
        "server_id",
        _Values.whole,
        1,
        "this Asterisk server's `servers.id`",
        NumberRange(1, INT32_MAX),
        "(MOR's `servers.id` is `int(11)`)",
    ),
    Key(
        "debug",
        _Values.boolean,
        False,
        "`1`: log every AMI message (secrets masked) and SQL summaries",
        accepts="boolean",
    ),
    Key("show_sql", _Values.boolean, False, "`1`: log every SQL statement", accepts="boolean"),
    Key(
        "db_url",
        _Values.text,
        None,
        "a SQLAlchemy URL that replaces the MySQL keys (`sqlite:///…` for the demo)",
        accepts="a SQLAlchemy URL of a known driver; an `@` in the password written `%40`",
        own_setting=False,
    ),
    Key(
        "ami_host",
        _Values.text,
        DEFAULT_AMI_HOST,
        "where the local Asterisk's AMI listens (unset: `manager_conf`'s `bindaddr`"
        " when it names one address)",
        own_setting=False,
    ),
    Key(
        "ami_port",
        _Values.whole,
        DEFAULT_AMI_PORT,
        "the AMI port (unset: `manager_conf`'s `port`)",
        _PORT,
        own_setting=False,
    ),
    Key(
        "ami_username",
        _Values.text,
        None,
        "AMI login; without it the user of `manager.conf` (`[mor_regstatus]`, else `[mor]`,"
        " else the first with a secret), then the `servers` row `WHERE id = server_id`",
        shown_default="from `manager_conf`",
        own_setting=False,
    ),
    Key(
        "ami_secret",
        _Values.text,
        None,
        "the AMI user's password (unset: its `secret` in `manager_conf`)",
        shown_default="from `manager_conf`",
        own_setting=False,
    ),
    Key(
        "manager_conf",
        _Values.path,
        DEFAULT_MANAGER_CONF,
        "read for the AMI user, secret, port and address",
    ),
    Key(
        "unknown_after",
        _Values.number,
        3600.0,
        "seconds of UNREACHABLE after which a device shows UNKNOWN",
        NumberRange(0, 365 * 86400, _SECONDS),
        "(365 days)",
    ),
    Key(
        "ami_connect_timeout",
        _Values.number,
        5.0,
        "seconds to connect to AMI",
        NumberRange(0, 60, _SECONDS, above_low=True),
    ),
    Key(
        "ami_timeout",
        _Values.number,
        10.0,
        "seconds for the login, each action, and the longest silence inside the peer list",
        NumberRange(0, 300, _SECONDS, above_low=True),
    ),
    Key(
        "ami_list_timeout",
        _Values.number,
        60.0,
        "seconds for the whole peer list",
        NumberRange(0, 600, _SECONDS, above_low=True),
    ),
    Key(
        "db_timeout",
        _Values.number,
        30.0,
        "seconds for each database read or write",
        NumberRange(0, 600, _SECONDS, above_low=True),
    ),
    Key(
        "log_file",
        _Values.path,
        DEFAULT_LOG_FILE,
        "start, finish and errors always; more with `debug = 1`; mode 0640"
        " (see [Secrets in logs](#secrets-in-logs))",
    ),
    Key("state_file", _Values.path, DEFAULT_STATE_FILE, "the last run, read by the Ansible fact"),
    Key(
        "lock_file",
        _Values.path,
        DEFAULT_LOCK_FILE,
        "keeps overlapping cron runs apart (the listener uses `<lock_file>.watch`)",
    ),
    Key(
        "watch_ping_interval",
        _Values.number,
        10.0,
        "`--watch`: seconds between the listener's AMI Pings (each answer must come within"
        " `ami_timeout`)",
        NumberRange(0, 3600, _SECONDS, above_low=True),
    ),
    Key(
        "history_days",
        _Values.number,
        30.0,
        "days of transition history kept (`mor_regstatus_history`)",
        NumberRange(1, 3650, "days"),
    ),
    Key(
        "flap_changes",
        _Values.whole,
        4,
        "a device with at least `flap_changes` transitions within `flap_window` is flapping",
        NumberRange(2, 1000),
    ),
    Key(
        "flap_window",
        _Values.number,
        600.0,
        "minutes in which `flap_changes` transitions make a device flapping; also the"
        " webhook's limit of one message per device",
        NumberRange(0, 1440, "minutes", above_low=True, scale=60.0),
    ),
    Key(
        "textfile_dir",
        _Values.path,
        None,
        "node_exporter textfile directory; when set, `mor_regstatus.prom` is written there",
    ),
    Key(
        "webhook_url",
        _Values.url,
        None,
        "http(s) URL for down/up notifications (JSON POST); a `user:password@` in it is sent"
        " as HTTP Basic authentication",
        accepts="an http(s) URL with a host (see [Secrets in logs](#secrets-in-logs) for what"
        " to percent-encode)",
    ),
    Key(
        "webhook_secret",
        _Values.text,
        None,
        "HMAC-SHA256 key; the body's signature goes in `X-MOR-Signature: sha256=<hex>`",
    ),
    Key(
        "webhook_timeout",
        _Values.number,
        5.0,
        "seconds for the **whole** delivery of a run: every connection, request and answer,"
        " every chunk and the retry",
        NumberRange(0, 60, _SECONDS, above_low=True),
    ),
    Key(
        "webhook_user_ids",
        _Values.ids,
        (),
        "the owners whose devices notify, comma-separated",
        NumberRange(-1, INT32_MAX, noun="a list of whole numbers"),
        "(`-1` = providers, `0` = admin)",
    ),
    Key(
        "webhook_device_ids",
        _Values.ids,
        (),
        "the devices that notify, comma-separated",
        NumberRange(1, INT32_MAX, noun="a list of whole numbers"),
    ),
    Key(
        "peer_source",
        _Values.choice,
        PEER_SOURCES[0],
        "which channel driver to read: `auto` (chan_sip; PJSIP when Asterisk does not know"
        " `SIPpeers` or chan_sip lists no peer at all), `sip`, `pjsip`, or `both`"
        " (see [PJSIP](#pjsip-asterisk-1322))",
        choices=PEER_SOURCES,
    ),
)
KEY: Mapping[str, Key] = {key.name: key for key in KEYS}
KNOWN_KEYS = frozenset(KEY)
#: Every numeric mor.conf key and its range (README's configuration table). The loader reads
#: numbers only through these ranges, so a new numeric key cannot miss its range.
NUMERIC_KEYS: Mapping[str, NumberRange] = {
    key.name: key.range for key in KEYS if key.range is not None
}
#: mor.conf keys whose value is a URL: shown only through :func:`mask_url`.
URL_KEYS = ("db_url", "webhook_url")


def _range_of(key: Key) -> NumberRange:
    if key.range is None:
        raise TypeError(f"mor.conf key {key.name} has no range to read a number with")
    return key.range


def markdown_table() -> str:
    """README's table of the mor.conf keys (tests/test_docs.py keeps README equal to it)."""
    rows = ["| key | default | range | meaning |", "|---|---|---|---|"]
    rows += [
        f"| `{key.name}` | {key.default_cell()} | {key.range_cell()} | {key.meaning} |"
        for key in KEYS
    ]
    return "\n".join(rows) + "\n"


def _default(name: str) -> Any:
    """The default of mor.conf key ``name`` (for Settings' fields)."""
    return KEY[name].default


def _default_db_url() -> str:
    return _mysql_url(*(_default(name) for name in ("host", "port", "db", "user", "secret")))


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the collector needs, validated. The defaults are what an empty mor.conf gives."""

    config_path: Path = DEFAULT_CONFIG_PATH
    server_id: int = _default("server_id")
    db_url: str = field(default_factory=_default_db_url)
    debug: bool = _default("debug")
    show_sql: bool = _default("show_sql")
    ami_host: str = _default("ami_host")
    ami_port: int = _default("ami_port")
    #: ``None`` (with ``ami_secret``) when neither mor.conf nor manager.conf names an AMI
    #: user: the collector then uses MOR's ``servers`` row ``WHERE id = server_id``.
    ami_username: Optional[str] = _default("ami_username")
    ami_secret: Optional[str] = _default("ami_secret")
    ami_connect_timeout: float = _default("ami_connect_timeout")
    ami_timeout: float = _default("ami_timeout")
    ami_list_timeout: float = _default("ami_list_timeout")
    db_timeout: float = _default("db_timeout")  # each database read or write
    unknown_after: float = _default("unknown_after")
    log_file: Path = _default("log_file")
    state_file: Path = _default("state_file")
    lock_file: Path = _default("lock_file")
    manager_conf: Path = _default("manager_conf")
    #: the event listener (``--watch``): seconds between its AMI Pings
    watch_ping_interval: float = _default("watch_ping_interval")
    history_days: float = _default("history_days")
    #: a device with >= flap_changes transitions within flap_window seconds is flapping
    flap_changes: int = _default("flap_changes")
    flap_window: float = _default("flap_window")
    #: node_exporter textfile directory for ``mor_regstatus.prom``; None: not written
    textfile_dir: Optional[Path] = _default("textfile_dir")
    webhook_url: Optional[str] = _default("webhook_url")
    webhook_secret: Optional[str] = _default("webhook_secret")
    webhook_timeout: float = _default("webhook_timeout")
    webhook_user_ids: tuple[int, ...] = _default("webhook_user_ids")
    webhook_device_ids: tuple[int, ...] = _default("webhook_device_ids")
    #: auto (chan_sip, PJSIP when chan_sip is absent), sip, pjsip or both
    peer_source: str = _default("peer_source")
    warnings: tuple[str, ...] = ()
    #: the warnings (also in ``warnings``) about keys that look like misspellings of ours:
    #: the setting has no effect, so the collector prints these on stderr too
    misspelled_keys: tuple[str, ...] = ()

    @property
    def listener_silent_after(self) -> float:
        """Seconds after which the event listener's last heartbeat no longer shows it alive.

        A live listener writes one after every answered Ping: it waits
        ``watch_ping_interval``, the answer takes up to ``ami_timeout``, and the write waits
        for the batch ahead of it and then for itself, each up to ``db_timeout``."""
        return self.watch_ping_interval + self.ami_timeout + 2 * self.db_timeout

    def masked_db_url(self) -> str:
        """``db_url`` with its password replaced by ``***``, fit for logs."""
        return mask_url(self.db_url)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value: object = getattr(self, f.name)
            if f.name in URL_KEYS and isinstance(value, str):
                value = mask_url(value)
            elif f.name in ("ami_secret", "webhook_secret") and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


# --------------------------------------------------------------------------- mor.conf (flat)


@dataclass(frozen=True)
class _Entry:
    lineno: int
    key: str
    value: str


def _flat_value(raw: str) -> str:
    """The value part of ``key = value``: trailing comment and one pair of quotes removed."""
    stripped = raw.strip()
    if stripped.startswith('"'):
        quoted = _QUOTED.fullmatch(stripped)
        if quoted:
            return quoted.group(1)
    comment = _TRAILING_COMMENT.search(raw)
    if comment:
        raw = raw[: comment.start()]
    return raw.strip()


def _flat_entries(text: str, source: str) -> Iterator[_Entry]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        key, equals, raw = stripped.partition("=")
        if not equals:
            # The line is not echoed: it may be a password written without '='.
            raise ConfigError(
                f"{source}: line {lineno} is not 'key = value' (comments start with ; or #)"
            )
        key = key.strip().lower()
        if not _KEY.fullmatch(key):
            raise ConfigError(f"{source}: line {lineno} has no valid key name before '='")
        yield _Entry(lineno, key, _flat_value(raw))


def parse_flat_conf(text: str, source: str = "mor.conf") -> dict[str, str]:
    """Read MOR's flat ``key = value`` format: lower-cased keys, the last occurrence wins.

    ``source`` names the file in the :class:`ConfigError` raised for a line without ``=``.
    """
    return {entry.key: entry.value for entry in _flat_entries(text, source)}


# --------------------------------------------------------------------------- Asterisk INI files


@dataclass
class _Section:
    name: str
    template: bool
    values: dict[str, str]


def _asterisk_lines(text: str) -> Iterator[str]:
    """Lines without Asterisk comments: ``;`` to the end, ``;-- … --;`` blocks, ``\\;`` is ``;``."""
    in_block = False
    for line in text.splitlines():
        out: list[str] = []
        i = 0
        while i < len(line):
            if in_block:
                end = line.find("--;", i)
                if end < 0:
                    break
                in_block = False
                i = end + 3
            elif line.startswith("\\;", i):
                out.append(";")
                i += 2
            elif line[i] == ";":
                if not line.startswith(";--", i):
                    break
                in_block = True
                i += 3
            else:
                out.append(line[i])
                i += 1
        yield "".join(out).strip()


def _asterisk_sections(text: str) -> list[_Section]:
    """Sections of an Asterisk config file, in file order, with templates applied.

    Understands ``[name]``, templates ``[name](!)``, inheritance ``[name](tpl1,tpl2)``,
    ``[name](+)`` (adds to an earlier section) and ``key = value`` / ``key => value``.
    ``#include`` lines must have been expanded (``_with_includes``); ``#exec`` is ignored.
    """
    sections: list[_Section] = []
    current: Optional[_Section] = None
    for line in _asterisk_lines(text):
        if not line or line.startswith("#"):
            continue
        header = _SECTION.fullmatch(line)
        if header:
            name = header.group(1).strip()
            options = [o.strip() for o in (header.group(2) or "").split(",") if o.strip()]
            if "+" in options:
                earlier = [s for s in sections if s.name == name]
                if earlier:
                    current = earlier[-1]
                    continue
            current = _Section(name, "!" in options, {})
            for option in options:
                if option in ("!", "+"):
                    continue
                for base in sections:
                    if base.name == option:
                        current.values.update(base.values)
            sections.append(current)
            continue
        key, equals, value = line.partition("=")
        if not equals or current is None:
            continue
        current.values[key.strip().lower()] = value.removeprefix(">").strip()
    return sections


_INCLUDE = re.compile(r'\s*#include\s+"?([^"]+?)"?\s*$')


def _with_includes(path: Path, text: str, depth: int = 0) -> str:
    """``text`` with each ``#include "pattern"`` replaced by the files it names, as Asterisk
    does (relative to the including file's folder; ``manager.d/*.conf`` holds the project's
    own least-privilege user). Unreadable files and deeper nesting than 3 are skipped."""
    lines = []
    for line in text.splitlines():
        match = _INCLUDE.match(line)
        if not match:
            lines.append(line)
            continue
        if depth >= 3:
            continue
        pattern = match.group(1).strip()
        base = path.parent if not pattern.startswith("/") else Path("/")
        for included in sorted(base.glob(pattern.lstrip("/"))):
            try:
                lines.append(_with_includes(included, _read_text(included), depth + 1))
            except OSError:
                continue
    return "\n".join(lines)


def _read_text(path: Path) -> str:
    """The file as text; raises OSError (ValueError subclasses become OSError too)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise OSError(f"not UTF-8 text at byte {err.start}") from None


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


# --------------------------------------------------------------------------- manager.conf


@dataclass(frozen=True)
class ManagerConf:
    """What the collector takes from Asterisk's ``manager.conf``."""

    #: the AMI user: ``[mor_regstatus]`` (the least-privilege user the Ansible role can
    #: install in ``manager.d/``), else ``[mor]``, when it has a non-empty ``secret``, else
    #: the first user section (not ``[general]``, not a template) that has one; None: none
    username: Optional[str]
    secret: Optional[str]
    #: ``[general]`` values as written (None: absent)
    port_text: Optional[str]
    bindaddr: Optional[str]
    enabled: Optional[str]
    secrets: Mapping[str, str]  # lower-cased user name -> secret

    @property
    def port(self) -> Optional[int]:
        """``[general] port``; None when absent or not a port number."""
        port = None if self.port_text is None else _PORT.parse(self.port_text)
        return None if port is None else int(port)

    @property
    def disabled(self) -> bool:
        """``[general] enabled`` turns AMI off."""
        return self.enabled is not None and self.enabled.lower() in ("no", "false", "off", "0")


def _parse_manager(text: str) -> ManagerConf:
    general: dict[str, str] = {}
    users: list[tuple[str, str]] = []
    for section in _asterisk_sections(text):
        if section.name.lower() == "general":
            general.update(section.values)
        elif not section.template and section.values.get("secret"):
            users.append((section.name, section.values["secret"]))
    # the project's own least-privilege user first, then MOR's usual one, then any
    chosen = (
        [user for user in users if user[0].lower() == "mor_regstatus"]
        or [user for user in users if user[0].lower() == "mor"]
        or users
    )[:1]
    return ManagerConf(
        username=chosen[0][0] if chosen else None,
        secret=chosen[0][1] if chosen else None,
        port_text=general.get("port"),
        bindaddr=general.get("bindaddr"),
        enabled=general.get("enabled"),
        secrets={name.lower(): secret for name, secret in reversed(users)},
    )


def read_manager_conf(path: Path) -> Optional[ManagerConf]:
    """Asterisk's ``manager.conf``, its ``#include`` lines followed; None when it is missing.

    Other read errors raise ``OSError``.
    """
    try:
        text = _with_includes(path, _read_text(path))
    except FileNotFoundError:
        return None
    return _parse_manager(text)


def _squeezed(key: str) -> str:
    return re.sub(r"[_.-]", "", key)


def meant_key(key: str) -> Optional[str]:
    """The key of ours that the unknown, lower-cased ``key`` looks like a misspelling of;
    None for a key unlike ours or one of MOR's own (:data:`MOR_OTHER_KEYS`).

    ``ami-port``, ``amiport`` and ``ami.port`` mean ``ami_port``; otherwise the closest key
    of ours by difflib's ratio, when it reaches :data:`_MISSPELLING_CUTOFF`.
    """
    if key in KNOWN_KEYS or key in MOR_OTHER_KEYS:
        return None
    squeezed = _squeezed(key)
    for known in sorted(KNOWN_KEYS):
        if _squeezed(known) == squeezed:
            return known
    close = difflib.get_close_matches(
        re.sub(r"[.-]", "_", key), sorted(KNOWN_KEYS), n=1, cutoff=_MISSPELLING_CUTOFF
    )
    return close[0] if close else None


def _collect(
    path: Path, entries: Iterator[_Entry], warnings: list[str], misspelled: list[str]
) -> dict[str, str]:
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for entry in entries:
        if entry.key not in KNOWN_KEYS:
            meant = meant_key(entry.key)
            if meant is not None:
                misspelled.append(
                    f"{path}: line {entry.lineno}: unknown key '{entry.key}'"
                    f" (did you mean '{meant}'?): ignored"
                )
            continue
        if entry.key in lines:
            warnings.append(
                f"{path}: '{entry.key}' is set on lines {lines[entry.key]} and {entry.lineno};"
                " the last one wins"
            )
        lines[entry.key] = entry.lineno
        values[entry.key] = entry.value
    return values


def _mysql_url(host: str, port: int, database: str, user: str, password: str) -> str:
    url = URL.create(
        "mysql+pymysql",
        username=user,
        password=password,
        host=host,
        port=port,
        database=database,
        query={"charset": "utf8mb4"},
    )
    return url.render_as_string(hide_password=False)


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(.*)", re.DOTALL)
#: SQLAlchemy's reading of ``user:password@``: the password runs to the first ``@`` and
#: may hold ``/ ? #`` (sqlalchemy.engine.url._parse_url)
_SQLALCHEMY_USERINFO = re.compile(r"[^:/]*:[^@]*@")


def _cut(text: str, stops: str) -> int:
    """Index of the first character of ``stops`` in ``text``; its length when there is none."""
    return min((i for i in map(text.find, stops) if i >= 0), default=len(text))


def _userinfo_end(scheme: str, rest: str) -> int:
    """Index in ``rest`` of the ``@`` that ends ``user:password``, -1 when there is none.

    http(s) URLs are read as urllib reads them (RFC 3986: the authority ends at the first
    ``/ ? #``, its last ``@`` ends the user information); database URLs also as SQLAlchemy
    reads them, and the wider of the two readings is masked.
    """
    end = rest.rfind("@", 0, _cut(rest, "/?#"))
    if scheme.lower() not in ("http://", "https://"):
        sqlalchemy = _SQLALCHEMY_USERINFO.match(rest)
        if sqlalchemy:
            end = max(end, sqlalchemy.end() - 1)
    return end


def _masked_query(query: str) -> str:
    """Every value replaced by ``***``; an item without ``=`` is all value."""
    items = []
    for item in query.split("&"):
        key, equals, value = item.partition("=")
        if not equals:
            items.append("***" if item else "")
        else:
            items.append(f"{key}=***" if value else item)
    return "&".join(items)


def mask_url(url: str) -> str:
    """``url`` fit for a log, stderr or the state file.

    The password becomes ``***`` (the user name stays), every query value ``***`` and a
    fragment ``***``; scheme, host, port and path stay as written. Every URL that the
    collector shows goes through here.
    """
    match = _SCHEME.fullmatch(url)
    scheme, rest = match.groups() if match else ("", url)
    head = scheme
    end = _userinfo_end(scheme, rest) if match else -1
    if end >= 0:
        user, colon, _password = rest[:end].partition(":")
        head += f"{user}:***@" if colon else f"{user}@"
        rest = rest[end + 1 :]
    path, tail = rest[: _cut(rest, "?#")], rest[_cut(rest, "?#") :]
    query, hashmark, fragment = tail.removeprefix("?").partition("#")
    if tail.startswith("?"):
        path += "?" + _masked_query(query)
    if hashmark:
        path += "#***" if fragment else "#"
    return head + path


def _db_url(values: _Values) -> str:
    given = values.given("db_url")
    port = values.read("port")  # checked also when db_url is set
    if given is not None:
        # The URL is never echoed: it may hold a password.
        try:
            url = make_url(given)
        except ArgumentError:
            raise ConfigError(
                f"{values.file}: db_url is not a SQLAlchemy URL"
                " (like mysql+pymysql://user:password@host:3306/mor) -- fix it or remove it"
            ) from None
        try:
            url.get_dialect()
        except NoSuchModuleError:
            raise ConfigError(
                f"{values.file}: db_url names an unknown database driver '{url.drivername}'"
                " -- use mysql+pymysql:// or sqlite://"
            ) from None
        if "@" in (url.host or ""):
            # SQLAlchemy ends the password at its first '@': the rest would be the host
            raise ConfigError(
                f"{values.file}: db_url has an '@' in its password -- write it as %40"
            )
        return given
    return _mysql_url(
        values.read("host"), port, values.read("db"), values.read("user"), values.read("secret")
    )


@dataclass(frozen=True)
class _Ami:
    host: str
    port: int
    username: Optional[str]
    secret: Optional[str]


def _ami(values: _Values, manager_conf: Path, warnings: list[str]) -> _Ami:
    """The AMI address and login: mor.conf's ``ami_*`` keys, what they leave open from
    manager.conf, the rest from the keys' defaults (no login: MOR's ``servers`` row)."""
    host = values.given("ami_host")
    port: Optional[int] = values.read("ami_port") if values.given("ami_port") else None
    username = values.given("ami_username")
    secret = values.given("ami_secret")
    if secret is not None and username is None:
        raise ConfigError(
            f"{values.file}: ami_secret is set but ami_username is not -- set both or neither"
        )
    if host is not None and port is not None and username is not None and secret is not None:
        return _Ami(host, port, username, secret)

    manager = _load_manager(manager_conf, warnings)
    if username is not None and secret is None:
        secret = manager.secrets.get(username.lower()) if manager else None
        if secret is None:
            raise ConfigError(
                f"{values.file}: ami_username = '{username}' is set but ami_secret is not,"
                f" and {manager_conf} has no [{username}] with a secret -- set ami_secret"
            )
    elif username is None and manager is not None:
        username, secret = manager.username, manager.secret
    if port is None and manager is not None and manager.port_text is not None:
        port = manager.port
        if port is None:
            warnings.append(
                f"{manager_conf}: [general] port = {manager.port_text!r} is not a port number;"
                f" using {DEFAULT_AMI_PORT}"
            )
    if host is None and manager is not None and manager.bindaddr not in _WILDCARD_ADDRESSES:
        host = manager.bindaddr
    return _Ami(host or DEFAULT_AMI_HOST, port or DEFAULT_AMI_PORT, username, secret)


def _load_manager(path: Path, warnings: list[str]) -> Optional[ManagerConf]:
    """:func:`read_manager_conf`, its problems turned into warnings."""
    try:
        manager = read_manager_conf(path)
    except OSError as err:
        warnings.append(f"{path}: cannot read ({_reason(err)}); AMI login from MOR's servers row")
        return None
    if manager is not None and manager.disabled:
        warnings.append(
            f"{path}: [general] enabled = {manager.enabled} turns AMI off -- set enabled = yes"
        )
    return manager


def _compare_server_id(
    path: Path, server_id: int, asterisk_mor_conf: Path, warnings: list[str]
) -> None:
    try:
        text = _read_text(asterisk_mor_conf)
    except FileNotFoundError:
        return
    except OSError as err:
        warnings.append(f"{asterisk_mor_conf}: cannot read ({_reason(err)}) to compare server_id")
        return
    sections = _asterisk_sections(text)
    # [global] is where MOR writes it; any other section is a fallback for odd files.
    ordered = sorted(sections, key=lambda s: s.name.lower() != "global")
    found = [s.values["server_id"] for s in ordered if s.values.get("server_id")]
    if not found:
        return
    theirs = found[0]
    number = NUMERIC_KEYS["server_id"].parse(theirs)
    if number is None:
        warnings.append(
            f"{asterisk_mor_conf}: server_id = {theirs[:40]!r} is not"
            f" {NUMERIC_KEYS['server_id'].describe()}; cannot compare it with {path}"
        )
    elif int(number) != server_id:
        warnings.append(
            f"{asterisk_mor_conf} says server_id = {int(number)} but {path} says {server_id};"
            " MOR expects them equal"
        )


def _read_mor_conf(path: Path, warnings: list[str], misspelled: list[str]) -> _Values:
    try:
        text = _read_text(path)
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read ({_reason(err)}) -- pass --config or create it"
        ) from None
    return _Values(path, _collect(path, _flat_entries(text, str(path)), warnings, misspelled))


def load_settings(
    path: Path,
    *,
    log_file: Optional[Path] = None,
    state_file: Optional[Path] = None,
    lock_file: Optional[Path] = None,
    asterisk_mor_conf: Path = DEFAULT_ASTERISK_MOR_CONF,
) -> Settings:
    """Read and validate ``path`` (MOR's agi-bin ``mor.conf``) and what it points to.

    ``log_file``, ``state_file`` and ``lock_file`` (from the command line) win over the
    file. Raises :class:`ConfigError` for anything the collector cannot run with.
    """
    warnings: list[str] = []
    misspelled: list[str] = []
    values = _read_mor_conf(path, warnings, misspelled)
    warnings += misspelled

    own = {key.name: values.read(key.name) for key in KEYS if key.own_setting}
    command_line = {"log_file": log_file, "state_file": state_file, "lock_file": lock_file}
    own.update({name: given for name, given in command_line.items() if given is not None})
    db_url = _db_url(values)
    ami = _ami(values, own["manager_conf"], warnings)
    settings = Settings(
        config_path=path,
        db_url=db_url,
        ami_host=ami.host,
        ami_port=ami.port,
        ami_username=ami.username,
        ami_secret=ami.secret,
        **own,
    )
    if settings.webhook_url and not (settings.webhook_user_ids or settings.webhook_device_ids):
        warnings.append(
            f"{path}: webhook_url is set but neither webhook_user_ids nor webhook_device_ids;"
            " no device will be notified"
        )
    _compare_server_id(path, settings.server_id, asterisk_mor_conf, warnings)
    return replace(settings, warnings=tuple(warnings), misspelled_keys=tuple(misspelled))
