"""Webhook notifications: a signed JSON POST when a watched device goes down or comes back.

Rules (mor.conf): ``webhook_user_ids`` (owners, ``-1`` = providers) and/or
``webhook_device_ids``. A device that a rule matches earns a message when its
bullet changes between down (UNREACHABLE, UNKNOWN) and up (OK, LAGGED); the
first message for a device is a "down". Dampening (``mor_regstatus_notified``):
at most one message per device per ``flap_window``; when the window has passed
and the device ended up elsewhere than the last message said, the next poll
(or the listener's heartbeat) sends where it is now.

Messages are decided from committed data and sent after the run's transaction
committed (the cron poll sends them after it released its lock file, so a slow
receiver never keeps the next run from collecting); the alerts of one run or
event batch go out in one POST (chunks of ``MAX_ALERTS``), retried once. The
whole delivery -- every connection, request and answer of every chunk and retry
-- ends by ``webhook_timeout`` seconds of wall-clock time: a connection still
open then is shut down. A redirect (3xx) is a failed delivery and is not
followed: following it would turn the signed POST into a body-less GET. A
failing webhook is logged (its URL through ``config.mask_url``) and never fails
the run; its devices are not marked as notified, so the next catch-up retries.

The body is JSON; the header ``X-MOR-Signature: sha256=<hex>`` is the
HMAC-SHA256 of the exact body bytes with ``webhook_secret``. A user name and
password in ``webhook_url`` are sent as HTTP Basic authentication.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, store
from .config import Settings, mask_url
from .status import Notified, Transition, alert_of, notified_after, should_notify

if TYPE_CHECKING:
    import urllib.request

log = logging.getLogger(__name__)

#: Alerts per POST.
MAX_ALERTS = 500
SIGNATURE_HEADER = "X-MOR-Signature"


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: Optional[str]
    timeout: float
    user_ids: tuple[int, ...]
    device_ids: tuple[int, ...]
    window: timedelta
    server_id: int


def webhook_from(settings: Settings) -> Optional[Webhook]:
    """The configured webhook, or None when there is none or no rule to match."""
    if not settings.webhook_url or not (settings.webhook_user_ids or settings.webhook_device_ids):
        return None
    return Webhook(
        url=settings.webhook_url,
        secret=settings.webhook_secret,
        timeout=settings.webhook_timeout,
        user_ids=settings.webhook_user_ids,
        device_ids=settings.webhook_device_ids,
        window=timedelta(seconds=settings.flap_window),
        server_id=settings.server_id,
    )


@dataclass(frozen=True)
class Alert:
    """One device's entry in a message, and the dampening row it leaves when sent."""

    payload: dict[str, Any]
    notified: Notified
    #: the row it leaves when it is *not* delivered, for a device that had no row: what
    #: the receiver last knew, long enough ago that the next catch-up sends it again
    if_lost: Optional[Notified] = None


def _iso(at: datetime) -> str:
    return at.replace(tzinfo=timezone.utc, microsecond=0).isoformat().replace("+00:00", "Z")


def _alert(
    hook: Webhook,
    device: store.AlertDevice,
    kind: str,
    previous_kind: str,
    at: datetime,
    source: str,
    previous: Optional[Notified],
    now: datetime,
) -> Alert:
    payload = {
        "alert": alert_of(kind),
        "device_id": device.id,
        "device_name": device.name,
        "user_id": device.user_id,
        "server_id": hook.server_id,
        "status": kind,
        "previous_status": previous_kind,
        "reg_status": device.reg_status,
        "at": _iso(at),
        "source": source,
    }
    lost = (
        None
        if previous is not None
        else Notified(device.id, previous_kind, now - hook.window, now - hook.window, 0)
    )
    return Alert(payload, notified_after(previous, device.id, kind, now, hook.window), lost)


