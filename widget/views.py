"""The routes: iframes for MOR's device pages, bullets, the JSON API and health."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any, Optional

from flask import Blueprint, Response, abort, current_app, g, jsonify, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mor_plugin.status import KINDS, plain_digits

from . import bullets, charts, metrics, signing
from .cache import DeviceCache, cached
from .db import (
    Database,
    DeviceBrief,
    DeviceStatus,
    History,
    is_stale,
    utcnow,
)
from .queries import DEVICE_FILTERS, FLAPPING_FILTER, WRONG_SERVER_FILTER
from .timefmt import duration, iso

log = logging.getLogger(__name__)

bp = Blueprint("widget", __name__)

MAX_IDS = 500
#: ids are INT columns: at most 10 digits and 2**31 - 1
MAX_ID = 2**31 - 1
BULLET_MAX_AGE = 10
#: what can make an answer conditional (304, 412, 206)
CONDITIONAL_HEADERS = (
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_RANGE",
)
#: the device page's strip and sparkline cover this many hours
STRIP_HOURS = 24
MAX_HISTORY_HOURS = 168
#: device list paging
PER_PAGE = 100
MAX_PER_PAGE = 500
#: how long links made by a page stay valid when the page itself carries no ``exp``
LINK_LIFETIME = 3600


def get_db() -> Database:
    db: Database = current_app.extensions["mor_widget_db"]
    return db


def parse_id(raw: str, what: str = "device id") -> int:
    """An id from the URL: plain ASCII digits, else 400 (Flask's ``int`` converter would
    answer 404)."""
    value = plain_digits(raw)
    if value is None or value > MAX_ID:
        abort(400, f"the {what} must be a whole number, not {raw[:40]!r}")
    return value


#: a value of ``ids=`` as MOR's pages write it: ids of ASCII digits, separated by commas
_ID_LIST = re.compile(r"[0-9]{1,10}(?:,[0-9]{1,10})*")


def parse_ids(values: list[str]) -> list[int]:
    """``ids=1,2,3`` (also repeated ``ids=``): distinct ids in the order given.

    Every comma-separated value must be an id: no spaces, no empty values.
    """
    tokens = [token for value in values for token in value.split(",")]
    if not tokens or tokens == [""]:
        abort(400, "give the devices as ids=1,2,3")
    if len(tokens) > MAX_IDS * 4:  # bound the work before deduplicating
        abort(400, f"at most {MAX_IDS} ids per request")
    if all(_ID_LIST.fullmatch(value) for value in values):  # the usual case, at C speed
        ids = dict.fromkeys(map(int, tokens))
        if max(ids) > MAX_ID:
            ids = {}  # the loop below says which
    else:
        ids = {}
    if not ids:
        for token in tokens:
            ids[parse_id(token, "ids value")] = None
    if len(ids) > MAX_IDS:
        abort(400, f"at most {MAX_IDS} ids per request, got {len(ids)}")
    return list(ids)


def one_device(raw_id: str) -> DeviceStatus:
    device_id = parse_id(raw_id)
    device = get_db().devices([device_id]).get(device_id)
    if device is None:
        abort(404, f"there is no device with id {device_id}")
    return device


def stale_seconds(last_success: Optional[datetime], now: datetime) -> Optional[float]:
    """How old a device's data is (its server's last successful run) when that is too old,
    else None; -1 when the collector never ran."""
    stale_after = current_app.config["MOR_WIDGET_STALE_AFTER"]
    if not is_stale(last_success, now, stale_after):
        return None
    if last_success is None:
        return -1.0  # never collected
    return (now - last_success).total_seconds()


@bp.get("/devices/<device_id>/status")
def device_status_page(device_id: str) -> Any:
    device = one_device(device_id)
    now = utcnow()
    db = get_db()
    sightings = db.wrong_server(device.id)
    history = db.history(device.id, now - timedelta(hours=STRIP_HOURS), now)
    # one "since" for the words and the strip: when the current colour began
    since = colour_since(device, history)
    return render_template(
        "status.html",
        device=device,
        sightings=sightings,
        now=now,
        stale=stale_seconds(device.last_success, now),
        bullet=bullets.svg(device.kind, bullets.tooltip(device.kind, device.reg_status), 18),
        label=bullets.LABELS[device.kind],
        explanation=bullets.EXPLANATIONS[device.kind],
        refresh=current_app.config["MOR_WIDGET_REFRESH"],
        since=since,
        history=history,
        strip_hours=STRIP_HOURS,
        strip=charts.strip(history, device.kind, since) if history.available else None,
        sparkline=charts.sparkline(history),
        latency_range=latency_range(history),
        contacts=db.contacts(device.id),
    )


def colour_since(device: DeviceStatus, history: History) -> Optional[datetime]:
    """When the device turned its current colour: its last change in the history when that
    change led to this colour (the strip draws from it), else since when the collector has
    recorded the colour (a first sighting is a baseline, not a change)."""
    changes = history.transitions or ([history.before] if history.before else [])
    if changes and changes[-1].to_status == device.kind:
        return changes[-1].at
    return device.since


def latency_range(history: History) -> Optional[tuple[int, int]]:
    values = [ms for _, ms in history.latency]
    return (min(values), max(values)) if values else None


@bp.get("/devices/<device_id>/bullet.svg")
def bullet(device_id: str) -> Any:
    wanted = parse_id(device_id)
    device = shown_devices([wanted]).get(wanted)
    if device is None:
        abort(404, f"there is no device with id {wanted}")
    stale = stale_seconds(device.last_success, utcnow())
    if stale is None:
        # fresh data draws the same bullet every time: drawn once for as long as it is cached
        if device.bullet is None:
            device.bullet = drawn_bullet(device, bullets.tooltip(device.kind, device.reg_status))
        body, etag = device.bullet
    else:  # the tooltip says how old the data is, which changes by the minute
        old = (
            "the collector has not run yet." if stale < 0 else f"last update {duration(stale)} ago."
        )
        title = f"{bullets.tooltip(device.kind, device.reg_status)} The data is old: {old}"
        body, etag = drawn_bullet(device, title)
    response = Response(body, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = f"private, max-age={BULLET_MAX_AGE}"
    response.set_etag(etag)
    if any(header in request.environ for header in CONDITIONAL_HEADERS):
        return response.make_conditional(request)  # 304 for a browser's revalidation
    return response  # werkzeug's checks cost a bullet a third of its time: only when asked


def drawn_bullet(device: ShownDevice, title: str) -> tuple[bytes, str]:
    """A device's bullet as served (``image/svg+xml``) and its ETag."""
    body = str(bullets.svg(device.kind, title, standalone=True)).encode()
    return body, hashlib.sha1(body).hexdigest()  # noqa: S324 - a cache tag, not a secret


