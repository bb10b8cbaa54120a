"""The widget embedded in mock MOR pages, in Debian's chromium (Playwright).

Three real HTTP servers on loopback: the mock MOR GUI at 127.0.0.1 (allowed to
embed), the widget at 127.0.0.2 (another origin, as when MOR's pages and the
widget are served apart), and the same MOR pages at 127.0.0.3, an origin the
widget's CSP does not allow.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from regstatus_helpers import ROOT, MorDatabase
from werkzeug.serving import BaseWSGIServer, make_server

from mor_plugin import schema, store
from widget import create_app
from widget.demo import create_mor_app

pytestmark = [pytest.mark.browser, pytest.mark.mariadb]

sync_api = pytest.importorskip("playwright.sync_api")

SECRET = "browser-test-secret"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
# id -> (name, reg_status, expected RGB inside the bullet's shape; None: see-through ring)
DEVICES: dict[int, tuple[str, Any, Any]] = {
    1: ("green-phone", "OK (23 ms)", (0x22, 0xA3, 0x3A)),
    2: ("yellow-phone", "LAGGED (2480 ms)", (0xF5, 0xC4, 0x00)),
    3: ("red-phone", "UNREACHABLE", (0xDB, 0x23, 0x17)),
    4: ("black-phone", "UNKNOWN", (0x00, 0x00, 0x00)),
    5: ("white-phone", "Unmonitored", (0xFF, 0xFF, 0xFF)),
    6: ("never-seen", None, None),
}
#: what each bullet's tooltip and accessible name start with
HEADS = {1: "OK (23 ms)", 2: "LAGGED (2480 ms)", 3: "UNREACHABLE", 4: "UNKNOWN"}
HEADS |= {5: "Unmonitored", 6: "NO STATUS"}
#: a device of server 2, whose collector never ran, registered on server 1 instead
ROAMER = 7
#: MOR's device edit page gives the status box this height; embed.js fits it to its content
PLAIN_FRAME_HEIGHT = 150


def chromium_path() -> str:
    return shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Sites:
    mor: str
    widget: str
    foreign: str
    db: MorDatabase


def png_pixels(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """Decode chromium's screenshots (8-bit RGB/RGBA, not interlaced): width, height, rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6) and body[12] == 0
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride, rows, previous = zlib.decompress(idat), width * channels, [], bytearray()
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + pred) & 0xFF
        rows.append([tuple(line[x * channels : x * channels + 3]) for x in range(width)])
        previous = line
    return width, height, rows  # type: ignore[return-value]


def close_to(colour: tuple[int, int, int], expected: tuple[int, int, int], slack: int = 40) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(colour, expected))


