"""Webhook notifications: a signed JSON POST when a watched device goes down or comes back.

Rules (mor.conf): ``webhook_user_ids`` (owners, ``-1`` = providers) and/or
``webhook_device_ids``. A device that a rule matches earns a message when its
bullet changes between down (UNREACHABLE, UNKNOWN) and up (OK, LAGGED); the
first message for a device is a "down". Dampening (``mor_regstatus_notified``):
at most one message per device per ``flap_window``; when the window has passed
and the device ended up elsewhere than the last message said, the next poll
(or the listener's heartbeat) sends where it is now.

Messages are decided from committed data and sent after the run's transaction
committed; the alerts of one run or event batch go out in one POST (chunks of
``MAX_ALERTS``), retried once. A failing webhook is logged and never fails the
run; its devices are not marked as notified, so the next catch-up retries.

The body is JSON; the header ``X-MOR-Signature: sha256=<hex>`` is the
HMAC-SHA256 of the exact body bytes with ``webhook_secret``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, store
from .config import Settings
from .status import Notified, Transition, alert_of, notified_after, should_notify

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
    return Alert(payload, notified_after(previous, device.id, kind, now, hook.window))


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


def _post(hook: Webhook, body: bytes) -> None:
    # imported here, not at the top: urllib.request brings http.client, which a cron run
    # that has nothing to send would load for nothing
    import urllib.error
    import urllib.request

    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"mor-regstatus/{__version__}",
    }
    if hook.secret:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only, checked in config
    with urllib.request.urlopen(request, timeout=hook.timeout) as response:  # noqa: S310
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(
                hook.url, response.status, "not a 2xx answer", response.headers, None
            )


def send(hook: Webhook, alerts: Sequence[Alert], now: datetime) -> list[Alert]:
    """POST the alerts (one request per chunk, one retry each); returns those delivered."""
    delivered: list[Alert] = []
    for start in range(0, len(alerts), MAX_ALERTS):
        chunk = alerts[start : start + MAX_ALERTS]
        body = json.dumps(
            {
                "source": "mor-regstatus",
                "server_id": hook.server_id,
                "sent_at": _iso(now),
                "alerts": [alert.payload for alert in chunk],
            },
            sort_keys=True,
        ).encode()
        for attempt in (1, 2):
            try:
                _post(hook, body)
                delivered.extend(chunk)
                break
            except (OSError, ValueError) as err:  # URLError/HTTPError/timeouts are OSErrors
                log.warning(
                    "webhook %s failed (attempt %d of 2, %d alerts): %s",
                    hook.url,
                    attempt,
                    len(chunk),
                    _one_line(err),
                )
    return delivered


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def deliver(engine: Engine, hook: Webhook, alerts: Iterable[Alert], now: datetime) -> int:
    """Send, then record what was delivered; never raises. Returns the alerts delivered."""
    pending = list(alerts)
    if not pending:
        return 0
    delivered = send(hook, pending, now)
    if delivered:
        try:
            with engine.begin() as conn:
                store.write_notified(conn, [alert.notified for alert in delivered])
        except SQLAlchemyError as err:
            log.warning("webhook sent, but not recorded: %s", store.describe_db_error(err))
    log.info("webhook: %d of %d alerts delivered", len(delivered), len(pending))
    return len(delivered)


def notify_after_commit(
    engine: Engine, hook: Optional[Webhook], transitions: Sequence[Transition], now: datetime
) -> int:
    """Decide (from committed data) and deliver; never raises."""
    if hook is None:
        return 0
    try:
        with engine.connect() as conn:
            alerts = decide(conn, hook, transitions, now) + catch_up(conn, hook, now)
    except SQLAlchemyError as err:
        log.warning("webhook: cannot read the devices to notify: %s", store.describe_db_error(err))
        return 0
    # a device both newly changed and due for catch-up: keep one alert
    unique = {alert.notified.device_id: alert for alert in reversed(alerts)}
    return deliver(engine, hook, list(unique.values()), now)
