"""The device page's 24 h strip and latency sparkline, and the history API (real MariaDB)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient
from regstatus_helpers import WIDGET_SECRET as SECRET
from regstatus_helpers import MorDatabase, make_app, signed, text_of

from mor_plugin import schema, store
from widget import charts
from widget.db import History, HistoryEntry, parse_samples

pytestmark = pytest.mark.mariadb

GREEN, YELLOW, RED = "#22a33a", "#f5c400", "#db2317"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def change(
    device_id: int, at: datetime, old: str, new: str, reg: Any = None, ms: Any = None
) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "server_id": 1,
        "at": at,
        "from_status": old,
        "to_status": new,
        "reg_status": reg,
        "latency_ms": ms,
        "source": "event" if ms is None else "poll",
    }


@pytest.fixture
def now() -> datetime:
    return utcnow()


@pytest.fixture
def world(mor_db: MorDatabase, now: datetime) -> MorDatabase:
    """Device 1 went red 6 h ago for an hour, yellow 3 h ago for an hour; device 2 has no
    history; device 3 flaps."""
    store.migrate(mor_db.engine, now)  # the collector's tables, as its first run makes them
    mor_db.add_server(1, hostname="ast-one")
    mor_db.add_device(1, "alice", reg_status="OK (23 ms)")
    mor_db.add_device(2, "bob", reg_status="OK (40 ms)")
    mor_db.add_device(3, "flappy", reg_status="UNREACHABLE")
    hour = now.replace(minute=0, second=0)
    with mor_db.engine.begin() as conn:
        conn.execute(
            schema.server_state.insert().values(
                server_id=1, last_run=now, last_success=now, result="ok"
            )
        )
        conn.execute(
            schema.device_state.insert(),
            [
                *(
                    {
                        "device_id": device_id,
                        "server_id": 1,
                        "status": "ok",
                        "since": now - timedelta(hours=2),
                        "flapping": False,
                        "flapping_since": None,
                    }
                    for device_id in (1, 2)
                ),
                {
                    "device_id": 3,
                    "server_id": 1,
                    "status": "unreachable",
                    "since": now - timedelta(minutes=2),
                    "flapping": True,
                    "flapping_since": now - timedelta(minutes=10),
                },
            ],
        )
        conn.execute(
            schema.history.insert(),
            [
                change(1, now - timedelta(hours=30), "none", "ok", "OK (20 ms)", 20),
                change(1, now - timedelta(hours=6), "ok", "unreachable", "UNREACHABLE"),
                change(1, now - timedelta(hours=5), "unreachable", "ok", "OK (30 ms)", 30),
                change(1, now - timedelta(hours=3), "ok", "lagged", "LAGGED (2100 ms)", 2100),
                change(1, now - timedelta(hours=2), "lagged", "ok", "OK (23 ms)", 23),
                *(
                    change(3, now - timedelta(minutes=m), old, new)
                    for m, old, new in (
                        (9, "ok", "unreachable"),
                        (7, "unreachable", "ok"),
                        (4, "ok", "unreachable"),
                        (2, "unreachable", "ok"),
                    )
                ),
                change(3, now - timedelta(minutes=1), "ok", "unreachable"),
            ],
        )
        conn.execute(
            schema.latency.insert(),
            [
                # a day and more ago: outside the window
                {"device_id": 1, "hour": hour - timedelta(hours=26), "samples": "0:999 60:999"},
                {
                    "device_id": 1,
                    "hour": hour - timedelta(hours=3),
                    "samples": "0:18 600:45 1200:30",
                },
                {"device_id": 1, "hour": hour, "samples": "0:23 x:1 5:"},
            ],
        )
    return mor_db


@pytest.fixture
def client(world: MorDatabase) -> FlaskClient:
    return make_app(world.url).test_client()


def blocks_of(html: str) -> list[tuple[str, float, float, str]]:
    """(kind, x, width, fill) of every block in the strip."""
    found = re.findall(
        r'<rect class="block block-(\w+)" x="([\d.]+)" y="0" width="([\d.]+)" '
        r'height="14" fill="([^"]+)"',
        html,
    )
    return [(kind, float(x), float(w), fill) for kind, x, w, fill in found]


# ---------------------------------------------------------------- the strip


def test_status_page_draws_24h_strip_in_mor_colours(client: FlaskClient) -> None:
    html = client.get("/devices/1/status").get_data(as_text=True)
    assert '<svg class="strip"' in html and 'aria-label="Status over the last 24 h"' in html
    blocks = sorted(blocks_of(html), key=lambda b: b[1])
    assert [(kind, fill) for kind, _, _, fill in blocks] == [
        ("ok", GREEN),  # from 24 h ago: the change 30 h ago made it green
        ("unreachable", RED),
        ("ok", GREEN),
        ("lagged", YELLOW),
        ("ok", GREEN),
    ]
    # 1000 units for 24 h: red from 18 h to 19 h into the window
    _, red_x, red_width, _ = blocks[1]
    assert red_x == pytest.approx(750, abs=2) and red_width == pytest.approx(41.7, abs=1)
    assert re.search(r"<title>UNREACHABLE: [\d -:]+ to [\d -:]+ UTC \(1 h\)</title>", html)
    assert "4 changes" in text_of(html)


def test_strip_of_device_without_history_shows_no_data_until_its_status_began(
    client: FlaskClient,
) -> None:
    blocks = sorted(blocks_of(client.get("/devices/2/status").get_data(True)), key=lambda b: b[1])
    assert [(kind, fill) for kind, _, _, fill in blocks] == [
        ("gap", "url(#nodata)"),
        ("ok", GREEN),
    ]
    assert blocks[1][1] == pytest.approx(1000 * 22 / 24, abs=2)


def test_flapping_device_is_marked_with_since_when(client: FlaskClient) -> None:
    words = text_of(client.get("/devices/3/status").get_data(as_text=True))
    assert "FLAPPING since 10 min ago: 5 changes in 24 h." in words
    assert "FLAPPING" not in text_of(client.get("/devices/1/status").get_data(as_text=True))


def test_short_blips_stay_visible_on_top_of_long_blocks(client: FlaskClient) -> None:
    html = client.get("/devices/3/status").get_data(as_text=True)
    blocks = blocks_of(html)
    assert blocks[0][0] == "ok" and blocks[0][2] > 900  # the long one is drawn first
    reds = [b for b in blocks if b[0] == "unreachable"]
    assert len(reds) == 3 and all(width >= charts.MIN_BLOCK for _, _, width, _ in reds)


# ---------------------------------------------------------------- the sparkline


def test_status_page_draws_latency_sparkline_from_samples_of_the_window(
    client: FlaskClient,
) -> None:
    html = client.get("/devices/1/status").get_data(as_text=True)
    assert '<svg class="sparkline"' in html
    lines = re.findall(r'<polyline points="([^"]+)"', html)
    points = [p for line in lines for p in line.split()]
    # 3 samples three hours ago and 1 this hour (malformed pairs and the old hour left out)
    assert len(lines) == 2 and len(points) == 5  # a lone sample is drawn as a short dash
    assert "18–45 ms" in text_of(html)
    assert "Latency: 18 to 45 ms, last 23 ms" in html
    ys = [float(p.split(",")[1]) for p in points]
    assert min(ys) == pytest.approx(1.0)  # 45 ms, the highest, at the top


def test_no_sparkline_without_samples(client: FlaskClient) -> None:
    html = client.get("/devices/2/status").get_data(as_text=True)
    assert '<svg class="strip"' in html and '<svg class="sparkline"' not in html


def test_charts_pass_the_content_security_policy(client: FlaskClient) -> None:
    response = client.get("/devices/1/status")
    html = response.get_data(as_text=True)
    assert "style=" not in html and "<script>" not in html
    assert "style-src 'self'" in response.headers["Content-Security-Policy"]


def test_runs_break_where_samples_are_missing() -> None:
    t0 = datetime(2026, 1, 1)
    samples = [(t0 + timedelta(minutes=m), 20) for m in (0, 1, 2, 3, 40, 41)]
    assert [len(run) for run in charts.runs(samples)] == [4, 2]


def test_blocks_follow_the_changes_and_clip_to_the_window() -> None:
    t0 = datetime(2026, 1, 1)
    history = History(
        start=t0,
        end=t0 + timedelta(hours=4),
        before=None,
        transitions=[
            HistoryEntry(t0 + timedelta(hours=1), "ok", "unreachable", "UNREACHABLE", None, "poll"),
            HistoryEntry(
                t0 + timedelta(hours=3), "unreachable", "unknown", "UNKNOWN", None, "poll"
            ),
        ],
        latency=[],
        flapping=False,
        flapping_since=None,
    )
    assert [(b.kind, b.end - b.start) for b in charts.blocks(history, "unknown", None)] == [
        ("ok", timedelta(hours=1)),
        ("unreachable", timedelta(hours=2)),
        ("unknown", timedelta(hours=1)),
    ]


def test_strip_ends_with_the_current_colour_when_its_change_was_not_recorded() -> None:
    """Another writer turned the device red without a transition: the strip turns red at
    the device's since, which is also the "since" the page shows."""
    t0 = datetime(2026, 1, 1)
    history = History(
        start=t0,
        end=t0 + timedelta(hours=4),
        before=HistoryEntry(t0 - timedelta(hours=1), "unreachable", "ok", "OK (9 ms)", 9, "poll"),
        transitions=[],
        latency=[],
        flapping=False,
        flapping_since=None,
    )
    red_since = t0 + timedelta(hours=3)
    assert [(b.kind, b.start, b.end) for b in charts.blocks(history, "unreachable", red_since)] == [
        ("ok", t0, red_since),
        ("unreachable", red_since, t0 + timedelta(hours=4)),
    ]
    # the current colour is the one the history ends with: no extra block
    assert [b.kind for b in charts.blocks(history, "ok", red_since)] == ["ok"]