class LateApp:
    """A WSGI app chosen after the server is bound (each side needs the other's origin)."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@contextmanager
def serving(host: str) -> Iterator[tuple[str, LateApp]]:
    """A real threaded HTTP server on ``host``; yields its origin and the app slot."""
    slot = LateApp()
    server: BaseWSGIServer = make_server(host, 0, slot, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{host}", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}", slot
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(autouse=True)
def fresh_now() -> None:
    """NOW is this test's start, not the suite's: the data must not look stale."""
    global NOW
    NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def fill(db: MorDatabase) -> None:
    store.migrate(db.engine, NOW)  # the collector's tables, as its first run makes them
    db.add_server(1, hostname="ast-one")
    db.add_server(2, hostname="ast-two")
    db.add_server(3, hostname="ast-three")
    db.add_user(2)
    db.add_user(3)
    for device_id, (name, reg_status, _) in DEVICES.items():
        db.add_device(
            device_id,
            name,
            reg_status=reg_status,
            description=f"Desk of {name}",
            qualify="no" if reg_status == "Unmonitored" else "yes",
        )
    db.add_device(ROAMER, "roaming-phone", server_id=2, user_id=3, description="Travels")
    for seen_on, minutes in ((1, 0), (3, 12)):
        db.add_sighting(
            ROAMER,
            "roaming-phone",
            seen_on=seen_on,
            assigned=2,
            reg_status="OK (41 ms)",
            first_seen=NOW - timedelta(minutes=30),
            last_seen=NOW - timedelta(minutes=minutes),
            ip="203.0.113.50",
            port=5062,
        )
    with db.engine.begin() as conn:
        conn.execute(
            schema.device_state.insert().values(
                device_id=1,
                server_id=1,
                status="ok",
                # the colour began with the last change in the history
                since=NOW - timedelta(hours=6),
                last_seen=NOW,
                ip="192.0.2.10",
                port=5060,
            )
        )
        conn.execute(
            schema.history.insert(),
            [
                {
                    "device_id": 1,
                    "server_id": 1,
                    "at": NOW - timedelta(hours=hours),
                    "from_status": old,
                    "to_status": new,
                    "reg_status": reg,
                    "latency_ms": ms,
                    "source": "poll",
                }
                for hours, old, new, reg, ms in (
                    (8, "ok", "unreachable", "UNREACHABLE", None),
                    (6, "unreachable", "ok", "OK (30 ms)", 30),
                )
            ],
        )
        hour = NOW.replace(minute=0, second=0)
        conn.execute(
            schema.latency.insert(),
            [
                {
                    "device_id": 1,
                    "hour": hour - timedelta(hours=h),
                    "samples": " ".join(
                        f"{s}:{20 + (s // 300 + h) % 9}" for s in range(0, 3600, 300)
                    ),
                }
                for h in range(0, 24)
                if h not in (6, 7)
            ],
        )
        conn.execute(
            schema.server_state.insert().values(
                server_id=1,
                last_run=NOW,
                last_success=NOW,
                result="ok",
                asterisk_version="18.20.0",
            )
        )


@pytest.fixture
def sites(mor_db: MorDatabase) -> Iterator[Sites]:
    fill(mor_db)
    with (
        serving("127.0.0.1") as (mor, mor_slot),
        serving("127.0.0.2") as (
            widget,
            widget_slot,
        ),
        serving("127.0.0.3") as (foreign, foreign_slot),
    ):
        widget_slot.app = create_app(
            {
                "MOR_WIDGET_DB_URL": mor_db.url,
                "MOR_WIDGET_SECRET": SECRET,
                "MOR_WIDGET_FRAME_ANCESTORS": mor,
                "MOR_WIDGET_REFRESH": 1,
            }
        )
        mor_slot.app = create_mor_app(mor_db.url, widget, SECRET)
        foreign_slot.app = create_mor_app(mor_db.url, widget, SECRET)
        yield Sites(mor=mor, widget=widget, foreign=foreign, db=mor_db)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if not Path(executable).exists():
        pytest.fail(
            f"chromium is not installed at {executable}: run make test as root to install it"
        )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 520})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def save(shot: bytes, artifacts_dir: Path, name: str, docs: bool = False) -> None:
    (artifacts_dir / name).write_bytes(shot)
    # the README's screenshots are refreshed on request only, so test runs leave git clean
    if docs and os.environ.get("MOR_UPDATE_DOC_IMAGES") == "1":
        target = ROOT / "docs" / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shot)


def wait_for_images(page: Any) -> None:
    page.wait_for_function(
        "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    )


def shape_of(pixels: list[list[tuple[int, int, int]]]) -> set[tuple[int, int]]:
    """The pixels a bullet paints: those that differ from the corner's background."""
    background = pixels[0][0]
    return {
        (x, y)
        for y, row in enumerate(pixels)
        for x, colour in enumerate(row)
        if max(abs(a - b) for a, b in zip(colour, background)) > 48
    }


def inside_colour(kind_pixels: list[list[tuple[int, int, int]]], device_id: int) -> Any:
    """The colour inside the shape (above the Unmonitored bar, which crosses the centre)."""
    return kind_pixels[5][8] if device_id == 5 else kind_pixels[8][8]


def bullet_pixels(page: Any, selector: str) -> dict[int, list[list[tuple[int, int, int]]]]:
    shots = {}
    for device_id in DEVICES:
        box = page.locator(selector.format(id=device_id)).bounding_box()
        assert (box["width"], box["height"]) == (16, 16)
        # the 16 x 16 pixels the bullet is painted on (a table may place it at x.5)
        clip = {"x": round(box["x"]), "y": round(box["y"]), "width": 16, "height": 16}
        shots[device_id] = png_pixels(page.screenshot(clip=clip))[2]
    return shots