def decide(
    conn: Connection, hook: Webhook, transitions: Sequence[Transition], now: datetime
) -> list[Alert]:
    """The alerts earned by these (committed) transitions; the last one per device counts."""
    last: dict[int, Transition] = {}
    for transition in transitions:
        if alert_of(transition.to_status) is not None:
            last[transition.device_id] = transition
    if not last:
        return []
    devices = store.alert_devices(conn, last, hook.user_ids, hook.device_ids)
    if not devices:
        return []
    notified = store.load_notified(conn, devices)
    alerts = []
    for device_id, device in devices.items():
        t = last[device_id]
        previous = notified.get(device_id)
        if should_notify(previous, t.to_status, now, hook.window):
            alerts.append(
                _alert(hook, device, t.to_status, t.from_status, t.at, t.source, previous, now)
            )
    return alerts


def catch_up(conn: Connection, hook: Webhook, now: datetime) -> list[Alert]:
    """Devices whose last message is out of date and whose dampening window has passed."""
    due = [
        (row, kind)
        for row, kind in store.notified_with_status(conn, hook.server_id)
        if alert_of(kind) is not None
        and alert_of(kind) != alert_of(row.last_status)
        and should_notify(row, kind, now, hook.window)
    ]
    if not due:
        return []
    devices = store.alert_devices(
        conn, (row.device_id for row, _ in due), hook.user_ids, hook.device_ids
    )
    return [
        _alert(hook, devices[row.device_id], kind, row.last_status, now, "catch-up", row, now)
        for row, kind in due
        if row.device_id in devices
    ]


def sign(secret: str, body: bytes) -> str:
    """The ``X-MOR-Signature`` value for ``body``."""
    # imported here: most runs send nothing, and a cron run pays for every import
    import hashlib
    import hmac

    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Deadline:
    """The wall-clock end of one delivery. Every connection opened under it is shut down
    when it passes, whatever it is doing (connecting, TLS, sending, reading): a socket's
    own timeout bounds each read, and a receiver trickling a byte a second never hits it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.passed = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        error: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def remaining(self) -> float:
        """Seconds left; raises TimeoutError when none are."""
        left = self._end - time.monotonic()
        if left <= 0 or self.passed:
            raise TimeoutError(f"webhook_timeout ({self.seconds:g} s) passed")
        return left

    def connect(
        self, address: tuple[str, int], timeout: object = None, source: Any = None
    ) -> socket.socket:
        """``socket.create_connection`` within the deadline (``timeout``, urllib's per-read
        one, gives way to what is left), watched until the deadline ends."""
        sock = socket.create_connection(address, self.remaining(), source)
        # a duplicate of the descriptor: TLS detaches the original socket object, and
        # shutting any descriptor of the connection down stops every blocked call on it
        watched = sock.dup()
        with self._lock:
            self._sockets.append(watched)
            if self.passed:
                watched.shutdown(socket.SHUT_RDWR)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):  # closed already
                    sock.shutdown(socket.SHUT_RDWR)


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib with every connection made through ``deadline`` and no redirect followed
    (a 3xx becomes an HTTPError); proxies from the environment still apply."""
    # imported here, not at the top: urllib.request brings http.client, which a cron run
    # that has nothing to send would load for nothing
    import http.client
    import urllib.request

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            # HTTPConnection.connect makes its socket through this attribute
            self._create_connection = deadline.connect
            super().connect()

    class TLSConnection(Connection, http.client.HTTPSConnection):
        pass

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Connection, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(TLSConnection, req)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    return urllib.request.build_opener(Http, Https, NoRedirect)


def _request(hook: Webhook, body: bytes) -> urllib.request.Request:
    """The signed POST; credentials in the URL become an Authorization header."""
    import urllib.request
    from urllib.parse import unquote, urlsplit

    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"mor-regstatus/{__version__}",
    }
    if hook.secret:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    parts = urlsplit(hook.url)
    url = hook.url
    if parts.username is not None:
        import base64

        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only, checked in config


def _post(opener: urllib.request.OpenerDirector, request: urllib.request.Request) -> None:
    with opener.open(request) as response:
        if not 200 <= response.status < 300:
            raise OSError(f"HTTP {response.status}: not a 2xx answer")