def test_latency_samples_parse_leniently() -> None:
    hour = datetime(2026, 1, 1, 10)
    assert list(parse_samples(hour, "0:23  60:25 bad 7: :3 3599:1")) == [
        (hour, 23),
        (hour + timedelta(seconds=60), 25),
        (hour + timedelta(seconds=3599), 1),
    ]


# ---------------------------------------------------------------- the history API


def test_history_api_lists_changes_and_latency_of_24h(client: FlaskClient, now: datetime) -> None:
    response = client.get("/api/v1/devices/1/history")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["device_id", "from", "to", "transitions", "latency"]
    assert body["device_id"] == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["to"])
    to = datetime.fromisoformat(body["to"][:-1])
    assert datetime.fromisoformat(body["from"][:-1]) == to - timedelta(hours=24)
    transitions = body["transitions"]
    assert [(t["from"], t["to"]) for t in transitions] == [
        ("ok", "unreachable"),
        ("unreachable", "ok"),
        ("ok", "lagged"),
        ("lagged", "ok"),
    ]
    assert transitions[0] == {
        "at": (now - timedelta(hours=6)).isoformat() + "Z",
        "from": "ok",
        "to": "unreachable",
        "reg_status": "UNREACHABLE",
        "latency_ms": None,
        "source": "event",
    }
    assert transitions[2]["reg_status"] == "LAGGED (2100 ms)"
    assert transitions[2]["latency_ms"] == 2100
    assert [point["ms"] for point in body["latency"]] == [18, 45, 30, 23]
    assert all(point["at"].endswith("Z") for point in body["latency"])