def test_device_list_bullets_say_their_status_and_differ_in_shape(
    sites: Sites, page: Any, artifacts_dir: Path
) -> None:
    page.goto(f"{sites.mor}/billing/devices/show_devices/2")
    wait_for_images(page)
    legend = page.frame_locator("iframe.legend")
    assert legend.locator('.count[data-kind="ok"]').inner_text() == "1"
    assert legend.locator('.count[data-kind="none"]').inner_text() == "1"
    assert "6 SIP devices" in legend.locator(".legend").inner_text()
    for device_id, head in HEADS.items():
        image = page.locator(f'img[data-device-id="{device_id}"]')
        assert image.get_attribute("src").startswith(f"{sites.widget}/devices/{device_id}/")
        # a screen reader reads the status; hovering shows it with what it means
        assert page.get_by_role("img", name=head, exact=True).get_attribute(
            "data-device-id"
        ) == str(device_id)
        assert image.get_attribute("title").startswith(f"{head}: ")
    shots = bullet_pixels(page, 'img[data-device-id="{id}"]')
    for device_id, (_, _, colour) in DEVICES.items():
        if colour is None:  # NO STATUS: a ring around the row's own background
            assert min(shots[device_id][8][8]) > 200, shots[device_id][8][8]
        else:
            assert close_to(inside_colour(shots[device_id], device_id), colour), device_id
    # every status is told apart by its shape alone, whatever the colours look like
    shapes = {device_id: shape_of(pixels) for device_id, pixels in shots.items()}
    for a in DEVICES:
        for b in DEVICES:
            if a < b:
                assert len(shapes[a] ^ shapes[b]) >= 12, (a, b, len(shapes[a] ^ shapes[b]))
    save(page.screenshot(full_page=True), artifacts_dir, "device_list.png", docs=True)
    save(legend.locator(".legend").screenshot(), artifacts_dir, "legend.png", docs=True)


def test_embed_js_draws_the_same_bullets_from_one_request(
    sites: Sites, page: Any, artifacts_dir: Path
) -> None:
    page.goto(f"{sites.mor}/billing/devices/show_devices/2")
    wait_for_images(page)
    by_image = {
        i: shape_of(p) for i, p in bullet_pixels(page, 'img[data-device-id="{id}"]').items()
    }
    api_requests: list[str] = []
    page.on("request", lambda r: api_requests.append(r.url) if "/api/" in r.url else None)
    page.goto(f"{sites.mor}/billing/devices/show_devices/2?bullets=script")
    page.locator("[data-mor-device-id] svg").nth(len(DEVICES) - 1).wait_for()
    assert page.locator("img[data-device-id]").count() == 0
    assert len(api_requests) == 1, api_requests
    by_script = bullet_pixels(page, '[data-mor-device-id="{id}"] svg')
    for device_id, head in HEADS.items():
        drawn = page.locator(f'[data-mor-device-id="{device_id}"] svg')
        assert drawn.get_attribute("aria-label").startswith(f"{head}: ")
        assert page.get_by_role("img", name=drawn.get_attribute("aria-label")).count() == 1
        assert (
            page.locator(f'[data-mor-device-id="{device_id}"]')
            .get_attribute("title")
            .startswith(f"{head}: ")
        )
        # the script draws what the widget's own images draw
        assert len(shape_of(by_script[device_id]) ^ by_image[device_id]) <= 4, device_id
        colour = DEVICES[device_id][2]
        if colour is not None:
            assert close_to(inside_colour(by_script[device_id], device_id), colour), device_id
    save(page.screenshot(full_page=True), artifacts_dir, "device_list_embed_js.png")


def test_all_devices_list_has_the_legend(sites: Sites, page: Any) -> None:
    page.goto(f"{sites.mor}/billing/devices/devices_all")
    wait_for_images(page)
    legend = page.frame_locator("iframe.legend")
    assert "7 SIP devices" in legend.locator(".legend").inner_text()
    assert legend.locator('.count[data-kind="none"]').inner_text() == "2"
    assert (
        "1 on a server where the collector has not run yet"
        in legend.locator(".legend").inner_text()
    )
    assert_frame_fits(page, "iframe.legend")


