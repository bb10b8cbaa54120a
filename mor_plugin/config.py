"""The collector's configuration: MOR's ``mor.conf``, Asterisk's ``manager.conf``, CLI overrides.

``/var/lib/asterisk/agi-bin/mor.conf`` is MOR's flat ``key = value`` file. MOR's
own programs read ``host db user secret port server_id debug show_sql`` from it;
the collector reads those plus its own keys (see ``_OUR_KEYS``). The reader is
more forgiving than MOR's legacy ``fscanf("%s = %s")``:

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

AMI credentials come from the ``ami_*`` keys, else from ``manager.conf`` (the
``[mor]`` user when it has a secret, else the first user with one), else they
are ``None`` and the collector reads MOR's ``servers`` row of this server.

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
from typing import Optional
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

_MOR_DEFAULTS = {"host": "localhost", "db": "mor", "user": "mor", "secret": "mor", "port": "3306"}
_MOR_KEYS = ("host", "db", "user", "secret", "port", "server_id", "debug", "show_sql")
_OUR_KEYS = (
    "db_url",
    "ami_host",
    "ami_port",
    "ami_username",
    "ami_secret",
    "manager_conf",
    "unknown_after",
    "ami_connect_timeout",
    "ami_timeout",
    "ami_list_timeout",
    "db_timeout",
    "log_file",
    "state_file",
    "lock_file",
    "watch_ping_interval",
    "history_days",
    "flap_changes",
    "flap_window",
    "textfile_dir",
    "webhook_url",
    "webhook_secret",
    "webhook_timeout",
    "webhook_user_ids",
    "webhook_device_ids",
    "peer_source",
)
KNOWN_KEYS = frozenset(_MOR_KEYS + _OUR_KEYS)
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


_PORT = NumberRange(1, 65535, noun="a port number")

#: Every numeric mor.conf key and its range (README's configuration table). The loader reads
#: numbers only through this table, so a new numeric key cannot miss its range.
NUMERIC_KEYS: Mapping[str, NumberRange] = {
    "server_id": NumberRange(1, INT32_MAX),
    "port": _PORT,
    "ami_port": _PORT,
    "ami_connect_timeout": NumberRange(0, 60, "seconds", above_low=True),
    "ami_timeout": NumberRange(0, 300, "seconds", above_low=True),
    "ami_list_timeout": NumberRange(0, 600, "seconds", above_low=True),
    "db_timeout": NumberRange(0, 600, "seconds", above_low=True),
    "unknown_after": NumberRange(0, 365 * 86400, "seconds"),
    "watch_ping_interval": NumberRange(0, 3600, "seconds", above_low=True),
    "history_days": NumberRange(1, 3650, "days"),
    "flap_changes": NumberRange(2, 1000),
    "flap_window": NumberRange(0, 1440, "minutes", above_low=True, scale=60.0),
    "webhook_timeout": NumberRange(0, 60, "seconds", above_low=True),
    # lists: every element in the range
    "webhook_user_ids": NumberRange(-1, INT32_MAX, noun="a list of whole numbers"),
    "webhook_device_ids": NumberRange(1, INT32_MAX, noun="a list of whole numbers"),
}

#: mor.conf keys whose value is a URL: shown only through :func:`mask_url`.
URL_KEYS = ("db_url", "webhook_url")


def _default_db_url() -> str:
    return _mysql_url(
        _MOR_DEFAULTS["host"],
        int(_MOR_DEFAULTS["port"]),
        _MOR_DEFAULTS["db"],
        _MOR_DEFAULTS["user"],
        _MOR_DEFAULTS["secret"],
    )


class ConfigError(Exception):
    """A configuration the collector cannot run with; ``str()`` is one line saying what to fix."""


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the collector needs, validated. The defaults are what an empty mor.conf gives."""

    config_path: Path = DEFAULT_CONFIG_PATH
    server_id: int = 1
    db_url: str = field(default_factory=_default_db_url)
    debug: bool = False
    show_sql: bool = False
    ami_host: str = DEFAULT_AMI_HOST
    ami_port: int = DEFAULT_AMI_PORT
    #: ``None`` (with ``ami_secret``) when neither mor.conf nor manager.conf names an AMI
    #: user: the collector then uses MOR's ``servers`` row ``WHERE id = server_id``.
    ami_username: Optional[str] = None
    ami_secret: Optional[str] = None
    ami_connect_timeout: float = 5.0
    ami_timeout: float = 10.0
    ami_list_timeout: float = 60.0
    db_timeout: float = 30.0  # each database read or write
    unknown_after: float = 3600.0
    log_file: Path = DEFAULT_LOG_FILE
    state_file: Path = DEFAULT_STATE_FILE
    lock_file: Path = DEFAULT_LOCK_FILE
    manager_conf: Path = DEFAULT_MANAGER_CONF
    #: the event listener (``--watch``): seconds between its AMI Pings
    watch_ping_interval: float = 10.0
    history_days: float = 30.0
    #: a device with >= flap_changes transitions within flap_window seconds is flapping
    flap_changes: int = 4
    flap_window: float = 600.0
    #: node_exporter textfile directory for ``mor_regstatus.prom``; None: not written
    textfile_dir: Optional[Path] = None
    webhook_url: Optional[str] = None
    webhook_secret: Optional[str] = None
    webhook_timeout: float = 5.0
    webhook_user_ids: tuple[int, ...] = ()
    webhook_device_ids: tuple[int, ...] = ()
    #: auto (chan_sip, PJSIP when chan_sip is absent), sip, pjsip or both
    peer_source: str = "auto"
    warnings: tuple[str, ...] = ()
    #: the warnings (also in ``warnings``) about keys that look like misspellings of ours:
    #: the setting has no effect, so the collector prints these on stderr too
    misspelled_keys: tuple[str, ...] = ()

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
class _Manager:
    username: Optional[str]
    secret: Optional[str]
    port_text: Optional[str]
    bindaddr: Optional[str]
    enabled: Optional[str]
    secrets: Mapping[str, str]  # lower-cased user name -> secret