@bp.get("/users/<user_id>/devices/status")
def user_legend(user_id: str) -> Any:
    return legend(parse_id(user_id, "user id"))


@bp.get("/devices/status")
@cached(lambda: "all")
def all_devices_legend() -> Any:
    """The legend of MOR's list of all devices."""
    return legend(None)


def legend(user_id: Optional[int]) -> Any:
    counts = get_db().user_counts(user_id)
    now = utcnow()
    stale_after = current_app.config["MOR_WIDGET_STALE_AFTER"]
    oldest = counts.oldest_success
    return render_template(
        "legend.html",
        counts=counts.counts,
        total=sum(counts.counts.values()),
        kinds=list(counts.counts),
        bullet=lambda kind: bullets.svg(kind, bullets.tooltip(kind), 16),
        labels=bullets.LABELS,
        explanations=bullets.EXPLANATIONS,
        never_collected=counts.never_collected,
        stale_age=(now - oldest).total_seconds()
        if oldest is not None and is_stale(oldest, now, stale_after)
        else None,
        refresh=current_app.config["MOR_WIDGET_REFRESH"],
    )


class ShownDevice:
    """A device as its bullet and the JSON API show it, ready to serve many times."""

    __slots__ = ("kind", "reg_status", "server_id", "last_success", "json_head", "bullet")

    def __init__(
        self,
        kind: str,
        reg_status: Optional[str],
        server_id: int,
        last_success: Optional[datetime],
        json_head: bytes,
    ) -> None:
        self.kind = kind
        self.reg_status = reg_status
        self.server_id = server_id
        #: its server's last successful collector run: how fresh the data is
        self.last_success = last_success
        #: its JSON object, encoded up to the value of "stale" (which depends on the time)
        self.json_head = json_head
        #: its bullet and ETag while the data is fresh, drawn when first asked
        self.bullet: Optional[tuple[bytes, str]] = None


