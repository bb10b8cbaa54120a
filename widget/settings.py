"""The widget's settings: defaults, then a ``key = value`` file, then the environment.

The file named by ``MOR_WIDGET_CONFIG`` is a flat ``key = value`` file like
mor.conf (``#`` and ``;`` start comments). Keys are the environment variable
names (``MOR_WIDGET_DB_URL``) or their short forms (``db_url``), in any case.
The file is parsed, never executed, so a read-only secret file is all it takes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PREFIX = "MOR_WIDGET_"

DEFAULTS: dict[str, Any] = {
    "MOR_WIDGET_DB_URL": None,
    "MOR_WIDGET_SECRET": None,
    "MOR_WIDGET_FRAME_ANCESTORS": "",
    "MOR_WIDGET_STALE_AFTER": 180,
    "MOR_WIDGET_REFRESH": 30,
    # seconds a bullet or JSON answer is served from memory (0: always ask the database)
    "MOR_WIDGET_CACHE_SECONDS": 2,
    # megabytes of answers the cache may hold per worker process
    "MOR_WIDGET_CACHE_MB": 16,
    # seconds one request may spend on the database in all (connecting, every statement);
    # past them it answers 503
    "MOR_WIDGET_DB_TIMEOUT": 3,
    # seconds for one connect, one read or write: within MOR_WIDGET_DB_TIMEOUT, never beyond
    "MOR_WIDGET_DB_CONNECT_TIMEOUT": 3,
    "MOR_WIDGET_DB_READ_TIMEOUT": 5,
    # client addresses or networks that may read /metrics (Prometheus cannot sign links)
    "MOR_WIDGET_METRICS_ALLOW": "127.0.0.1 ::1",
}
KEYS = tuple(DEFAULTS)
_INTEGER_KEYS = (
    "MOR_WIDGET_STALE_AFTER",
    "MOR_WIDGET_REFRESH",
    "MOR_WIDGET_DB_CONNECT_TIMEOUT",
    "MOR_WIDGET_DB_READ_TIMEOUT",
)
#: settings that take a number: (key, what it is, lowest, highest); a lowest of None means > 0
_NUMBERS: tuple[tuple[str, str, Optional[float], float], ...] = (
    ("MOR_WIDGET_CACHE_SECONDS", "a number of seconds (0 turns the cache off)", 0, 60),
    ("MOR_WIDGET_CACHE_MB", "a number of megabytes", None, 1024),
    ("MOR_WIDGET_DB_TIMEOUT", "a number of seconds", None, 600),
)
# an origin as CSP's frame-ancestors accepts it: scheme://host[:port], host wildcards allowed
_SOURCE = re.compile(r"^(?:https?://)?(?:\*\.)?[A-Za-z0-9.-]+(?::(?:\d{1,5}|\*))?$")
_KEYWORDS = ("'self'", "'none'")
# one exact origin as a browser writes it in Origin: lower case, a port only if not the default
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_ORIGIN = re.compile(rf"(https?)://({_LABEL}(?:\.{_LABEL})*)(?::([0-9]{{1,5}}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ConfigError(ValueError):
    """A setting that the widget cannot start with; the message says what to fix."""


def _canonical_key(raw: str) -> Optional[str]:
    key = raw.strip().upper()
    if not key.startswith(PREFIX):
        key = PREFIX + key
    return key if key in DEFAULTS else None


def read_config_file(path: str) -> dict[str, str]:
    """The settings in a ``key = value`` file; unknown keys are an error (typos)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read MOR_WIDGET_CONFIG file {path}: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        name, sep, value = stripped.partition("=")
        key = _canonical_key(name)
        if not sep or key is None:
            raise ConfigError(f"{path}:{number}: expected one of {', '.join(KEYS)} = value")
        values[key] = value.strip()
    return values