def frame_fits(page: Any, selector: str) -> bool:
    """The frame is as tall as its document: no scrolling inside it, no empty space."""
    frame = page.locator(selector).element_handle().content_frame()
    return bool(
        frame.evaluate(
            "() => { const e = document.documentElement;"
            " const content = Math.ceil(document.body.getBoundingClientRect().height);"
            " return e.scrollHeight <= e.clientHeight && e.scrollWidth <= e.clientWidth"
            " && Math.abs(e.clientHeight - content) <= 1; }"
        )
    )


def assert_frame_fits(page: Any, selector: str) -> None:
    deadline = time.monotonic() + 5
    while not frame_fits(page, selector) and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert frame_fits(page, selector), f"{selector} scrolls"


def assert_inside(page: Any, frame_selector: str, element: Any) -> None:
    """``element`` (in the frame) is drawn wholly within the frame's box on the page."""
    outer, inner = page.locator(frame_selector).bounding_box(), element.bounding_box()
    assert inner["y"] >= outer["y"] and inner["x"] >= outer["x"], (inner, outer)
    assert inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5, (inner, outer)
    assert inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5, (inner, outer)


def test_status_box_fits_every_warning_without_scrolling(
    sites: Sites, page: Any, artifacts_dir: Path
) -> None:
    page.goto(f"{sites.mor}/billing/devices/device_edit/{ROAMER}")
    frame = page.frame_locator("iframe.mor-regstatus")
    stale, warns = frame.locator(".stale"), frame.locator(".warn")
    assert "No status has been collected yet on server 2" in stale.inner_text()
    assert warns.count() == 2
    for text in warns.all_inner_texts():
        assert text.endswith("Its status is not shown until it registers to its own server.")
    assert_frame_fits(page, "iframe.mor-regstatus")
    assert page.locator("iframe.mor-regstatus").bounding_box()["height"] > PLAIN_FRAME_HEIGHT
    for element in (frame.locator(".headline"), stale, warns.first, warns.last):
        assert_inside(page, "iframe.mor-regstatus", element)
    # where MOR frames the box without embed.js, its default height shows the status, the
    # stale data and the first warning whole, before the charts
    boxes = frame.locator(".headline, .stale, .warn, .history").evaluate_all(
        "nodes => nodes.map(n => [n.className, n.getBoundingClientRect().bottom])"
    )
    assert [name for name, _ in boxes] == ["headline", "stale", "warn", "warn", "history"]
    assert all(bottom <= PLAIN_FRAME_HEIGHT for _, bottom in boxes[:3]), boxes
    save(page.screenshot(full_page=True), artifacts_dir, "device_edit_warnings.png", docs=True)


def test_status_box_grows_when_a_refresh_adds_a_warning(sites: Sites, page: Any) -> None:
    page.goto(f"{sites.mor}/billing/devices/device_edit/1")
    frame = page.frame_locator("iframe.mor-regstatus")
    assert frame.locator(".word").inner_text() == "OK"
    assert_frame_fits(page, "iframe.mor-regstatus")
    before = page.locator("iframe.mor-regstatus").bounding_box()["height"]
    sites.db.add_sighting(
        1,
        "green-phone",
        seen_on=2,
        assigned=1,
        reg_status="OK (12 ms)",
        first_seen=NOW,
        last_seen=NOW,
    )
    frame.locator(".warn").wait_for(timeout=8_000)
    assert_frame_fits(page, "iframe.mor-regstatus")
    assert page.locator("iframe.mor-regstatus").bounding_box()["height"] > before
    assert_inside(page, "iframe.mor-regstatus", frame.locator(".warn"))