def shown_device(device: DeviceBrief) -> ShownDevice:
    head = json.dumps(
        {
            "id": device.id,
            "name": device.name,
            "status": device.kind,
            "reg_status": device.reg_status,
            "latency_ms": device.latency_ms,
            "since": iso(device.since),
            "last_seen": iso(device.last_seen),
            "server_id": device.server_id,
        },
        separators=(",", ":"),
    )  # ASCII: json.dumps escapes the rest
    return ShownDevice(
        device.kind,
        device.reg_status,
        device.server_id,
        device.last_success,
        head[:-1].encode() + b',"stale":',
    )


def shown_cost(device: ShownDevice) -> int:
    """Bytes a cached device takes, roughly: its JSON, twice its status (in the bullet's
    title too), room for its bullet, and the objects around them."""
    return len(device.json_head) + 2 * len(device.reg_status or "") + SHOWN_OVERHEAD


#: bytes of a cached device beyond its JSON and its status: the drawn bullet and its ETag
#: (about 560), the object, a datetime and the cache's slot and tuple
SHOWN_OVERHEAD = 1000


def shown_devices(ids: list[int]) -> dict[int, ShownDevice]:
    """The devices among ``ids`` that exist: from this worker's device cache (see
    ``widget.cache.DeviceCache``), the others in one query."""
    cache: Optional[DeviceCache[ShownDevice]] = current_app.extensions.get("mor_widget_devices")
    if cache is None:
        return {i: shown_device(d) for i, d in get_db().briefs(ids).items()}
    cache.watch(get_db().change_marks)
    found, missing = cache.get_many(ids)
    if missing:
        read_at, epoch = time.monotonic(), cache.epoch  # before the query
        fresh = {i: shown_device(d) for i, d in get_db().briefs(missing).items()}
        cache.put_many(fresh, read_at, epoch)
        found.update(fresh)
    return found


@bp.get("/api/v1/devices/status")
def api_devices() -> Any:
    ids = parse_ids(request.args.getlist("ids"))
    found = shown_devices(ids)
    now = utcnow()
    stale_after = current_app.config["MOR_WIDGET_STALE_AFTER"]
    # each device's JSON was encoded when it was read; only "stale" is added now, once for
    # each last run (the devices of one server share it)
    ending = {
        last_success: b"true}" if is_stale(last_success, now, stale_after) else b"false}"
        for last_success in {device.last_success for device in found.values()}
    }
    listed = b",".join(
        [device.json_head + ending[device.last_success] for device in map(found.get, ids) if device]
    )
    body = b'{"devices":[' + listed + b'],"generated_at":"' + iso(now).encode() + b'"}\n'
    return Response(body, mimetype="application/json")


@bp.get("/api/v1/servers/<server_id>/summary")
def api_server_summary(server_id: str) -> Any:
    sid = parse_id(server_id, "server id")
    summary = get_db().server_summary(sid)
    if summary is None:
        abort(404, f"there is no server with id {sid}")
    stale_after = current_app.config["MOR_WIDGET_STALE_AFTER"]
    return jsonify(
        server_id=summary.server_id,
        hostname=summary.hostname,
        last_run=iso(summary.last_run),
        last_success=iso(summary.last_success),
        result=summary.result,
        stale=is_stale(summary.last_success, utcnow(), stale_after),
        asterisk_version=summary.asterisk_version,
        wrong_server=summary.wrong_server,
        counts=summary.counts,
    )


