"""Status bullets for MOR's device pages: a small read-only Flask app.

Run it with ``gunicorn 'widget:create_app()'``; settings come from the
environment (``MOR_WIDGET_*``) or the file named by ``MOR_WIDGET_CONFIG``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any, Optional

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import Forbidden, Gone, HTTPException, InternalServerError
from werkzeug.middleware.proxy_fix import ProxyFix

from mor_plugin.status import NONE

from . import bullets, dbtime, settings, signing
from .cache import DeviceCache, ResponseCache
from .db import Database, utcnow
from .forwarded import SafeForwarded
from .settings import ConfigError
from .timefmt import ago, duration, iso, utc_title

__all__ = ["ConfigError", "create_app"]

log = logging.getLogger(__name__)

#: endpoints anyone may fetch without a signature (no device data in them);
#: /metrics has aggregates only and is limited to MOR_WIDGET_METRICS_ALLOW instead
UNSIGNED_ENDPOINTS = frozenset(
    {"widget.healthz", "widget.embed_js", "static", "widget.metrics_page"}
)
_UNAVAILABLE = "The status database is not answering; the status will be back when it is."


def create_app(config: Optional[Mapping[str, Any]] = None) -> Flask:
    """The widget app; ``config`` overrides the environment (used by tests and the demo).

    Raises ``ConfigError`` (one line saying what to fix) on missing or bad settings.
    """
    app = Flask(__name__)
    app.config.update(settings.load(os.environ, config))
    app.extensions["mor_widget_db"] = Database(
        app.config["MOR_WIDGET_DB_URL"],
        app.config["MOR_WIDGET_DB_CONNECT_TIMEOUT"],
        app.config["MOR_WIDGET_DB_READ_TIMEOUT"],
        app.config["MOR_WIDGET_DB_TIMEOUT"],
    )
    from .views import bp, shown_cost

    if app.config["MOR_WIDGET_CACHE_SECONDS"] > 0:
        max_bytes = int(app.config["MOR_WIDGET_CACHE_MB"] * 1024 * 1024)
        app.extensions["mor_widget_cache"] = ResponseCache(
            app.config["MOR_WIDGET_CACHE_SECONDS"], max_bytes=max_bytes
        )
        app.extensions["mor_widget_devices"] = DeviceCache(
            app.config["MOR_WIDGET_CACHE_SECONDS"],
            shown_cost,
            attrgetter("server_id"),
            max_bytes,
        )
    app.extensions["mor_widget_csp"] = _csp(app.config["MOR_WIDGET_FRAME_ANCESTORS"])
    # only an exact origin of the allow-list may read the API from another site
    app.extensions["mor_widget_cors"] = settings.exact_origins(
        app.config["MOR_WIDGET_FRAME_ANCESTORS"]
    )
    app.add_template_filter(_time_ago, "ago")
    app.add_template_filter(duration, "duration")
    app.json = _DocumentedOrderJSON(app)

    app.register_blueprint(bp)
    app.before_request(_start_database_clock)
    app.teardown_request(_stop_database_clock)
    app.before_request(_check_signature)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(SQLAlchemyError, _database_error)
    app.register_error_handler(Exception, _unexpected_error)
    # MOR's web server proxies us at /mor-status/ and says so in X-Forwarded-Prefix;
    # a prefix, host or scheme that is not a plain value is dropped before ProxyFix reads it
    # (Flask's way to add WSGI middleware, which mypy takes for overwriting a method)
    app.wsgi_app = SafeForwarded(  # type: ignore[method-assign]
        ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1)
    )
    if not app.config["MOR_WIDGET_SECRET"]:
        log.warning("MOR_WIDGET_SECRET is not set: anyone who can reach the widget can read it")
    return app


class _DocumentedOrderJSON(DefaultJSONProvider):
    """Flask's JSON, its fields in the order the documentation lists them."""

    sort_keys = False


def _time_ago(moment: datetime) -> Markup:
    """``3 min ago`` with the exact UTC time in the tooltip."""
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        iso(moment), utc_title(moment), ago(moment, utcnow())
    )


def _start_database_clock() -> None:
    """All the database work of this request shares MOR_WIDGET_DB_TIMEOUT (widget.dbtime)."""
    g.mor_widget_db_clock = dbtime.begin(current_app.config["MOR_WIDGET_DB_TIMEOUT"])


def _stop_database_clock(error: Optional[BaseException]) -> None:
    token = g.pop("mor_widget_db_clock", None)
    if token is not None:
        dbtime.end(token)


def _check_signature() -> None:
    secret = current_app.config["MOR_WIDGET_SECRET"]
    if not secret or request.endpoint is None or request.endpoint in UNSIGNED_ENDPOINTS:
        return
    try:
        # request.path is relative to the app: the proxy's prefix is not part of what is signed
        g.mor_widget_link_expires = signing.verify(
            request.path, request.query_string.decode("latin-1"), secret
        )
    except signing.SignatureError as refused:
        raise (Gone if refused.status == 410 else Forbidden)(refused.reason) from None


def _csp(frame_ancestors: tuple[str, ...]) -> str:
    return (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {' '.join(frame_ancestors)}"
    )


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers["Content-Security-Policy"] = current_app.extensions["mor_widget_csp"]
    headers["X-Content-Type-Options"] = "nosniff"
    # signed links must not leak to other sites through Referer
    headers["Referrer-Policy"] = "no-referrer"
    headers.setdefault("Cache-Control", "no-cache")
    headers.pop("X-Frame-Options", None)  # it would break the embedding; CSP says who may frame
    headers.pop("Set-Cookie", None)
    if request.path.startswith("/api/"):
        # never echo anything but an exact origin of the allow-list ('self', wildcards,
        # hosts without a scheme name no single origin)
        origin = request.headers.get("Origin")
        if origin and origin in current_app.extensions["mor_widget_cors"]:
            headers["Access-Control-Allow-Origin"] = origin
        headers.add("Vary", "Origin")  # with or without one: the answer depends on it
    return response


def _error_response(status: int, title: str, message: str) -> Response:
    if request.path.startswith("/api/"):
        response = jsonify(error=message)
    elif request.path in ("/healthz", "/metrics"):
        response = Response(f"{message}\n", mimetype="text/plain")
    elif request.path.endswith(".svg"):
        # an <img> still shows something, and its tooltip says why
        response = Response(
            str(bullets.svg(NONE, f"{title}: {message}", standalone=True)),
            mimetype="image/svg+xml",
        )
    else:
        response = Response(render_template("error.html", title=title, message=message))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    return _error_response(status, f"{status} {error.name}", error.description or error.name)


def _database_error(error: SQLAlchemyError) -> Response:
    log.warning("database unavailable: %s", str(error).splitlines()[0])
    return _error_response(503, "503 Service Unavailable", _UNAVAILABLE)


def _unexpected_error(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return _http_error(error)
    log.exception("unexpected error on %s", request.path)
    return _error_response(
        500, "500 Internal Server Error", InternalServerError.description or "internal error"
    )