def test_device_edit_page_shows_the_status_iframe(
    sites: Sites, page: Any, artifacts_dir: Path
) -> None:
    page.goto(f"{sites.mor}/billing/devices/device_edit/1")
    frame = page.frame_locator("iframe.mor-regstatus")
    assert frame.locator(".word").inner_text() == "OK"
    text = frame.locator(".status").inner_text()
    assert "23 ms" in text and "192.0.2.10:5060" in text
    # "since" is when the strip turns green: the last change, 6 hours ago
    assert frame.locator(".since").inner_text() == "since 6 h ago"
    assert frame.locator(".status").is_visible()
    assert frame.get_by_role("img", name=f"{HEADS[1]}: ", exact=False).count() == 1
    _, _, pixels = png_pixels(frame.locator("svg.bullet").screenshot())
    assert close_to(pixels[9][9], DEVICES[1][2])
    # the 24 h strip: green now and since 6 hours ago, red from 8 to 6 hours ago
    width, _, strip = png_pixels(frame.locator("svg.strip").screenshot())
    assert close_to(strip[7][width - 4], DEVICES[1][2])
    assert close_to(strip[7][int(width * 18.2 / 24)], DEVICES[1][2])
    assert close_to(strip[7][int(width * 17 / 24)], DEVICES[3][2])
    assert frame.locator("svg.sparkline polyline").count() == 2
    assert_frame_fits(page, "iframe.mor-regstatus")
    save(page.screenshot(full_page=True), artifacts_dir, "device_edit.png", docs=True)


def test_a_device_never_seen_says_so(sites: Sites, page: Any) -> None:
    page.goto(f"{sites.mor}/billing/devices/device_edit/6")
    frame = page.frame_locator("iframe.mor-regstatus")
    assert frame.locator(".word").inner_text() == "NO STATUS"
    assert frame.locator(".since").inner_text() == "never seen on server 1"
    assert "since" not in frame.locator(".facts").inner_text().replace("never seen", "")


def test_status_iframe_refreshes_without_reloading_the_page(sites: Sites, page: Any) -> None:
    page.goto(f"{sites.mor}/billing/devices/device_edit/1")
    frame = page.frame_locator("iframe.mor-regstatus")
    assert frame.locator(".word").inner_text() == "OK"
    page.evaluate("window.notReloaded = true")
    sites.db.execute("UPDATE devices SET reg_status = 'UNREACHABLE' WHERE id = 1")
    frame.locator(".word", has_text="UNREACHABLE").wait_for(timeout=8_000)
    assert page.evaluate("window.notReloaded") is True


def test_servers_page_sits_in_mors_page_and_fits_it(
    sites: Sites, page: Any, artifacts_dir: Path
) -> None:
    page.goto(f"{sites.mor}/billing/devices/devices_all")
    page.get_by_role("link", name="Servers", exact=True).click()
    frame = page.frame_locator("iframe.mor-regstatus")
    assert frame.locator('tr[data-server-id="2"]').inner_text().count("stale") == 1
    assert_frame_fits(page, "iframe.mor-regstatus")
    save(page.screenshot(full_page=True), artifacts_dir, "servers.png", docs=True)
    # a server's devices open inside the frame; MOR's top bar and the way back stay
    frame.locator('tr[data-server-id="1"] td[data-kind="ok"] a').click()
    frame.locator("#devices").wait_for()
    assert frame.locator('tr[data-device-id="1"]').count() == 1
    assert page.locator(".topbar").is_visible()
    assert_frame_fits(page, "iframe.mor-regstatus")
    frame.get_by_role("link", name="Servers").click()
    frame.locator("#servers").wait_for()
    page.locator(".topbar").get_by_role("link", name="All devices").click()
    page.locator("#devices").wait_for()


def test_page_from_another_origin_may_not_frame_the_widget(
    sites: Sites, page: Any, artifacts_dir: Path
) -> None:
    refusals: list[str] = []
    page.on("console", lambda message: refusals.append(message.text))
    page.goto(f"{sites.foreign}/billing/devices/device_edit/1")
    page.wait_for_load_state("load")
    deadline = time.monotonic() + 5
    while not any("frame-ancestors" in text for text in refusals) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert any("frame-ancestors" in text for text in refusals), refusals
    frame = next(f for f in page.frames if f is not page.main_frame)
    assert "status-ok" not in frame.content()
    save(page.screenshot(full_page=True), artifacts_dir, "foreign_origin_refused.png")
