"""The widget under abuse and trouble, against a real MariaDB.

- the answer cache: keyed by what the answer depends on (never by ``exp`` or the
  spelling of ``sig``), bounded in bytes and in age, never consulted for a
  request whose signature fails;
- the database time of a request is bounded as a whole: a database behind a
  proxy that trickles bytes or goes silent, or a locked table, answers 503
  within ``MOR_WIDGET_DB_TIMEOUT``;
- ids and numbers are plain ASCII digits, ``X-Forwarded-Prefix`` is a safe
  path or ignored, and only an exactly allowed origin is echoed for CORS.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest
from conftest import MorDatabase, mor_database
from flask import Flask
from flask.testing import FlaskClient
from test_widget import SECRET, fill_world, make_app, signed

pytestmark = pytest.mark.mariadb

MARIADB = ("127.0.0.1", 3306)
#: what the machine may add to a time bound (thread switches, a loaded 2-core box)
SLACK = 0.6
#: the bound the documentation promises for a database that does not answer
DOCUMENTED_DB_TIMEOUT = 3.0
ENV_KEYS = (
    "MOR_WIDGET_DB_URL",
    "MOR_WIDGET_SECRET",
    "MOR_WIDGET_CONFIG",
    "MOR_WIDGET_FRAME_ANCESTORS",
    "MOR_WIDGET_DB_TIMEOUT",
    "MOR_WIDGET_CACHE_SECONDS",
    "MOR_WIDGET_CACHE_MB",
)


@pytest.fixture(autouse=True)
def _no_widget_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def world(mor_db: MorDatabase) -> MorDatabase:
    fill_world(mor_db)
    return mor_db


@pytest.fixture(scope="module")
def shared(mariadb: None) -> Iterator[Callable[..., FlaskClient]]:
    """For tests that only read: one world for the module, one app per set of settings."""
    made: dict[tuple[tuple[str, Any], ...], Flask] = {}
    with mor_database() as db, pytest.MonkeyPatch.context() as env:
        for key in ENV_KEYS:
            env.delenv(key, raising=False)
        fill_world(db)

        def client(**settings: Any) -> FlaskClient:
            key = tuple(sorted(settings.items()))
            if key not in made:
                made[key] = make_app(db.url, **settings)
            return made[key].test_client()

        yield client
        for app in made.values():
            app.extensions["mor_widget_db"].dispose()


@pytest.fixture
def apps() -> Iterator[Callable[..., Flask]]:
    """``make_app`` whose database connections are closed after the test."""
    made: list[Flask] = []

    def make(url: str, **settings: Any) -> Flask:
        app = make_app(url, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["mor_widget_db"].dispose()


# ---------------------------------------------------------------- ids and numbers

NOT_DIGITS = ["1%0A", "1%20", "%201", "+1", "1_0", "%D9%A1", "%EF%BC%91", "1%00", "0x1", "%C2%B2"]
ID_ROUTES = [
    "/devices/{}/status",
    "/devices/{}/bullet.svg",
    "/users/{}/devices/status",
    "/api/v1/servers/{}/summary",
    "/api/v1/devices/{}/history",
    "/servers/{}/devices",
]


@pytest.fixture
def client(shared: Callable[..., FlaskClient]) -> FlaskClient:
    return shared()


@pytest.mark.parametrize("raw", NOT_DIGITS)
def test_ids_in_paths_are_plain_digits_or_400(client: FlaskClient, raw: str) -> None:
    for route in ID_ROUTES:
        response = client.get(route.format(raw))
        assert response.status_code == 400, route.format(raw)
    assert client.get("/devices/1/status").status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        *(f"ids={raw}" for raw in NOT_DIGITS),
        "ids=1,%202",
        "ids=1,,2",
        "ids=1,2,",
        "ids=1&ids=",
    ],
)
def test_ids_in_the_api_are_plain_digits_or_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/v1/devices/status?{query}")
    assert response.status_code == 400
    assert "error" in response.get_json()


@pytest.mark.parametrize(
    "url",
    [
        *(
            f"/api/v1/devices/1/history?hours={raw}"
            for raw in ["24%0A", "%D9%A1", " 24", "2%C2%B2"]
        ),
        *(f"/servers/1/devices?page={raw}" for raw in ["1%0A", "%EF%BC%91", "1 "]),
        *(f"/servers/1/devices?per_page={raw}" for raw in ["10%0A", "+10", "%D9%A1%D9%A0"]),
    ],
)
def test_numbers_in_queries_are_plain_digits_or_400(client: FlaskClient, url: str) -> None:
    assert client.get(url).status_code == 400


# ---------------------------------------------------------------- X-Forwarded-Prefix

BAD_PREFIXES = [
    '"><script>alert(1)</script>',
    "//evil.example",
    "/mor status",
    "javascript:alert(1)",
    "/mor-status/../../x",
    "/a,/b",
    "/%2e%2e",
    "mor-status",
    "/mor-status?x=1",
    "/mor-status\\x",
]


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_an_unsafe_forwarded_prefix_is_ignored(
    shared: Callable[..., FlaskClient], prefix: str
) -> None:
    client = shared(MOR_WIDGET_SECRET=SECRET)
    headers = {"X-Forwarded-Prefix": prefix}
    html = client.get(signed("/devices/1/status"), headers=headers).get_data(as_text=True)
    assert 'href="/static/widget.css"' in html and 'src="/static/refresh.js"' in html
    fleet = client.get(signed("/servers"), headers=headers).get_data(as_text=True)
    assert 'href="/servers/1/devices?' in fleet
    for page in (html, fleet):
        assert "evil" not in page and "script>alert" not in page and "javascript:" not in page


@pytest.mark.parametrize("prefix", ["/mor-status", "/mor-status/", "/a/b.c~d_e-f", ""])
def test_a_safe_forwarded_prefix_is_used(shared: Callable[..., FlaskClient], prefix: str) -> None:
    client = shared()
    html = client.get("/devices/1/status", headers={"X-Forwarded-Prefix": prefix}).get_data(
        as_text=True
    )
    assert f'href="{prefix.rstrip("/")}/static/widget.css"' in html


# ---------------------------------------------------------------- CORS

ANCESTORS = (
    "'self' https://mor.example.com https://*.example.org mor.example.net http://10.0.0.5:8080"
)


@pytest.mark.parametrize(
    "origin",
    [
        "'self'",
        "'none'",
        "null",
        "*",
        "https://*.example.org",
        "https://a.example.org",
        "mor.example.net",
        "https://mor.example.net",
        "https://mor.example.com/",
        "https://mor.example.com:443",
        "https://MOR.example.com",
        "http://mor.example.com",
        "https://mor.example.com.evil.test",
        "https://mor.example.com https://evil.test",
        "http://10.0.0.5",
        "http://10.0.0.5:8080/x",
    ],
)
def test_only_an_exactly_allowed_origin_is_echoed(
    shared: Callable[..., FlaskClient], origin: str
) -> None:
    client = shared(MOR_WIDGET_FRAME_ANCESTORS=ANCESTORS)
    response = client.get("/api/v1/devices/status?ids=1", headers={"Origin": origin})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers.get("Vary", "")


@pytest.mark.parametrize("origin", ["https://mor.example.com", "http://10.0.0.5:8080"])
def test_an_allowed_origin_is_echoed(shared: Callable[..., FlaskClient], origin: str) -> None:
    client = shared(MOR_WIDGET_FRAME_ANCESTORS=ANCESTORS)
    for url in ("/api/v1/devices/status?ids=1", "/api/v1/devices/status?ids=x"):
        response = client.get(url, headers={"Origin": origin})
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in response.headers["Vary"]


def test_an_allowed_origin_written_with_its_default_port_or_in_capitals_is_the_same(
    shared: Callable[..., FlaskClient],
) -> None:
    client = shared(MOR_WIDGET_FRAME_ANCESTORS="https://MOR.Example.com:443")
    response = client.get(
        "/api/v1/devices/status?ids=1", headers={"Origin": "https://mor.example.com"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "https://mor.example.com"


def test_the_api_says_it_varies_by_origin_even_without_one(client: FlaskClient) -> None:
    assert "Origin" in client.get("/api/v1/devices/status?ids=1").headers["Vary"]