def _parse_manager(text: str) -> _Manager:
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
    return _Manager(
        username=chosen[0][0] if chosen else None,
        secret=chosen[0][1] if chosen else None,
        port_text=general.get("port"),
        bindaddr=general.get("bindaddr"),
        enabled=general.get("enabled"),
        secrets={name.lower(): secret for name, secret in reversed(users)},
    )


def _port(text: Optional[str]) -> Optional[int]:
    port = None if text is None else _PORT.parse(text)
    return None if port is None else int(port)


def read_manager_conf(path: Path) -> tuple[Optional[str], Optional[str], Optional[int]]:
    """``(username, secret, port)`` from Asterisk's ``manager.conf``.

    ``#include`` lines are followed. The user is the section ``[mor_regstatus]`` (the
    least-privilege user the Ansible role can install in ``manager.d/``), else ``[mor]``,
    when it has a non-empty ``secret``, else the first user section (not ``[general]``,
    not a template) that has one; ``(None, None)`` when there is none. ``port`` is
    ``[general] port``, ``None`` when absent or not a port. A missing file gives
    ``(None, None, None)``; other read errors raise ``OSError``.
    """
    try:
        text = _with_includes(path, _read_text(path))
    except FileNotFoundError:
        return None, None, None
    manager = _parse_manager(text)
    return manager.username, manager.secret, _port(manager.port_text)


# --------------------------------------------------------------------------- mor.conf values


class _Values:
    """Typed, validated access to mor.conf's values; errors name the file and the key."""

    def __init__(self, file: Path, values: Mapping[str, str]) -> None:
        self.file = file
        self.values = values

    def _fail(self, key: str, what: str) -> ConfigError:
        raw = self.values[key]
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        return ConfigError(f"{self.file}: {key} = {shown!r} is not {what}")

    def text(self, key: str) -> Optional[str]:
        """The value, ``None`` when the key is absent or empty."""
        return self.values.get(key) or None

    def number(self, key: str, default: float) -> float:
        """The value of a key of :data:`NUMERIC_KEYS`, in its range and scaled."""
        allowed = NUMERIC_KEYS[key]
        raw = self.text(key)
        if raw is None:
            return default
        number = allowed.parse(raw)
        if number is None:
            raise self._fail(key, allowed.describe())
        return number * allowed.scale

    def whole(self, key: str, default: int) -> int:
        return int(self.number(key, default))

    def boolean(self, key: str) -> bool:
        raw = self.text(key)
        if raw is None:
            return False
        if raw.lower() not in _BOOLEANS:
            raise self._fail(key, "a boolean (use 1/0, yes/no, true/false, on/off)")
        return _BOOLEANS[raw.lower()]

    def ids(self, key: str) -> tuple[int, ...]:
        """A comma- or space-separated list of whole numbers (``-1`` allowed: providers)."""
        allowed = NUMERIC_KEYS[key]
        raw = self.text(key)
        if raw is None:
            return ()
        numbers = [allowed.parse(part) for part in re.split(r"[\s,]+", raw) if part]
        if None in numbers:
            raise self._fail(key, f"{allowed.describe()}, like '-1, 5'")
        return tuple(int(number) for number in numbers if number is not None)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (any case); the first is the default."""
        raw = self.text(key)
        if raw is None:
            return choices[0]
        if raw.lower() not in choices:
            raise self._fail(key, f"one of {', '.join(choices)}")
        return raw.lower()

    def url(self, key: str) -> Optional[str]:
        raw = self.text(key)
        if raw is None:
            return None
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
            raise ConfigError(f"{self.file}: {key} is not an http:// or https:// URL")
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
                f"{self.file}: {key} has no host, a bad port, or an '@' after the host"
                " -- write '/', '?', '#' and '@' inside the user name, password, path or"
                " query as %2F, %3F, %23 and %40"
            )
        return raw

    def path(self, key: str, default: Path) -> Path:
        """The path; a relative one is taken relative to mor.conf's directory."""
        raw = self.text(key)
        if raw is None:
            return default
        return self.file.parent / raw


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
    given = values.text("db_url")
    port = values.whole("port", int(_MOR_DEFAULTS["port"]))  # checked also when db_url is set
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
    secret = values.values.get("secret")
    return _mysql_url(
        values.text("host") or _MOR_DEFAULTS["host"],
        port,
        values.text("db") or _MOR_DEFAULTS["db"],
        values.text("user") or _MOR_DEFAULTS["user"],
        _MOR_DEFAULTS["secret"] if secret is None else secret,
    )