def parse_positive(name: str, default: int, highest: int) -> int:
    """An integer query parameter in ``1..highest``, or 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    value = plain_digits(raw)
    if value is None or not 1 <= value <= highest:
        abort(400, f"{name} must be a whole number from 1 to {highest}, not {raw[:40]!r}")
    return value


@bp.get("/api/v1/devices/<device_id>/history")
def api_device_history(device_id: str) -> Any:
    hours = parse_positive("hours", STRIP_HOURS, MAX_HISTORY_HOURS)
    device = one_device(device_id)
    end = utcnow()
    history = get_db().history(device.id, end - timedelta(hours=hours), end)
    return jsonify(
        device_id=device.id,
        **{"from": iso(history.start), "to": iso(history.end)},
        transitions=[
            {
                "at": iso(t.at),
                "from": t.from_status,
                "to": t.to_status,
                "reg_status": t.reg_status,
                "latency_ms": t.latency_ms,
                "source": t.source,
            }
            for t in history.transitions
        ],
        latency=[{"at": iso(at), "ms": ms} for at, ms in history.latency],
    )


# ---------------------------------------------------------------- the fleet


def link(path: str) -> str:
    """A link to another widget page, signed when the widget has a secret.

    It expires with the link of the page it is on (or in ``LINK_LIFETIME`` s),
    and carries the proxy's prefix, which the signature does not cover.
    """
    secret = current_app.config["MOR_WIDGET_SECRET"]
    if secret:
        # the page's own exp, as its signature check read it
        expires_at = g.get("mor_widget_link_expires") or int(time.time()) + LINK_LIFETIME
        path = signing.sign_url(path, secret, expires_at)
    return request.script_root + path


def devices_link(server_id: int, status: Optional[str] = None, page: int = 1) -> str:
    query = [f"status={status}"] if status else []
    if page > 1:
        query.append(f"page={page}")
    per_page: Optional[int] = g.get("mor_widget_per_page")  # the list page's, as it parsed it
    if per_page is not None:
        query.append(f"per_page={per_page}")
    return link(f"/servers/{server_id}/devices" + ("?" + "&".join(query) if query else ""))


@bp.get("/servers")
def servers_page() -> Any:
    now = utcnow()
    stale_after = current_app.config["MOR_WIDGET_STALE_AFTER"]
    servers = get_db().fleet()
    return render_template(
        "servers.html",
        servers=servers,
        now=now,
        kinds=KINDS,
        labels=bullets.LABELS,
        explanations=bullets.EXPLANATIONS,
        bullet=lambda kind: bullets.svg(kind, bullets.tooltip(kind), 12),
        stale=lambda server: is_stale(server.last_success, now, stale_after),
        listener_up=lambda server: metrics.listener_up(server, now, stale_after),
        devices_link=devices_link,
        refresh=current_app.config["MOR_WIDGET_REFRESH"],
    )


FILTER_LABELS = {
    **bullets.LABELS,
    FLAPPING_FILTER: "flapping",
    WRONG_SERVER_FILTER: "registered here but assigned to another server",
}


@bp.get("/servers/<server_id>/devices")
def server_devices(server_id: str) -> Any:
    sid = parse_id(server_id, "server id")
    status = request.args.get("status") or None
    if status is not None and status not in DEVICE_FILTERS:
        abort(400, f"status must be one of {', '.join(DEVICE_FILTERS)}")
    page = parse_positive("page", 1, 10**6)
    per_page = parse_positive("per_page", PER_PAGE, MAX_PER_PAGE)
    if "per_page" in request.args:
        g.mor_widget_per_page = per_page
    found = get_db().server_devices(sid, status, (page - 1) * per_page, per_page)
    if found is None:
        abort(404, f"there is no server with id {sid}")
    pages = max(1, -(-found.total // per_page))
    return render_template(
        "server_devices.html",
        server_id=sid,
        status=status,
        what=FILTER_LABELS.get(status or "", "SIP devices"),
        found=found,
        page=page,
        pages=pages,
        bullet=lambda kind, reg_status: bullets.svg(kind, bullets.tooltip(kind, reg_status), 12),
        devices_link=devices_link,
        servers_link=link("/servers"),
        wrong_server=status == WRONG_SERVER_FILTER,
    )


@bp.get("/metrics")
def metrics_page() -> Any:
    if not metrics.allowed(request.remote_addr, current_app.config["MOR_WIDGET_METRICS_ALLOW"]):
        abort(403, "this address may not read the metrics (see MOR_WIDGET_METRICS_ALLOW)")
    registry = metrics.registry(get_db(), utcnow, current_app.config["MOR_WIDGET_STALE_AFTER"])
    response = Response(generate_latest(registry), mimetype=None)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz() -> Any:
    get_db().ping()
    return Response("ok\n", mimetype="text/plain")


#: what embed.js draws, from the same table as the widget's own pages
EMBED_BULLETS = {
    kind: {
        "label": bullets.LABELS[kind],
        "explanation": bullets.EXPLANATIONS[kind],
        "parts": bullets.PARTS[kind],
        "headed_by_reg_status": kind in bullets.HEADED_BY_REG_STATUS,
    }
    for kind in KINDS
}


@bp.get("/embed.js")
def embed_js() -> Any:
    body = render_template("embed.js", bullets=EMBED_BULLETS)
    response = Response(body, mimetype="text/javascript")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
