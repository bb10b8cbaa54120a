"""The routes: iframes for MOR's device pages, bullets, the JSON API and health."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any, Optional

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from markupsafe import Markup

from . import bullets
from .db import Database, DeviceStatus, is_stale, utcnow
from .timefmt import duration, iso

log = logging.getLogger(__name__)

bp = Blueprint("widget", __name__)

MAX_IDS = 500
_ID = re.compile(r"^[0-9]{1,10}$")
BULLET_MAX_AGE = 10


def get_db() -> Database:
    db: Database = current_app.extensions["mor_widget_db"]
    return db


def parse_id(raw: str, what: str = "device id") -> int:
    """A positive id from the URL, or 400 (Flask's ``int`` converter would answer 404)."""
    if not _ID.match(raw) or int(raw) > 2**31 - 1:
        abort(400, f"the {what} must be a whole number, not {raw[:40]!r}")
    return int(raw)


def parse_ids(values: list[str]) -> list[int]:
    """``ids=1,2,3`` (also repeated ``ids=``): distinct ids in the order given."""
    tokens = [token.strip() for value in values for token in value.split(",")]
    tokens = [token for token in tokens if token]
    if not tokens:
        abort(400, "give the devices as ids=1,2,3")
    if len(tokens) > MAX_IDS * 4:  # bound the work before deduplicating
        abort(400, f"at most {MAX_IDS} ids per request")
    ids: dict[int, None] = {}
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


def stale_seconds(device: DeviceStatus, now: datetime) -> Optional[float]:
    """How old the device's data is when that is too old, else None."""
    stale_after = current_app.config["MOR_WIDGET_STALE_AFTER"]
    if not is_stale(device.last_success, now, stale_after):
        return None
    if device.last_success is None:
        return -1.0  # never collected
    return (now - device.last_success).total_seconds()


@bp.get("/devices/<device_id>/status")
def device_status_page(device_id: str) -> Any:
    device = one_device(device_id)
    now = utcnow()
    sightings = get_db().wrong_server(device.id)
    return render_template(
        "status.html",
        device=device,
        sightings=sightings,
        now=now,
        stale=stale_seconds(device, now),
        bullet=bullets.svg(device.kind, bullets.tooltip(device.kind, device.reg_status), 18),
        label=bullets.LABELS[device.kind],
        explanation=bullets.EXPLANATIONS[device.kind],
        refresh=current_app.config["MOR_WIDGET_REFRESH"],
    )


@bp.get("/devices/<device_id>/bullet.svg")
def bullet(device_id: str) -> Any:
    device = one_device(device_id)
    title = bullets.tooltip(device.kind, device.reg_status)
    stale = stale_seconds(device, utcnow())
    if stale is not None:
        title += " The data is old: " + (
            "the collector has not run yet." if stale < 0 else f"last update {duration(stale)} ago."
        )
    response = svg_response(bullets.svg(device.kind, title, standalone=True))
    response.add_etag()
    return response.make_conditional(request)


def svg_response(body: Markup, status: int = 200) -> Response:
    response = Response(str(body), status=status, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = f"private, max-age={BULLET_MAX_AGE}"
    return response


@bp.get("/users/<user_id>/devices/status")
def user_legend(user_id: str) -> Any:
    uid = parse_id(user_id, "user id")
    counts = get_db().user_counts(uid)
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


def device_json(device: DeviceStatus, now: datetime) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "status": device.kind,
        "reg_status": device.reg_status,
        "latency_ms": device.latency_ms,
        "since": iso(device.since),
        "last_seen": iso(device.last_seen),
        "server_id": device.server_id,
        "stale": stale_seconds(device, now) is not None,
    }


@bp.get("/api/v1/devices/status")
def api_devices() -> Any:
    ids = parse_ids(request.args.getlist("ids"))
    found = get_db().devices(ids)
    now = utcnow()
    return jsonify(
        devices=[device_json(found[i], now) for i in ids if i in found],
        generated_at=iso(now),
    )


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


@bp.get("/healthz")
def healthz() -> Any:
    get_db().ping()
    return Response("ok\n", mimetype="text/plain")


@bp.get("/embed.js")
def embed_js() -> Any:
    response = current_app.send_static_file("embed.js")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