@dataclass(frozen=True)
class _Ami:
    host: str
    port: int
    username: Optional[str]
    secret: Optional[str]


def _ami(values: _Values, manager_conf: Path, warnings: list[str]) -> _Ami:
    host = values.text("ami_host")
    port: Optional[int] = values.whole("ami_port", 0) or None  # 0: not set here
    username = values.text("ami_username")
    secret = values.text("ami_secret")
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
        port = _port(manager.port_text)
        if port is None:
            warnings.append(
                f"{manager_conf}: [general] port = {manager.port_text!r} is not a port number;"
                f" using {DEFAULT_AMI_PORT}"
            )
    if host is None and manager is not None and manager.bindaddr not in _WILDCARD_ADDRESSES:
        host = manager.bindaddr
    return _Ami(host or DEFAULT_AMI_HOST, port or DEFAULT_AMI_PORT, username, secret)


def _load_manager(path: Path, warnings: list[str]) -> Optional[_Manager]:
    try:
        text = _with_includes(path, _read_text(path))
    except FileNotFoundError:
        return None
    except OSError as err:
        warnings.append(f"{path}: cannot read ({_reason(err)}); AMI login from MOR's servers row")
        return None
    manager = _parse_manager(text)
    if manager.enabled is not None and manager.enabled.lower() in ("no", "false", "off", "0"):
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
    try:
        text = _read_text(path)
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read ({_reason(err)}) -- pass --config or create it"
        ) from None
    warnings: list[str] = []
    misspelled: list[str] = []
    values = _Values(path, _collect(path, _flat_entries(text, str(path)), warnings, misspelled))
    warnings += misspelled

    server_id = values.whole("server_id", 1)
    db_url = _db_url(values)
    manager_conf = values.path("manager_conf", DEFAULT_MANAGER_CONF)
    ami = _ami(values, manager_conf, warnings)
    settings = Settings(
        config_path=path,
        server_id=server_id,
        db_url=db_url,
        debug=values.boolean("debug"),
        show_sql=values.boolean("show_sql"),
        ami_host=ami.host,
        ami_port=ami.port,
        ami_username=ami.username,
        ami_secret=ami.secret,
        ami_connect_timeout=values.number("ami_connect_timeout", 5.0),
        ami_timeout=values.number("ami_timeout", 10.0),
        ami_list_timeout=values.number("ami_list_timeout", 60.0),
        db_timeout=values.number("db_timeout", 30.0),
        unknown_after=values.number("unknown_after", 3600.0),
        log_file=log_file or values.path("log_file", DEFAULT_LOG_FILE),
        state_file=state_file or values.path("state_file", DEFAULT_STATE_FILE),
        lock_file=lock_file or values.path("lock_file", DEFAULT_LOCK_FILE),
        manager_conf=manager_conf,
        watch_ping_interval=values.number("watch_ping_interval", 10.0),
        history_days=values.number("history_days", 30.0),
        flap_changes=values.whole("flap_changes", 4),
        flap_window=values.number("flap_window", 600.0),
        textfile_dir=values.path("textfile_dir", Path()) if values.text("textfile_dir") else None,
        webhook_url=values.url("webhook_url"),
        webhook_secret=values.values.get("webhook_secret") or None,
        webhook_timeout=values.number("webhook_timeout", 5.0),
        webhook_user_ids=values.ids("webhook_user_ids"),
        webhook_device_ids=values.ids("webhook_device_ids"),
        peer_source=values.choice("peer_source", PEER_SOURCES),
    )
    if settings.webhook_url and not (settings.webhook_user_ids or settings.webhook_device_ids):
        warnings.append(
            f"{path}: webhook_url is set but neither webhook_user_ids nor webhook_device_ids;"
            " no device will be notified"
        )
    _compare_server_id(path, server_id, asterisk_mor_conf, warnings)
    return replace(settings, warnings=tuple(warnings), misspelled_keys=tuple(misspelled))