def _failure(err: BaseException, deadline: _Deadline) -> str:
    """One line for a failed attempt, without a secret."""
    import urllib.error

    if deadline.passed:
        return f"no complete answer within webhook_timeout ({deadline.seconds:g} s in all)"
    if isinstance(err, urllib.error.HTTPError) and 300 <= err.code < 400:
        location = err.headers.get("Location") if err.headers else None
        where = f" to {mask_url(location)}" if location else ""
        return f"HTTP {err.code} redirect{where}: not followed -- set webhook_url to the final URL"
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {_one_line(err.reason)}"
    return _one_line(err)


def send(hook: Webhook, alerts: Sequence[Alert], now: datetime) -> list[Alert]:
    """POST the alerts (one request per chunk, one retry each), all of it within
    ``hook.timeout`` seconds; returns those delivered."""
    import http.client
    import urllib.error

    delivered: list[Alert] = []
    shown = mask_url(hook.url)
    with _Deadline(hook.timeout) as deadline:
        opener = _opener(deadline)
        for start in range(0, len(alerts), MAX_ALERTS):
            chunk = alerts[start : start + MAX_ALERTS]
            if deadline.passed:
                log.warning(
                    "webhook %s: webhook_timeout (%g s) passed; %d alerts not sent",
                    shown,
                    hook.timeout,
                    len(alerts) - start,
                )
                break
            body = json.dumps(
                {
                    "source": "mor-regstatus",
                    "server_id": hook.server_id,
                    "sent_at": _iso(now),
                    "alerts": [alert.payload for alert in chunk],
                },
                sort_keys=True,
            ).encode()
            request = _request(hook, body)
            for attempt in (1, 2):
                try:
                    _post(opener, request)
                    delivered.extend(chunk)
                    break
                # URLError/HTTPError/timeouts are OSErrors; a cut answer an HTTPException
                except (OSError, ValueError, http.client.HTTPException) as err:
                    if isinstance(err, urllib.error.HTTPError):
                        err.close()  # it holds the answer open
                    log.warning(
                        "webhook %s failed (attempt %d of 2, %d alerts): %s",
                        shown,
                        attempt,
                        len(chunk),
                        _failure(err, deadline),
                    )
                    if deadline.passed:
                        break
    return delivered


def _one_line(err: object) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def deliver(engine: Engine, hook: Webhook, alerts: Iterable[Alert], now: datetime) -> int:
    """Send, then record what was delivered; never raises. Returns the alerts delivered."""
    pending = list(alerts)
    if not pending:
        return 0
    delivered = send(hook, pending, now)
    sent = {id(alert) for alert in delivered}
    # a device's first message that failed keeps a row, so that the catch-up retries it
    # (without a row, nothing would: devices that never had a message are not caught up)
    rows = [alert.notified for alert in delivered] + [
        alert.if_lost for alert in pending if id(alert) not in sent and alert.if_lost
    ]
    if rows:
        try:
            with engine.begin() as conn:
                store.write_notified(conn, rows)
        except SQLAlchemyError as err:
            log.warning("webhook sent, but not recorded: %s", store.describe_db_error(err))
    log.info("webhook: %d of %d alerts delivered", len(delivered), len(pending))
    return len(delivered)


def due_after_commit(
    engine: Engine, hook: Webhook, transitions: Sequence[Transition], now: datetime
) -> list[Alert]:
    """The alerts these (committed) transitions and the catch-up earn; never raises."""
    try:
        with engine.connect() as conn:
            alerts = decide(conn, hook, transitions, now) + catch_up(conn, hook, now)
    except SQLAlchemyError as err:
        log.warning("webhook: cannot read the devices to notify: %s", store.describe_db_error(err))
        return []
    # a device both newly changed and due for catch-up: keep one alert
    unique = {alert.notified.device_id: alert for alert in reversed(alerts)}
    return list(unique.values())


def notify_after_commit(
    engine: Engine, hook: Optional[Webhook], transitions: Sequence[Transition], now: datetime
) -> int:
    """Decide (from committed data) and deliver; never raises."""
    if hook is None:
        return 0
    return deliver(engine, hook, due_after_commit(engine, hook, transitions, now), now)
