"""The widget through Flask's test client, against a real MariaDB with MOR's tables."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from regstatus_helpers import (
    KIND_OF_ID,
    MOR_ORIGIN,
    MorDatabase,
    fill_world,
    make_app,
    signed,
    text_of,
)
from regstatus_helpers import WIDGET_SECRET as SECRET

from testbed.asterisk import free_port as closed_port
from widget import ConfigError, create_app
from widget.signing import sign_url

pytestmark = pytest.mark.mariadb

NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)

FILL = {
    "ok": "#22a33a",
    "lagged": "#f5c400",
    "unreachable": "#db2317",
    "unknown": "#000000",
    "unmonitored": "#ffffff",
    "none": "none",
}


@pytest.fixture(autouse=True)
def fresh_now() -> None:
    """NOW is this test's start: "just now" and "2 h ago" must not drift with the suite's age."""
    global NOW
    NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


@pytest.fixture
def world(mor_db: MorDatabase) -> MorDatabase:
    fill_world(mor_db, NOW)
    return mor_db


@pytest.fixture
def client(world: MorDatabase) -> FlaskClient:
    """An open widget (no secret): the route tests read it directly."""
    return make_app(world.url).test_client()


@pytest.fixture
def signed_client(world: MorDatabase) -> FlaskClient:
    return make_app(world.url, MOR_WIDGET_SECRET=SECRET).test_client()


# ---------------------------------------------------------------- device edit page iframe


def test_status_page_shows_bullet_word_latency_since_last_seen_and_address(
    client: FlaskClient,
) -> None:
    response = client.get("/devices/1/status")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    words = text_of(html)
    assert 'class="bullet bullet-ok"' in html and 'fill="#22a33a"' in html
    assert "OK 23 ms" in words
    assert "since 2 h ago" in words
    assert "last seen just now" in words  # the server's run a moment ago saw it
    assert "at 192.0.2.10:5062" in words
    assert "peer alice" in words
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" title="[^"]+ UTC">', html)
    assert "Data is" not in words


def test_status_page_of_unreachable_device_says_since_when(client: FlaskClient) -> None:
    words = text_of(client.get("/devices/3/status").get_data(as_text=True))
    assert "UNREACHABLE" in words
    assert "unreachable since 7 min ago" in words
    assert "last seen 8 min ago" in words


def test_status_page_reports_wrong_server_registration(client: FlaskClient) -> None:
    words = text_of(client.get("/devices/9/status").get_data(as_text=True))
    assert "NO STATUS" in words
    assert (
        "Registered on server 1 (ast-one) although assigned to server 2 (ast-two): "
        "OK (40 ms) from 198.51.100.7:5060, last seen 1 min ago." in words
    )


def test_status_page_says_when_data_is_stale(mor_db: MorDatabase) -> None:
    fill_world(mor_db, last_success=NOW - timedelta(minutes=10))
    words = text_of(make_app(mor_db.url).test_client().get("/devices/1/status").get_data(True))
    assert "Data is 10 min old: the collector on server 1 last succeeded 10 min ago." in words


def test_status_page_reports_the_failed_last_run(mor_db: MorDatabase) -> None:
    fill_world(mor_db, last_success=NOW - timedelta(minutes=30))
    mor_db.execute(
        "UPDATE mor_regstatus_servers SET last_run = :now, result = :err",
        now=NOW,
        err="AMI login failed: Authentication failed",
    )
    words = text_of(make_app(mor_db.url).test_client().get("/devices/2/status").get_data(True))
    assert "Data is 30 min old" in words
    assert "Last run: AMI login failed: Authentication failed (just now)." in words


def test_stale_threshold_comes_from_settings(mor_db: MorDatabase) -> None:
    fill_world(mor_db, last_success=NOW - timedelta(minutes=2))
    fresh = make_app(mor_db.url).test_client().get("/devices/1/status").get_data(True)
    strict = make_app(mor_db.url, MOR_WIDGET_STALE_AFTER=60).test_client()
    assert "Data is" not in text_of(fresh)
    assert "Data is 2 min old" in text_of(strict.get("/devices/1/status").get_data(True))


def test_status_page_explains_never_collected_server(client: FlaskClient) -> None:
    words = text_of(client.get("/devices/9/status").get_data(as_text=True))
    assert "No status has been collected yet on server 2" in words


def test_status_page_refreshes_itself_with_a_static_script(world: MorDatabase) -> None:
    default = make_app(world.url).test_client().get("/devices/1/status").get_data(True)
    assert 'data-refresh="30"' in default
    assert '<script src="/static/refresh.js" defer></script>' in default
    assert "<script>" not in default  # CSP allows no inline code
    quick = make_app(world.url, MOR_WIDGET_REFRESH=5).test_client()
    assert 'data-refresh="5"' in quick.get("/devices/1/status").get_data(True)


def test_status_page_notes_non_sip_and_qualify_off(client: FlaskClient, world: MorDatabase) -> None:
    assert "SIP devices only" in text_of(client.get("/devices/8/status").get_data(True))
    world.execute("UPDATE devices SET reg_status = NULL WHERE id = 5")
    assert "Qualify is off" in text_of(client.get("/devices/5/status").get_data(True))


def test_names_and_descriptions_are_escaped(world: MorDatabase, client: FlaskClient) -> None:
    world.execute(
        "UPDATE devices SET name = :n, description = :d WHERE id = 1",
        n="<script>alert(1)</script>",
        d='"><img src=x onerror=alert(2)>',
    )
    html = client.get("/devices/1/status").get_data(as_text=True)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    api = client.get("/api/v1/devices/status?ids=1")
    assert api.mimetype == "application/json"
    assert api.get_json()["devices"][0]["name"] == "<script>alert(1)</script>"


def test_reg_status_text_is_escaped_in_svg(world: MorDatabase, client: FlaskClient) -> None:
    world.execute("UPDATE devices SET reg_status = :s WHERE id = 1", s="OK <x>&")
    body = client.get("/devices/1/bullet.svg").get_data(as_text=True)
    assert "<x>" not in body and "OK &lt;x&gt;&amp;" in body


def test_since_is_hidden_when_devices_disagree_with_the_recorded_colour(
    client: FlaskClient,
) -> None:
    # device 2 is LAGGED in devices but the collector's row says ok: its "since" is not LAGGED's
    device = client.get("/api/v1/devices/status?ids=2").get_json()["devices"][0]
    assert device["status"] == "lagged" and device["since"] is None


# ---------------------------------------------------------------- bullets


@pytest.mark.parametrize("device_id", sorted(KIND_OF_ID))
def test_bullet_has_mor_colour_and_tooltip(client: FlaskClient, device_id: int) -> None:
    kind = KIND_OF_ID[device_id]
    response = client.get(f"/devices/{device_id}/bullet.svg")
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    body = response.get_data(as_text=True)
    assert body.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert f'fill="{FILL[kind]}"' in body
    title = re.search(r"<title>([^<]+)</title>", body)
    assert title and len(title.group(1)) > 20


def test_no_status_bullet_is_a_dashed_ring(client: FlaskClient) -> None:
    body = client.get("/devices/6/bullet.svg").get_data(as_text=True)
    assert 'fill="none"' in body and "stroke-dasharray" in body
    assert 'aria-label="NO STATUS: ' in body


def test_bullet_answers_304_to_its_etag(client: FlaskClient) -> None:
    first = client.get("/devices/1/bullet.svg")
    etag = first.headers["ETag"]
    assert etag
    assert "max-age=" in first.headers["Cache-Control"]
    again = client.get("/devices/1/bullet.svg", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    assert "frame-ancestors" in again.headers["Content-Security-Policy"]


def test_bullet_etag_changes_with_the_status(world: MorDatabase, client: FlaskClient) -> None:
    etag = client.get("/devices/1/bullet.svg").headers["ETag"]
    world.execute("UPDATE devices SET reg_status = 'UNREACHABLE' WHERE id = 1")
    changed = client.get("/devices/1/bullet.svg", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert f'fill="{FILL["unreachable"]}"' in changed.get_data(as_text=True)


# ---------------------------------------------------------------- legend iframe


def test_legend_counts_the_users_sip_devices(client: FlaskClient) -> None:
    response = client.get("/users/2/devices/status")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    counts = dict(re.findall(r'<span class="count" data-kind="(\w+)">(\d+)</span>', html))
    # user 2: one of each on server 1, plus "roamer" (no status) on server 2; the fax is not SIP
    assert counts == {
        "ok": "1",
        "lagged": "1",
        "unreachable": "1",
        "unknown": "1",
        "unmonitored": "1",
        "none": "2",
    }
    words = text_of(html)
    assert "7 SIP devices" in words
    assert "1 on a server where the collector has not run yet" in words
    for label in ("OK", "LAGGED", "UNREACHABLE", "UNKNOWN", "Unmonitored", "NO STATUS"):
        assert re.search(rf'title="{label}: [^"]{{20,}}"', html), label


def test_legend_of_all_devices_counts_every_users_sip_devices(client: FlaskClient) -> None:
    html = client.get("/devices/status").get_data(as_text=True)
    counts = dict(re.findall(r'<span class="count" data-kind="(\w+)">(\d+)</span>', html))
    # user 2's seven and user 3's OK device; the fax is not SIP
    assert counts["ok"] == "2" and counts["none"] == "2"
    assert "8 SIP devices" in text_of(html)


def test_legend_of_user_without_devices_is_all_zero(client: FlaskClient) -> None:
    html = client.get("/users/99/devices/status").get_data(as_text=True)
    assert re.findall(r'data-kind="\w+">(\d+)<', html) == ["0"] * 6


# ---------------------------------------------------------------- JSON API


def test_api_lists_devices_in_request_order_deduplicated(client: FlaskClient) -> None:
    response = client.get("/api/v1/devices/status?ids=3,1,3,404,1,2")
    assert response.status_code == 200
    devices = response.get_json()["devices"]
    assert [d["id"] for d in devices] == [3, 1, 2]  # 404 does not exist: simply absent
    alice = devices[1]
    assert list(alice)[:8] == [
        "id",
        "name",
        "status",
        "reg_status",
        "latency_ms",
        "since",
        "last_seen",
        "server_id",
    ]
    assert alice["name"] == "alice" and alice["status"] == "ok"
    assert alice["reg_status"] == "OK (23 ms)" and alice["latency_ms"] == 23
    assert alice["server_id"] == 1
    assert alice["since"] == (NOW - timedelta(hours=2)).isoformat() + "Z"
    # steady rows are not rewritten: the server's last success is when it was last seen
    assert alice["last_seen"] == NOW.isoformat() + "Z"
    assert devices[0]["latency_ms"] is None and devices[0]["status"] == "unreachable"
    assert devices[0]["last_seen"] == (NOW - timedelta(minutes=8)).isoformat() + "Z"


def test_api_reports_every_status_word(client: FlaskClient) -> None:
    devices = client.get("/api/v1/devices/status?ids=1,2,3,4,5,6").get_json()["devices"]
    assert {d["id"]: d["status"] for d in devices} == KIND_OF_ID


def test_api_accepts_repeated_ids_parameters(client: FlaskClient) -> None:
    devices = client.get("/api/v1/devices/status?ids=1&ids=2").get_json()["devices"]
    assert [d["id"] for d in devices] == [1, 2]


@pytest.mark.parametrize(
    "query", ["ids=1,x", "ids=1.5", "ids=-1", "ids=", "", "ids=1e3", "ids=99999999999"]
)
def test_api_rejects_bad_ids_with_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/v1/devices/status?{query}")
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert "error" in response.get_json()


def test_api_takes_at_most_500_ids(client: FlaskClient) -> None:
    ok = client.get("/api/v1/devices/status?ids=" + ",".join(map(str, range(1, 501))))
    assert ok.status_code == 200 and len(ok.get_json()["devices"]) == 9
    too_many = client.get("/api/v1/devices/status?ids=" + ",".join(map(str, range(1, 502))))
    assert too_many.status_code == 400
    assert "500" in too_many.get_json()["error"]


def test_api_allows_cross_origin_reads_only_from_allowed_origins(client: FlaskClient) -> None:
    allowed = client.get("/api/v1/devices/status?ids=1", headers={"Origin": MOR_ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == MOR_ORIGIN
    other = client.get("/api/v1/devices/status?ids=1", headers={"Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_server_summary_has_counts_and_freshness(client: FlaskClient) -> None:
    response = client.get("/api/v1/servers/1/summary")
    assert response.status_code == 200
    summary = response.get_json()
    assert summary["server_id"] == 1
    assert summary["last_run"] == NOW.isoformat() + "Z"
    assert summary["stale"] is False
    assert summary["counts"] == {
        "ok": 11,
        "lagged": 12,
        "unreachable": 13,
        "unknown": 14,
        "unmonitored": 15,
        "none": 16,
    }
    assert summary["wrong_server"] == 1 and summary["asterisk_version"] == "18.20.0"


def test_server_summary_before_the_first_run_counts_devices(client: FlaskClient) -> None:
    summary = client.get("/api/v1/servers/2/summary").get_json()
    assert summary["last_run"] is None and summary["stale"] is True
    assert summary["counts"]["none"] == 1 and sum(summary["counts"].values()) == 1


def test_server_summary_is_stale_after_stale_after(mor_db: MorDatabase) -> None:
    fill_world(mor_db, last_success=NOW - timedelta(seconds=400))
    summary = make_app(mor_db.url).test_client().get("/api/v1/servers/1/summary").get_json()
    assert summary["stale"] is True


# ---------------------------------------------------------------- 404 / 400 pages


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/devices/999/status", 404),
        ("/devices/999/bullet.svg", 404),
        ("/api/v1/servers/77/summary", 404),
        ("/devices/abc/status", 400),
        ("/devices/1x/bullet.svg", 400),
        ("/users/me/devices/status", 400),
        ("/api/v1/servers/x/summary", 400),
        ("/no/such/page", 404),
    ],
)
def test_bad_urls_get_short_error_pages(client: FlaskClient, url: str, status: int) -> None:
    response = client.get(url)
    assert response.status_code == status
    body = response.get_data(as_text=True)
    assert len(body) < 2000 and "Traceback" not in body


def test_only_get_is_allowed(client: FlaskClient) -> None:
    assert client.post("/devices/1/status").status_code == 405


# ---------------------------------------------------------------- database trouble


@pytest.fixture
def down_client() -> FlaskClient:
    url = f"mysql+pymysql://mor:mor@127.0.0.1:{closed_port()}/mor"
    return make_app(url).test_client()


@pytest.mark.parametrize(
    "url",
    [
        "/healthz",
        "/devices/1/status",
        "/devices/1/bullet.svg",
        "/users/2/devices/status",
        "/api/v1/devices/status?ids=1",
        "/api/v1/servers/1/summary",
    ],
)
def test_database_down_answers_503_quickly(down_client: FlaskClient, url: str) -> None:
    started = time.monotonic()
    response = down_client.get(url)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "pymysql" not in body.lower()
    assert "not answering" in body
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]


def test_healthz_answers_200_when_the_database_does(world: MorDatabase) -> None:
    response = make_app(world.url, MOR_WIDGET_SECRET=SECRET).test_client().get("/healthz")
    assert response.status_code == 200 and response.get_data() == b"ok\n"


def test_works_before_the_collector_created_its_tables(mor_db: MorDatabase) -> None:
    mor_db.add_server(1)
    mor_db.add_device(1, "alice", reg_status="OK (9 ms)")
    client = make_app(mor_db.url).test_client()
    assert client.get("/devices/1/status").status_code == 200
    assert client.get("/devices/1/bullet.svg").status_code == 200
    assert client.get("/users/2/devices/status").status_code == 200
    assert "1 SIP device" in text_of(client.get("/devices/status").get_data(as_text=True))
    device = client.get("/api/v1/devices/status?ids=1").get_json()["devices"][0]
    assert device["status"] == "ok" and device["stale"] is True and device["since"] is None
    summary = client.get("/api/v1/servers/1/summary").get_json()
    assert summary["counts"]["ok"] == 1 and summary["last_run"] is None


# ---------------------------------------------------------------- signed URLs


SIGNED_ROUTES = [
    "/devices/1/status",
    "/devices/1/bullet.svg",
    "/users/2/devices/status",
    "/devices/status",
    "/api/v1/devices/status?ids=1,2",
    "/api/v1/servers/1/summary",
]


@pytest.mark.parametrize("path", SIGNED_ROUTES)
def test_signed_url_is_accepted(signed_client: FlaskClient, path: str) -> None:
    assert signed_client.get(signed(path)).status_code == 200


@pytest.mark.parametrize("path", SIGNED_ROUTES)
def test_missing_signature_is_403(signed_client: FlaskClient, path: str) -> None:
    assert signed_client.get(path).status_code == 403
    separator = "&" if "?" in path else "?"
    with_exp = f"{path}{separator}exp={int(time.time()) + 300}"
    assert signed_client.get(with_exp).status_code == 403


def test_signature_for_another_device_is_403(signed_client: FlaskClient) -> None:
    url = signed("/devices/1/status").replace("/devices/1/", "/devices/2/")
    response = signed_client.get(url)
    assert response.status_code == 403
    assert "does not match" in response.get_data(as_text=True)


def test_tampered_query_is_403(signed_client: FlaskClient) -> None:
    url = signed("/api/v1/devices/status?ids=1")
    assert signed_client.get(url.replace("ids=1", "ids=1,2")).status_code == 403
    exp = re.search(r"exp=(\d+)", url)
    assert exp
    later = url.replace(f"exp={exp.group(1)}", f"exp={int(exp.group(1)) + 3600}")
    assert signed_client.get(later).status_code == 403


def test_parameters_after_sig_are_refused(signed_client: FlaskClient) -> None:
    url = signed("/api/v1/devices/status?ids=1") + "&ids=2"
    assert signed_client.get(url).status_code == 403


def test_flipped_signature_digit_is_403(signed_client: FlaskClient) -> None:
    url = signed("/devices/1/bullet.svg")
    flipped = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert signed_client.get(flipped).status_code == 403


def test_signature_with_another_secret_is_403(signed_client: FlaskClient) -> None:
    assert signed_client.get(signed("/devices/1/status", secret="guess")).status_code == 403


def test_expired_link_is_410(signed_client: FlaskClient) -> None:
    response = signed_client.get(signed("/devices/1/status", expires_in=-5))
    assert response.status_code == 410
    assert "expired" in response.get_data(as_text=True)


def test_signed_link_without_exp_is_403(signed_client: FlaskClient) -> None:
    path = "/devices/1/status?x=1"
    sig = hmac.new(SECRET.encode(), path.encode(), hashlib.sha256).hexdigest()
    assert signed_client.get(f"{path}&sig={sig}").status_code == 403


def test_signature_is_plain_hmac_sha256_of_path_and_query(signed_client: FlaskClient) -> None:
    """What the Ruby one-liner in docs/WIDGET.md computes, without our helper."""
    unsigned = f"/devices/1/status?exp={int(time.time()) + 60}"
    sig = hmac.new(SECRET.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
    assert sign_url("/devices/1/status", SECRET, int(unsigned.rsplit("=", 1)[1])) == (
        f"{unsigned}&sig={sig}"
    )
    assert signed_client.get(f"{unsigned}&sig={sig}").status_code == 200


def test_health_embed_script_and_static_need_no_signature(signed_client: FlaskClient) -> None:
    assert signed_client.get("/healthz").status_code == 200
    with signed_client.get("/embed.js") as embed:
        assert embed.status_code == 200 and embed.mimetype == "text/javascript"
        assert "data-mor-device-id" in embed.get_data(as_text=True)
    with signed_client.get("/static/widget.css") as css:
        assert css.status_code == 200


def test_signature_covers_the_path_without_the_proxy_prefix(signed_client: FlaskClient) -> None:
    url = signed("/devices/1/status")
    response = signed_client.get(url, headers={"X-Forwarded-Prefix": "/mor-status"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'href="/mor-status/static/widget.css"' in html
    assert 'src="/mor-status/static/refresh.js"' in html
    prefixed = sign_url("/mor-status/devices/1/status", SECRET, int(time.time()) + 60)
    assert signed_client.get(prefixed.replace("/mor-status", "", 1)).status_code == 403


# ---------------------------------------------------------------- headers on every answer


EVERY_KIND_OF_ANSWER = [
    "/devices/1/status",
    "/devices/1/bullet.svg",
    "/users/2/devices/status",
    "/api/v1/devices/status?ids=1",
    "/api/v1/servers/1/summary",
    "/healthz",
    "/embed.js",
    "/static/refresh.js",
    "/devices/999/status",  # 404
    "/devices/x/status",  # 400
    "/api/v1/devices/status?ids=x",  # 400 JSON
    "/nothing-here",  # 404 from routing
]


@pytest.mark.parametrize("url", EVERY_KIND_OF_ANSWER)
def test_every_answer_has_csp_nosniff_and_no_cookie(client: FlaskClient, url: str) -> None:
    with client.get(url) as response:
        headers = response.headers
    csp = headers["Content-Security-Policy"]
    assert f"frame-ancestors {MOR_ORIGIN}" in csp
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Frame-Options" not in headers
    assert "Set-Cookie" not in headers


@pytest.mark.parametrize("url", ["/devices/1/status", "/devices/1/status?sig=00"])
def test_refused_answers_carry_the_headers_too(signed_client: FlaskClient, url: str) -> None:
    response = signed_client.get(url)
    assert response.status_code == 403
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]
    assert "Set-Cookie" not in response.headers


def test_frame_ancestors_default_to_same_origin(world: MorDatabase) -> None:
    client = make_app(world.url, MOR_WIDGET_FRAME_ANCESTORS="").test_client()
    csp = client.get("/devices/1/status").headers["Content-Security-Policy"]
    assert csp.endswith("frame-ancestors 'self'")


def test_several_frame_ancestors(world: MorDatabase) -> None:
    client = make_app(
        world.url, MOR_WIDGET_FRAME_ANCESTORS="https://a.example.com http://10.0.0.5:8080"
    ).test_client()
    csp = client.get("/healthz").headers["Content-Security-Policy"]
    assert csp.endswith("frame-ancestors https://a.example.com http://10.0.0.5:8080")


# ---------------------------------------------------------------- settings


def test_missing_database_url_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as raised:
        create_app({})
    message = str(raised.value)
    assert "\n" not in message and "MOR_WIDGET_DB_URL is not set" in message


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"MOR_WIDGET_DB_URL": "not a url"}, "not a SQLAlchemy URL"),
        ({"MOR_WIDGET_DB_URL": "sqlite://", "MOR_WIDGET_STALE_AFTER": "soon"}, "STALE_AFTER"),
        (
            {"MOR_WIDGET_DB_URL": "sqlite://", "MOR_WIDGET_FRAME_ANCESTORS": "x; script-src *"},
            "FRAME_ANCESTORS",
        ),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        create_app(settings)


def test_a_database_url_that_does_not_parse_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        create_app({"MOR_WIDGET_DB_URL": "mysql+pymysql//mor:Db-pa55word@db1/mor"})
    assert "not a SQLAlchemy URL" in str(raised.value)
    assert "pa55word" not in str(raised.value)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOR_WIDGET_DB_URL", "sqlite://")
    monkeypatch.setenv("MOR_WIDGET_SECRET", "abc")
    monkeypatch.setenv("MOR_WIDGET_FRAME_ANCESTORS", "https://x.example")
    monkeypatch.setenv("MOR_WIDGET_STALE_AFTER", "600")
    monkeypatch.setenv("MOR_WIDGET_REFRESH", "15")
    config = create_app().config
    assert config["MOR_WIDGET_SECRET"] == "abc"
    assert config["MOR_WIDGET_FRAME_ANCESTORS"] == ("https://x.example",)
    assert config["MOR_WIDGET_STALE_AFTER"] == 600 and config["MOR_WIDGET_REFRESH"] == 15


def test_settings_file_and_environment_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "widget.conf"
    conf.write_text(
        "# the widget\n"
        "db_url = sqlite://\n"
        "SECRET=from-file\n"
        "; comment\n"
        "MOR_WIDGET_STALE_AFTER = 300\n"
    )
    monkeypatch.setenv("MOR_WIDGET_CONFIG", str(conf))
    monkeypatch.setenv("MOR_WIDGET_STALE_AFTER", "900")
    config = create_app().config
    assert config["MOR_WIDGET_SECRET"] == "from-file"
    assert config["MOR_WIDGET_STALE_AFTER"] == 900  # the environment wins over the file
    assert create_app({"MOR_WIDGET_SECRET": "arg"}).config["MOR_WIDGET_SECRET"] == "arg"


def test_settings_file_with_unknown_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "widget.conf"
    conf.write_text("db_url = sqlite://\nstale_afer = 10\n")
    monkeypatch.setenv("MOR_WIDGET_CONFIG", str(conf))
    with pytest.raises(ConfigError, match=r"widget.conf:2"):
        create_app()


def test_json_is_valid_utf8_for_non_ascii_names(world: MorDatabase, client: FlaskClient) -> None:
    world.execute("UPDATE devices SET name = :n WHERE id = 1", n="tālrunis-Ž")
    raw = client.get("/api/v1/devices/status?ids=1").get_data()
    assert json.loads(raw)["devices"][0]["name"] == "tālrunis-Ž"


def test_bullets_and_json_are_served_from_memory_until_the_servers_mark_moves(
    world: MorDatabase,
) -> None:
    client = make_app(world.url, MOR_WIDGET_CACHE_SECONDS=0.5).test_client()
    before_bullet = client.get("/devices/1/bullet.svg").get_data(as_text=True)
    before_json = client.get("/api/v1/devices/status?ids=1").get_json()["devices"]
    # a write that moves no mark (not the collector's, not the listener's): from memory
    world.execute("UPDATE devices SET reg_status = 'UNREACHABLE' WHERE id = 1")
    time.sleep(0.6)
    assert client.get("/devices/1/bullet.svg").get_data(as_text=True) == before_bullet
    assert client.get("/api/v1/devices/status?ids=1").get_json()["devices"] == before_json
    # the listener's mark moves as it writes: read again within the cache seconds
    world.execute(
        "UPDATE mor_regstatus_servers SET listener_wrote_at = :now WHERE server_id = 1",
        now=datetime.now(timezone.utc).replace(tzinfo=None),
    )
    time.sleep(0.6)
    assert client.get("/api/v1/devices/status?ids=1").get_json()["devices"][0]["status"] == (
        "unreachable"
    )
    assert client.get("/devices/1/bullet.svg").get_data(as_text=True) != before_bullet


def test_a_cached_bullet_still_answers_304_to_its_etag(world: MorDatabase) -> None:
    client = make_app(world.url, MOR_WIDGET_CACHE_SECONDS=30).test_client()
    etag = client.get("/devices/1/bullet.svg").headers["ETag"]
    again = client.get("/devices/1/bullet.svg", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert "Content-Security-Policy" in again.headers


def test_the_cache_does_not_skip_the_signature(world: MorDatabase) -> None:
    client = make_app(
        world.url, MOR_WIDGET_SECRET=SECRET, MOR_WIDGET_CACHE_SECONDS=30
    ).test_client()
    good = signed("/devices/1/bullet.svg")
    assert client.get(good).status_code == 200
    assert client.get(good[:-1] + ("0" if good[-1] != "0" else "1")).status_code == 403