def load(
    environ: Mapping[str, str], overrides: Optional[Mapping[str, Any]] = None
) -> dict[str, Any]:
    """Defaults < file named by ``MOR_WIDGET_CONFIG`` < environment < ``overrides``."""
    merged: dict[str, Any] = dict(DEFAULTS)
    file_name = (overrides or {}).get("MOR_WIDGET_CONFIG") or environ.get("MOR_WIDGET_CONFIG")
    if file_name:
        merged.update(read_config_file(file_name))
    merged.update({key: environ[key] for key in KEYS if environ.get(key)})
    if overrides:
        merged.update(
            {key: value for key, value in overrides.items() if key != "MOR_WIDGET_CONFIG"}
        )
    return validate(merged)


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Checked and typed settings, or a ``ConfigError`` naming the bad one."""
    url = values.get("MOR_WIDGET_DB_URL")
    if not url:
        raise ConfigError(
            "MOR_WIDGET_DB_URL is not set: give the MOR database as a SQLAlchemy URL, "
            "e.g. mysql+pymysql://mor_widget:PASSWORD@127.0.0.1/mor"
        )
    try:
        make_url(str(url))
    except ArgumentError:
        # not echoed: a URL that does not parse cannot be masked, and may hold a password
        raise ConfigError(
            "MOR_WIDGET_DB_URL is not a SQLAlchemy URL"
            " (dialect+driver://user:password@host:port/database)"
        ) from None
    for key in _INTEGER_KEYS:
        try:
            values[key] = int(values[key])
        except (TypeError, ValueError):
            raise ConfigError(
                f"{key} must be a whole number of seconds, not {values[key]!r}"
            ) from None
        if values[key] < 1:
            raise ConfigError(f"{key} must be at least 1 second")
    for key, what, lowest, highest in _NUMBERS:
        values[key] = _number(key, values[key], what, lowest, highest)
    values["MOR_WIDGET_SECRET"] = values.get("MOR_WIDGET_SECRET") or None
    values["MOR_WIDGET_FRAME_ANCESTORS"] = frame_ancestors(values.get("MOR_WIDGET_FRAME_ANCESTORS"))
    values["MOR_WIDGET_METRICS_ALLOW"] = metrics_allow(values.get("MOR_WIDGET_METRICS_ALLOW"))
    return values


def _number(key: str, raw: Any, what: str, lowest: Optional[float], highest: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    low_ok = value > 0 if lowest is None else value >= lowest
    if not (low_ok and value <= highest):  # also refuses nan and inf
        low = "more than 0" if lowest is None else f"from {lowest:g}"
        raise ConfigError(f"{key} must be {what}, {low} to {highest:g}, not {raw!r}")
    return value


def metrics_allow(raw: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The clients allowed to read ``/metrics``: addresses or CIDR networks, space-separated.

    Empty means nobody (``/metrics`` then always answers 403).
    """
    items = raw.split() if isinstance(raw, str) else list(raw or ())
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(
                f"MOR_WIDGET_METRICS_ALLOW: {item!r} is not an IP address or network "
                "like 10.0.0.0/24"
            ) from None
    return tuple(networks)


def frame_ancestors(raw: Any) -> tuple[str, ...]:
    """The origins allowed to embed the widget; an empty setting means only the same origin."""
    items = raw.split() if isinstance(raw, str) else list(raw or ())
    for item in items:
        if item not in _KEYWORDS and not _SOURCE.match(item):
            raise ConfigError(
                f"MOR_WIDGET_FRAME_ANCESTORS: {item!r} is not an origin like https://mor.example.com"
            )
    return tuple(items) or ("'self'",)


def exact_origins(sources: Iterable[str]) -> frozenset[str]:
    """The entries of ``sources`` that are one exact origin, ``scheme://host[:port]``, written as
    a browser sends them in ``Origin`` (lower case, no default port).

    Keywords (``'self'``), wildcards (``https://*.example.com``) and hosts without a scheme
    name no single origin, so a cross-origin read is never allowed through them.
    """
    origins = set()
    for source in sources:
        match = _ORIGIN.fullmatch(source.lower())
        if match is None:
            continue
        scheme, host, port = match.groups()
        number = int(port) if port else _DEFAULT_PORTS[scheme]
        if not 0 < number < 65536:
            continue
        port = "" if number == _DEFAULT_PORTS[scheme] else f":{number}"
        origins.add(f"{scheme}://{host}{port}")
    return frozenset(origins)