def test_history_api_window_follows_hours(client: FlaskClient) -> None:
    body = client.get("/api/v1/devices/1/history?hours=1").get_json()
    assert body["transitions"] == [] and [p["ms"] for p in body["latency"]] == [23]
    week = client.get("/api/v1/devices/1/history?hours=168").get_json()
    assert len(week["transitions"]) == 5


@pytest.mark.parametrize("hours", ["0", "169", "abc", "-1", "1.5", ""])
def test_history_api_refuses_bad_hours(client: FlaskClient, hours: str) -> None:
    response = client.get(f"/api/v1/devices/1/history?hours={hours}")
    assert response.status_code == 400
    assert "hours" in response.get_json()["error"]


def test_history_api_of_unknown_device_is_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/devices/999/history")
    assert response.status_code == 404 and "999" in response.get_json()["error"]


def test_history_api_is_signed_like_the_rest(world: MorDatabase) -> None:
    client = make_app(world.url, MOR_WIDGET_SECRET=SECRET).test_client()
    url = signed("/api/v1/devices/1/history?hours=24")
    assert client.get(url).status_code == 200
    assert client.get("/api/v1/devices/1/history?hours=24").status_code == 403
    assert client.get(url.replace("hours=24", "hours=168")).status_code == 403


def test_pages_work_before_the_history_tables_exist(world: MorDatabase) -> None:
    """A collector not yet upgraded to schema 2: no history tables, no listener columns."""
    world.execute("DELETE FROM mor_regstatus_schema WHERE version > 1")
    for table in ("mor_regstatus_history", "mor_regstatus_latency", "mor_regstatus_contacts"):
        world.execute(f"DROP TABLE {table}")
    for table, columns in (
        ("mor_regstatus_devices", ("flapping", "flapping_since", "observed_at")),
        ("mor_regstatus_servers", ("listener_connected", "listener_seen", "listener_since")),
        ("mor_regstatus_servers", ("observed_at", "listener_wrote_at")),
    ):
        for column in columns:
            world.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS {column}")
    client = make_app(world.url).test_client()
    page = client.get("/devices/1/status")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "OK" in text_of(html) and '<svg class="strip"' not in html
    body = client.get("/api/v1/devices/1/history").get_json()
    assert body["transitions"] == [] and body["latency"] == []
    servers = client.get("/servers")
    assert servers.status_code == 200
    assert "ast-one" in servers.get_data(as_text=True)
    assert client.get("/servers/1/devices?status=flapping").status_code == 200
    assert client.get("/api/v1/servers/1/summary").get_json()["result"] == "ok"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'mor_regstatus_last_run_success{server_id="1"} 1.0' in metrics
    assert "mor_regstatus_flapping_devices{" not in metrics  # unknown, not zero
